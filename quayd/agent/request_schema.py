"""What each API handler takes: its parameters' names and kinds, checked before it runs (pure).

A request's parameters (path, query and body members, :func:`quayd.agent.api`'s ``_params``) are
checked against :data:`PARAMS` before the handler is called, so bad input is always a 400 with
our own message, never a handler's stray ``TypeError`` or ``ValueError`` answered 500:

- a key the handler does not take is refused (a misspelt ``timout`` would otherwise be ignored
  and the request carried out with the default);
- each value must be of its kind (:class:`Kind`); no string anywhere may hold a NUL (no path,
  argv, image reference or environment entry can carry one through the kernel);
- (checked by the server as it merges them) a body member may not repeat a path parameter
  (``POST /v1/units/web/stop`` with ``{"name": "db"}`` would otherwise stop ``db``).

The handlers still check what only they can (a unit's name is known, an image reference
parses); this module only makes sure they are handed values of the kinds they expect.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

MAX_TIMEOUT = 24 * 3600.0
"""The longest timeout a request may ask for, in seconds (a day)."""


class Kind(enum.Enum):
    TEXT = "a string"
    FLAG = "true or false"
    COUNT = "a whole number, 0 or more"
    SECONDS = f"a number of seconds, above 0 and at most {MAX_TIMEOUT:g}"
    TEXTS = "a list of strings"
    TEXT_MAP = "an object of strings"
    PAIR = "a list of two whole numbers"


_UNIT = {"name": Kind.TEXT}
PARAMS: dict[str, dict[str, Kind]] = {
    "ping": {},
    "status": {},
    "plan": {},
    "plan_dir": {"config_dir": Kind.TEXT},
    "show": _UNIT,
    "events": {"since": Kind.COUNT, "follow": Kind.FLAG},
    "start": _UNIT,
    "stop": _UNIT,
    "restart": _UNIT,
    "remove": _UNIT,
    "exec": {**_UNIT, "argv": Kind.TEXTS, "timeout": Kind.SECONDS},
    "kill": {**_UNIT, "signal": Kind.TEXT},
    "reload": {},
    "run": {
        "image": Kind.TEXT,
        "argv": Kind.TEXTS,
        "entrypoint": Kind.TEXT,
        "env": Kind.TEXT_MAP,
        "volumes": Kind.TEXTS,
        "ports": Kind.TEXTS,
        "network": Kind.TEXT,
        "memory": Kind.TEXT,
        "user": Kind.TEXT,
        "workdir": Kind.TEXT,
        "name": Kind.TEXT,
        "tty": Kind.FLAG,
        "rm": Kind.FLAG,
        "interactive": Kind.FLAG,
        "attach": Kind.FLAG,
        "console_size": Kind.PAIR,
    },
    "image_pull": {"reference": Kind.TEXT, "platform": Kind.TEXT, "state_dir": Kind.TEXT},
    "update": {"names": Kind.TEXTS, "dry_run": Kind.FLAG},
}
"""Every handler's parameters. A handler not listed here takes anything (a test's own)."""


def problem(handler: str, params: Mapping[str, Any]) -> str | None:
    """Why ``params`` cannot go to ``handler`` (a message for a 400), or None when they can."""
    kinds = PARAMS.get(handler)
    if kinds is None:
        return None
    unknown = sorted(key for key in params if key not in kinds)
    if unknown:
        takes = ", ".join(sorted(kinds)) if kinds else "no parameters"
        listed = ", ".join(repr(key) for key in unknown)
        return f"unknown parameter {listed} for {handler} (it takes {takes})"
    for key, value in params.items():
        if value is None:
            continue  # JSON null: the same as leaving it out, which every handler allows
        if not _is(kinds[key], value):
            return f"{key} must be {kinds[key].value}"
        if _has_nul(value):
            return f"{key} holds a NUL character"
    return None


def _is(kind: Kind, value: Any) -> bool:
    if kind is Kind.TEXT:
        return isinstance(value, str)
    if kind is Kind.FLAG:
        return isinstance(value, bool)
    if kind is Kind.COUNT:
        return _whole(value) and value >= 0
    if kind is Kind.SECONDS:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value) and 0 < value <= MAX_TIMEOUT
    if kind is Kind.TEXTS:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind is Kind.TEXT_MAP:
        return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())
    return isinstance(value, list) and len(value) == 2 and all(_whole(item) for item in value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    return False
