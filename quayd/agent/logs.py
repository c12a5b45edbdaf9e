"""The agent's structured logs (structlog): JSON lines under journald, readable on a terminal.

systemd sets ``JOURNAL_STREAM`` for a service whose output goes to the journal; then each line
is one JSON object (``journalctl -u quayd -o cat | jq``). On a terminal the same events are
printed as ``12:00:01 [info     ] started                      pid=4242 unit=web`` (by
:func:`_console`: structlog's ConsoleRenderer prints the same, but its arguments change between
structlog versions, ``pad_event`` being deprecated in 25).

structlog imports ``rich`` whenever it is installed (4.4 MiB of RSS): ``quayd.cli.quayd_main``
keeps it out of the agent's process before anything imports structlog.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVEL_WIDTH = 9  # as structlog's ConsoleRenderer: the longest level name, "exception"
_EVENT_WIDTH = 28
_QUOTED = frozenset(" \t=\r\n\"'")  # a text value with one of these is printed as repr()


def configure(level: str = "info", *, json_output: bool | None = None) -> None:
    if json_output is None:
        json_output = "JOURNAL_STREAM" in os.environ or not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer(sort_keys=False) if json_output else _console
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso" if json_output else "%H:%M:%S", utc=False),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _console(logger: Any, method: str, event: dict[str, Any]) -> str:
    """One event on a terminal: time, level, event, the other keys sorted, then a traceback."""
    del logger, method
    stamp = event.pop("timestamp", None)
    level = event.pop("level", "")
    text = str(event.pop("event", ""))
    trace = event.pop("exception", None)
    pairs = " ".join(f"{key}={_console_value(value)}" for key, value in sorted(event.items()))
    head = "" if stamp is None else f"{stamp} "
    line = f"{head}[{level:<{_LEVEL_WIDTH}}] {text:<{_EVENT_WIDTH}} {pairs}".rstrip()
    return line if trace is None else f"{line}\n{trace}"


def _console_value(value: Any) -> str:
    if isinstance(value, str) and not _QUOTED.intersection(value):
        return value
    return repr(value)


def logger(name: str = "quayd") -> Any:
    return structlog.get_logger(name)
