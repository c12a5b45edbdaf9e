"""``quayctl --host a --host b status`` (or ``--all-connections``): every host's agent asked at
once (a thread each), one table with a HOST column. A host that cannot be reached is a row with
its error; the exit status is 4 when some host failed, else 3 when some unit is not as wanted,
else 0 (as ``status``'s for one host)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from quayd.cli import client, status
from quayd.cli.remote import Destination, SshConnector, UnixTarget

UNREACHABLE = "unreachable"
_MIN_DETAIL = 20
_INDENT = "    "
_COLUMNS = ("HOST", "NAME", "STATE", "HEALTH", "IMAGE", "IP", "PORTS", "RESTARTS", "UPTIME")


class HostStatus(NamedTuple):
    """One host's answer: its status payload, or why there is none."""

    host: str
    payload: dict[str, Any] | None = None
    error: str | None = None


def cmd_fleet_status(
    args: argparse.Namespace, destinations: Sequence[Destination], passed_on: Sequence[str]
) -> int:
    answers = ask_all(args, destinations, passed_on)
    if args.json:
        import json  # noqa: PLC0415

        json.dump(fleet_json(answers, args.names), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_fleet(answers, args.names, time.time()))
    for answer in answers:
        if answer.error is not None:
            print(f"quayctl status: {answer.host}: {answer.error}", file=sys.stderr)
    return fleet_exit_code(answers, args.names)


def ask_all(
    args: argparse.Namespace, destinations: Sequence[Destination], passed_on: Sequence[str]
) -> list[HostStatus]:
    """Each host's status, in the order given, asked in parallel."""
    import threading  # noqa: PLC0415

    answers: list[HostStatus | None] = [None] * len(destinations)

    def ask(index: int, destination: Destination) -> None:
        answers[index] = ask_one(args, destination, passed_on)

    threads = [
        threading.Thread(target=ask, args=(i, d), daemon=True) for i, d in enumerate(destinations)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pairs = zip(answers, destinations, strict=True)
    return [a or HostStatus(d.name, error="no answer") for a, d in pairs]


def ask_one(
    args: argparse.Namespace, destination: Destination, passed_on: Sequence[str]
) -> HostStatus:
    from quayd.cli.quayctl import agent_socket  # noqa: PLC0415

    target = destination.target
    where: Any
    if isinstance(target, UnixTarget):
        where = target.socket or agent_socket(args)
        if where is None:
            return HostStatus(destination.name, error="no agent socket (see above)")
    else:
        where = SshConnector(destination.name, target, passed_on)
    try:
        payload = client.request(where, "GET", "/v1/status", timeout=args.timeout)
    except (client.AgentUnreachableError, client.AgentError) as error:
        return HostStatus(destination.name, error=str(error))
    if not isinstance(payload, dict) or not isinstance(payload.get("units"), list):
        return HostStatus(destination.name, error="the agent's answer is not a status")
    return HostStatus(destination.name, payload=payload)


def fleet_exit_code(answers: Sequence[HostStatus], names: Sequence[str]) -> int:
    if any(a.payload is None for a in answers):
        return status.EXIT_UNREACHABLE
    codes = [
        status.exit_code(status.select(a.payload, names)[0]["units"]) for a in answers if a.payload
    ]
    return max(codes, default=status.EXIT_OK)


def fleet_rows(
    answers: Sequence[HostStatus], names: Sequence[str], now: float
) -> list[tuple[str, ...]]:
    """A row per unit of each host (``status``'s cells, HOST first); a failed host is one row
    with ``unreachable`` and its error."""
    rows: list[tuple[str, ...]] = []
    for answer in answers:
        if answer.payload is None:
            rows.append((answer.host, "-", UNREACHABLE, *("-",) * 6, answer.error or ""))
            continue
        units = status.select(answer.payload, names)[0]["units"]
        if not units:
            rows.append((answer.host, "-", "no units", *("-",) * 6, ""))
        for unit in sorted(units, key=lambda u: str(u.get("name"))):
            rows.append((answer.host, *status.table_row(unit, now)))
    return rows


def format_fleet(
    answers: Sequence[HostStatus], names: Sequence[str], now: float, width: int = 0
) -> str:
    """The table: HOST, then ``status``'s columns, DETAIL last, cut to fit ``width``; with
    less than 20 columns left for it, DETAIL goes on a line of its own below its row, as a
    host's error always does (it is what the reader needs whole)."""
    width = width or status.TABLE_WIDTH
    rows = [(*_COLUMNS, "DETAIL"), *fleet_rows(answers, names, now)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    room = width - sum(widths) - 2 * len(widths)
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        below = index > 0 and (room < _MIN_DETAIL or row[2] == UNREACHABLE)
        lines.append("  ".join([*cells, "" if below else status.truncate(row[-1], room)]).rstrip())
        if below and row[-1]:
            lines.append(_INDENT + status.truncate(row[-1], width - len(_INDENT)))
    return "\n".join(lines) + "\n"


def fleet_json(answers: Sequence[HostStatus], names: Sequence[str]) -> dict[str, Any]:
    """``{"hosts": [{"host", "status"} or {"host", "error"}]}``, in the order asked."""
    hosts: list[dict[str, Any]] = []
    for answer in answers:
        if answer.payload is None:
            hosts.append({"host": answer.host, "error": answer.error})
        else:
            hosts.append({"host": answer.host, "status": status.select(answer.payload, names)[0]})
    return {"hosts": hosts}
