"""``quayctl update [--dry-run] [NAME...]``: check units with ``[update]`` now and update them.

Its options are in :mod:`quayd.cli.control` (the lean parser); this module, loaded only when the
command runs, asks the agent (``POST /v1/update``, docs/api.md) and prints what it answered.
"""

from __future__ import annotations

import argparse
from typing import Any

from quayd.cli.control import EXIT_OK, call, print_json


def format_update(reply: Any) -> str:
    """One line per unit: ``NAME: message``; or what was found when there is none."""
    units = reply.get("units") if isinstance(reply, dict) else None
    if not units:
        return "no unit has [update]\n"
    return "".join(f"{row.get('unit')}: {row.get('message')}\n" for row in units)


def cmd_update(args: argparse.Namespace) -> int:
    body = {"names": list(args.names), "dry_run": bool(args.dry_run)}
    code, reply = call(args, "POST", "/v1/update", body, timeout=args.timeout)
    if code:
        return code
    if args.json:
        print_json(reply)
    else:
        print(format_update(reply), end="")
    return EXIT_OK
