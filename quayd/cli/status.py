"""``quayctl status`` and ``plan``: the agent's payloads as text, and the exit code they mean.

Pure functions of the payload (as the agent sends it, plain JSON) and ``now``, so every case is
a table-driven unit test. Nothing here imports quayd's models: ``quayctl status`` stays lean,
and a payload from a newer agent (a state or key this quayctl does not know) still prints.

Exit codes follow supervisorctl's, so scripts can wait on them: 0 when every unit is running and
ready or has exited (as its restart policy allows), 3 when some unit is in any other state, 4 when
the agent cannot be reached or a unit asked for does not exist.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STATES = (
    "invalid",
    "waiting",
    "pulling",
    "starting",
    "running",
    "stopping",
    "exited",
    "backoff",
    "removing",
)
"""Every state the agent reports, in lifecycle order (the order of the header's counts)."""

EXIT_OK = 0
EXIT_NOT_RUNNING = 3
EXIT_UNREACHABLE = 4

Payload = Mapping[str, Any]
Unit = Mapping[str, Any]

_LIVE = frozenset({"starting", "running", "stopping"})  # states with a process to time
_COLUMNS = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "DETAIL")
_FINDING_INDENT = "    "


def unit_is_fine(unit: Unit) -> bool:
    """Running and ready, or exited: an exit the restart policy does not undo is not a fault."""
    state = unit.get("state")
    return state == "exited" or (state == "running" and unit.get("ready") is True)


def exit_code(units: Iterable[Unit]) -> int:
    return EXIT_OK if all(unit_is_fine(u) for u in units) else EXIT_NOT_RUNNING


def select(payload: Payload, names: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The payload with only the units ``names`` (in that order; all when empty), and the unknown.

    The filtering is done here, not by the agent: status is cheap to send whole, and an agent of
    any version serves it the same way.
    """
    if not names:
        return dict(payload), []
    by_name = {u.get("name"): u for u in payload.get("units", [])}
    wanted = list(dict.fromkeys(names))
    chosen = [by_name[n] for n in wanted if n in by_name]
    return {**payload, "units": chosen}, [n for n in wanted if n not in by_name]


def format_duration(seconds: float) -> str:
    """A short, fixed-precision span: "45s", "5m12s", "2h03m", "3d04h" (two units at most)."""
    total = max(0, int(seconds))
    minutes, secs = divmod(total, 60)
    if not minutes:
        return f"{secs}s"
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes}m{secs:02d}s"
    days, hours = divmod(hours, 24)
    if not days:
        return f"{hours}h{minutes:02d}m"
    return f"{days}d{hours:02d}h"


def format_header(payload: Payload, now: float) -> str:
    """ "quayd 123 up 2h03m, 4 units: 2 running, 1 starting, 1 backoff, 0 invalid".

    ``running`` and ``invalid`` are always counted (the two numbers an operator looks for); the
    other states only when some unit is in them.
    """
    agent = payload.get("agent", {})
    units = payload.get("units", [])
    counts: dict[str, int] = {}
    for unit in units:
        state = str(unit.get("state"))
        counts[state] = counts.get(state, 0) + 1
    middle = [s for s in STATES if s not in ("running", "invalid") and counts.get(s)]
    newer = sorted(s for s in counts if s not in STATES)  # from an agent newer than this quayctl
    shown = ["running", *middle, *newer, "invalid"]
    summary = ", ".join(f"{counts.get(s, 0)} {_clean(s)}" for s in shown)
    uptime = _since(agent.get("started_at"), now)
    noun = "unit" if len(units) == 1 else "units"
    return f"quayd {agent.get('pid', '?')} up {uptime}, {len(units)} {noun}: {summary}"


def format_status(payload: Payload, now: float) -> str:
    """The header, then one aligned row per unit, each unit's findings indented below it."""
    lines = [format_header(payload, now)]
    units = sorted(payload.get("units", []), key=lambda u: str(u.get("name")))
    if not units:
        lines.append(f"no units in {_clean(str(payload.get('agent', {}).get('config_dir', '?')))}")
        return "\n".join(lines) + "\n"
    rows = [_COLUMNS, *(_row(u, now) for u in units)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if index:
            lines += [
                _FINDING_INDENT + format_finding(f) for f in units[index - 1].get("findings") or []
            ]
    return "\n".join(lines) + "\n"


def format_finding(finding: Any) -> str:
    """One line, whether the agent sends a finding as text or as ``Finding.to_json()``."""
    if isinstance(finding, Mapping) and "message" in finding:
        text = str(finding.get("file") or "")
        if finding.get("line") is not None:
            text += f":{finding['line']}"
            if finding.get("column") is not None:
                text += f":{finding['column']}"
        text += ": "
        if finding.get("severity") == "warning":
            text += "warning: "
        if finding.get("key"):
            text += str(finding["key"])
            text += f" = {finding['value']}: " if finding.get("value") is not None else ": "
        text += str(finding["message"])
        if finding.get("accepted"):
            text += f"; accepted: {finding['accepted']}"
        return _clean(text)
    return _clean(str(finding))


def _row(unit: Unit, now: float) -> tuple[str, ...]:
    state = str(unit.get("state"))
    pid = unit.get("pid")
    started = unit.get("started_at")
    uptime = _since(started, now) if state in _LIVE and started is not None else "-"
    notes: list[str] = []
    if state == "backoff" and unit.get("next_attempt") is not None:
        wait = math.ceil(float(unit["next_attempt"]) - now)
        notes.append(f"next attempt in {format_duration(wait)}" if wait > 0 else "next attempt now")
    if state == "running" and unit.get("ready") is not True:
        notes.append("not ready")
    notes += [str(unit[k]) for k in ("detail", "status_text") if unit.get(k)]
    return (
        _clean(str(unit.get("name"))),
        _clean(state),
        "-" if pid is None else str(pid),
        uptime,
        str(unit.get("restarts", 0)),
        _clean("; ".join(notes)),
    )


def _since(started: Any, now: float) -> str:
    return "?" if started is None else format_duration(now - float(started))


def _clean(text: str) -> str:
    """Escape control characters: a container's STATUS= text must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_plan(actions: Sequence[Mapping[str, Any]]) -> str:
    """``quayctl plan``: "replace web: unit changed: replacing the container", one a line.

    A stop that replaces a changed unit says ``replace`` (the agent sends ``why``); any other
    action says its kind. No action at all: "nothing to do".
    """
    if not actions:
        return "nothing to do\n"
    lines = []
    for action in actions:
        kind = str(action.get("kind", "?"))
        if kind == "stop" and action.get("why") == "replace":
            kind = "replace"
        line = f"{kind} {action.get('unit', '?')}"
        if action.get("reason"):
            line += f": {action['reason']}"
        lines.append(_clean(line))
    return "\n".join(lines) + "\n"
