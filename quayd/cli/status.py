"""quayctl's agent views: the agent's payloads as text, and the exit codes they mean.

``status`` (the table, coloured on a terminal), ``plan``, ``show``, ``events`` and ``wait``.

Pure functions of the payload (as the agent sends it, plain JSON) and ``now``, so every case is
a table-driven unit test. Nothing here imports quayd's models: ``quayctl status`` stays lean,
and a payload from a newer agent (a state or key this quayctl does not know) still prints.

Exit codes follow supervisorctl's, so scripts can wait on them: 0 when every unit is running and
ready, has exited (as its restart policy allows) or was stopped by an operator, 3 when some unit
is in any other state or its file is invalid (even while its last good version runs: the files
are not what runs), 4 when the agent cannot be reached or a unit asked for does not exist.

A unit whose file is invalid but whose last good version still runs comes from the agent as that
version's state with the file's findings; here it is listed and counted as invalid, with that
state beside it ("invalid (running)") and its container's columns as they are.
"""

from __future__ import annotations

import json
import math
import time
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

_HEADER_ORDER = (*STATES[:6], "stopped", *STATES[6:])  # "stopped": held by an operator
_LIVE = frozenset({"starting", "running", "stopping"})  # states with a process to time
_FINDING_INDENT = "    "


def file_invalid(unit: Unit) -> bool:
    """The unit's file is invalid: the agent sends only a file's errors as findings."""
    return unit.get("state") == "invalid" or bool(unit.get("findings"))


def shown_state(unit: Unit) -> str:
    """The state as listed: "invalid" for an invalid file, with the state of the last good
    version beside it while one is there ("invalid (running)")."""
    state = str(unit.get("state"))
    if state != "invalid" and file_invalid(unit):
        return f"invalid ({state})"
    return state


def unit_is_fine(unit: Unit) -> bool:
    """Its file valid and it running and ready, exited (an exit the restart policy does not
    undo is not a fault), or stopped by an operator (``quayctl stop``: as the operator wants it)."""
    if file_invalid(unit):
        return False
    state = unit.get("state")
    return state in ("exited", "stopped") or (state == "running" and unit.get("ready") is True)


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
    """The agent's line: its version, pid, uptime and config dir, then the units by state:
    "quayd 0.1.0 (pid 123), up 2h03m, /etc/quay.d: 4 units: 2 running, 1 backoff, 0 invalid".

    ``running`` and ``invalid`` are always counted (the two numbers an operator looks for); the
    other states only when some unit is in them. A unit whose file is invalid counts as invalid,
    even while its last good version runs.
    """
    agent = payload.get("agent", {})
    units = payload.get("units", [])
    counts: dict[str, int] = {}
    for unit in units:
        state = "invalid" if file_invalid(unit) else str(unit.get("state"))
        counts[state] = counts.get(state, 0) + 1
    middle = [s for s in _HEADER_ORDER if s not in ("running", "invalid") and counts.get(s)]
    newer = sorted(
        s for s in counts if s not in _HEADER_ORDER
    )  # from an agent newer than this quayctl
    shown = ["running", *middle, *newer, "invalid"]
    summary = ", ".join(f"{counts.get(s, 0)} {_clean(s)}" for s in shown)
    uptime = _since(agent.get("started_at"), now)
    noun = "unit" if len(units) == 1 else "units"
    who = f"quayd {_clean(str(agent.get('version', '?')))} (pid {agent.get('pid', '?')})"
    where = _clean(str(agent.get("config_dir", "?")))
    return f"{who}, up {uptime}, {where}: {len(units)} {noun}: {summary}"


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


# --- quayctl status: the full table ---------------------------------------------------------------

TABLE_WIDTH = 100
"""The table fits this many columns (or the terminal's, when wider): DETAIL is cut to fit."""

_TABLE_COLUMNS = ("NAME", "STATE", "HEALTH", "IMAGE", "IP", "PORTS", "RESTARTS", "UPTIME", "DETAIL")
_MIN_DETAIL = 20  # with less room, DETAIL goes on a line of its own below the row
_RESET = "\x1b[0m"
_COLOURS = {
    "running": "\x1b[32m",  # green
    "healthy": "\x1b[32m",
    "starting": "\x1b[33m",  # yellow
    "waiting": "\x1b[33m",
    "pulling": "\x1b[33m",
    "stopping": "\x1b[33m",
    "backoff": "\x1b[31m",  # red
    "invalid": "\x1b[31m",
    "unhealthy": "\x1b[31m",
    "stopped": "\x1b[2m",  # dim
    "exited": "\x1b[2m",
}


def use_colour(isatty: bool, environ: Mapping[str, str]) -> bool:
    """Colour on a terminal, unless ``NO_COLOR`` is set to anything but "" (no-color.org)."""
    return isatty and not environ.get("NO_COLOR")


def paint(text: str, word: str, colour: bool) -> str:
    """``text`` in the colour of the state or health ``word`` (unchanged when off or unknown)."""
    code = _COLOURS.get(word) if colour else None
    return f"{code}{text}{_RESET}" if code else text


def format_age(seconds: float) -> str:
    """A coarse age, one unit: "45s", "2m", "3h", "5d" (for "2m ago")."""
    total = max(0, int(seconds))
    for size, suffix in ((86400, "d"), (3600, "h"), (60, "m")):
        if total >= size:
            return f"{total // size}{suffix}"
    return f"{total}s"


def short_digest(digest: Any) -> str:
    """``sha256:f4bc048d…`` as ``f4bc048d`` (the first 8 hex digits); "" when unknown."""
    if not digest:
        return ""
    return str(digest).rsplit(":", 1)[-1][:8]


def image_cell(unit: Unit) -> str:
    """The reference and the short digest it runs: ``localhost/busybox:1.36@f4bc048d``."""
    image = str(unit.get("image") or "-")
    digest = short_digest(unit.get("digest"))
    return f"{image}@{digest}" if digest else image


def exit_words(last_exit: Mapping[str, Any]) -> str:
    """ "exited 3", "killed SIGKILL", "oom", "ended" (status unknown): short, for the table."""
    if last_exit.get("oom"):
        return "oom"
    if last_exit.get("code") is not None:
        return f"exited {last_exit['code']}"
    if last_exit.get("signal") is not None:
        return f"killed {last_exit['signal']}"
    return "ended"


def _uptime_cell(unit: Unit, now: float) -> str:
    """The uptime of a live unit; else the last exit and its age ("exited 3, 2m ago"); else -."""
    state = str(unit.get("state"))
    if state in _LIVE and unit.get("started_at") is not None:
        return _since(unit["started_at"], now)
    last = unit.get("last_exit")
    if isinstance(last, Mapping):
        words = exit_words(last)
        at = last.get("at")
        return words if at is None else f"{words}, {format_age(now - float(at))} ago"
    return "-"


def _detail(unit: Unit, now: float) -> str:
    notes: list[str] = []
    state = unit.get("state")
    if state == "backoff" and unit.get("next_attempt") is not None:
        wait = math.ceil(float(unit["next_attempt"]) - now)
        notes.append(f"next attempt in {format_duration(wait)}" if wait > 0 else "next attempt now")
    if state == "running" and unit.get("ready") is not True:
        notes.append("not ready")
    notes += [str(unit[k]) for k in ("detail", "status_text") if unit.get(k)]
    return _clean("; ".join(notes))


def table_row(unit: Unit, now: float) -> tuple[str, ...]:
    """One unit's cells, plain, in the order of the table's columns."""
    ports = unit.get("ports") or []
    return (
        _clean(str(unit.get("name"))),
        _clean(shown_state(unit)),
        _clean(str(unit.get("health") or "-")),
        _clean(image_cell(unit)),
        _clean(str(unit.get("ip") or "-")),
        _clean(",".join(str(p) for p in ports) or "-"),
        str(unit.get("restarts", 0)),
        _uptime_cell(unit, now),
        _detail(unit, now),
    )


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def format_table(
    payload: Payload, now: float, *, colour: bool = False, width: int = TABLE_WIDTH
) -> str:
    """``quayctl status``: the header, one aligned row per unit (findings indented below it).

    DETAIL is cut with "…" so that a row fits ``width`` columns; when less than 20 columns are
    left for it, it goes on a line of its own below the row, indented as the findings are. STATE
    and HEALTH are coloured when ``colour`` (the padding stays outside the colour codes).
    """
    lines = [format_header(payload, now)]
    units = sorted(payload.get("units", []), key=lambda u: str(u.get("name")))
    if not units:
        lines.append(f"no units in {_clean(str(payload.get('agent', {}).get('config_dir', '?')))}")
        return "\n".join(lines) + "\n"
    rows = [_TABLE_COLUMNS, *(table_row(u, now) for u in units)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE_COLUMNS) - 1)]
    room = width - sum(widths) - 2 * len(widths)
    below = room < _MIN_DETAIL
    for index, row in enumerate(rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        if index:
            cells[1] = paint(cells[1], row[1].split(" ", 1)[0], colour)
            cells[2] = paint(cells[2], row[2], colour)
        lines.append("  ".join([*cells, "" if below else truncate(row[-1], room)]).rstrip())
        if not index:
            continue
        notes = [row[-1]] if below and row[-1] else []
        notes += [format_finding(f) for f in units[index - 1].get("findings") or []]
        lines += [_FINDING_INDENT + truncate(n, width - len(_FINDING_INDENT)) for n in notes]
    return "\n".join(lines) + "\n"


# --- quayctl show --------------------------------------------------------------------------------

MIB = 1024 * 1024


def clock(at: Any) -> str:
    """A time as the local clock shows it, "12:00:01"; "?" when unknown."""
    if at is None:
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(float(at)))


def config_lines(document: Any, prefix: str = "") -> list[str]:
    """A unit as TOML-ish ``key = value`` lines: tables dotted, lists of tables indexed."""
    lines: list[str] = []
    if isinstance(document, Mapping):
        for key, value in document.items():
            lines += config_lines(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(document, list) and document and all(isinstance(v, Mapping) for v in document):
        for index, value in enumerate(document):
            lines += config_lines(value, f"{prefix}[{index}]")
    else:
        lines.append(f"{prefix} = {json.dumps(document, ensure_ascii=False)}")
    return lines


def _mib(value: Any) -> str:
    return f"{float(value) / MIB:.1f} MiB"


def _resources(limits: Mapping[str, Any], usage: Mapping[str, Any] | None) -> list[str]:
    use = usage or {}
    memory = _mib(use["memory_bytes"]) if use.get("memory_bytes") is not None else "-"
    cpu = f"{float(use['cpu_seconds']):.2f}s" if use.get("cpu_seconds") is not None else "-"
    pids = str(use["pids"]) if use.get("pids") is not None else "-"
    memory_limit = _mib(limits["memory"]) if limits.get("memory") is not None else "unlimited"
    cpus_limit = f"{limits['cpus']:g} cpus" if limits.get("cpus") is not None else "unlimited"
    pids_limit = str(limits["pids"]) if limits.get("pids") is not None else "unlimited"
    return [
        f"memory     {memory} (limit {memory_limit})",
        f"cpu        {cpu} used (limit {cpus_limit})",
        f"pids       {pids} (limit {pids_limit})",
    ]


def _exit_line(exit_: Mapping[str, Any], now: float) -> str:
    at = exit_.get("at")
    when = "?" if at is None else f"{clock(at)} ({format_age(now - float(at))} ago)"
    words = exit_words(exit_)
    description = exit_.get("description")
    return f"{when}  {words}" + (f": {description}" if description else "")


def format_show(reply: Mapping[str, Any], now: float) -> str:
    """``quayctl show NAME``: one unit in detail, as the agent's ``GET /v1/units/NAME``."""
    state = str(reply.get("state"))
    head = f"{reply.get('name')}: {shown_state(reply)}"
    if state == "running":
        head += ", ready" if reply.get("ready") else ", not ready"
    if reply.get("held"):
        head += " (held by an operator until quayctl start)"
    out = [head, *_show_summary(reply, now), *_show_container(reply, now)]
    out.append(_field("ip", reply.get("ip") or "-"))
    out.append(_field("ports", ", ".join(str(p) for p in reply.get("ports") or []) or "-"))
    if isinstance(reply.get("limits"), Mapping):
        out += _resources(reply["limits"], reply.get("usage"))
    out += _show_health(reply.get("health"))
    exits = reply.get("exits") or []
    if exits:
        out += ["exits", *(f"  {_exit_line(e, now)}" for e in exits[-5:])]
    findings = reply.get("findings") or []
    if findings:
        out += ["findings", *(f"  {format_finding(f)}" for f in findings)]
    config = reply.get("unit")
    if isinstance(config, Mapping):
        out += ["config", *(f"  {line}" for line in config_lines(config))]
    return "\n".join(_clean(line) for line in out) + "\n"


def _field(label: str, value: Any) -> str:
    return f"{label:<10} {value}"


def _show_summary(reply: Mapping[str, Any], now: float) -> list[str]:
    out = []
    if reply.get("detail"):
        out.append(_field("detail", reply["detail"]))
    if reply.get("status_text"):
        out.append(_field("status", reply["status_text"]))
    if reply.get("state") == "backoff" and reply.get("next_attempt") is not None:
        wait = math.ceil(float(reply["next_attempt"]) - now)
        when = "now" if wait <= 0 else f"in {format_duration(wait)}"
        out.append(_field("next", f"attempt at {clock(reply['next_attempt'])} ({when})"))
    image = str(reply.get("image") or "-")
    out.append(_field("image", f"{image}@{reply['digest']}" if reply.get("digest") else image))
    return out


def _show_container(reply: Mapping[str, Any], now: float) -> list[str]:
    container = reply.get("container")
    if not isinstance(container, Mapping):
        return [_field("container", "none")]
    out = [
        _field("container", container.get("id")),
        _field("pid", container.get("pid")),
        _field("scope", container.get("scope")),
    ]
    started = container.get("started_at")
    if started is not None:
        text = f"{clock(started)} (up {format_duration(now - float(started))})"
        ready = container.get("ready_at")
        if ready is not None:
            text += f", ready after {float(ready) - float(started):.1f}s"
        out.append(_field("started", text))
    return out


def _show_health(health: Any) -> list[str]:
    if not isinstance(health, Mapping):
        return []
    out = [
        _field("health", f"{health.get('state')} ({health.get('failures', 0)} failures in a row)")
    ]
    history = health.get("history") or []
    checks = ", ".join(
        f"{clock(h.get('at'))} {'ok' if h.get('passed') else 'FAILED'}" for h in history[-5:]
    )
    if checks:
        out.append(_field("checks", checks))
    return out


# --- quayctl events ------------------------------------------------------------------------------


def format_event(event: Mapping[str, Any]) -> str:
    """ "12:00:01 web exited: exited with status 1" (the agent's event, one line)."""
    line = f"{clock(event.get('at'))} {event.get('unit', '-')} {event.get('kind', '?')}"
    if event.get("message"):
        line += f": {event['message']}"
    return _clean(line)


# --- quayctl wait --------------------------------------------------------------------------------

WAIT_READY = 0
WAIT_FAILED = 1
WAIT_TIMEOUT = 2


def unit_failed(unit: Unit) -> bool:
    """Will not become ready without help: backoff, invalid, stopped, or exited with a failure."""
    state = unit.get("state")
    if state in ("backoff", "invalid", "stopped"):
        return True
    if state != "exited":
        return False
    last = unit.get("last_exit")
    if not isinstance(last, Mapping):
        return False  # an exit of unknown kind: not known to have failed
    return (
        bool(last.get("oom")) or last.get("code") not in (0, None) or last.get("signal") is not None
    )


def unit_ready(unit: Unit) -> bool:
    """Ready (running and ready), or done (exited and not failed: a one-shot job that worked)."""
    if unit.get("state") == "exited":
        return not unit_failed(unit)
    return unit.get("ready") is True and unit.get("state") == "running"


def _why(unit: Unit, now: float) -> str:
    detail = _detail(unit, now)
    state = _clean(str(unit.get("state")))
    return f"{_clean(str(unit.get('name')))} ({state}{': ' + detail if detail else ''})"


def wait_outcome(units: Sequence[Unit], now: float) -> tuple[int | None, str]:
    """Where ``quayctl wait`` stands: (0, "") all ready, (1, why) one failed, (None, who waits)."""
    failed = [u for u in units if unit_failed(u)]
    if failed:
        return WAIT_FAILED, "failed: " + ", ".join(_why(u, now) for u in failed)
    pending = [u for u in units if not unit_ready(u)]
    if not pending:
        return WAIT_READY, ""
    return None, "not ready: " + ", ".join(_why(u, now) for u in pending)
