"""The agent's structured logs (structlog): JSON lines under journald, readable on a terminal.

systemd sets ``JOURNAL_STREAM`` for a service whose output goes to the journal; then each line
is one JSON object (``journalctl -u quayd -o cat | jq``). On a terminal the same events are
printed as ``12:00:01 info  started  unit=web pid=4242``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure(level: str = "info", *, json_output: bool | None = None) -> None:
    if json_output is None:
        json_output = "JOURNAL_STREAM" in os.environ or not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False, pad_event=28)
    )
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


def logger(name: str = "quayd") -> Any:
    return structlog.get_logger(name)
