"""``quayctl system …``: what ``quayctl --host`` on another machine runs here, over ssh
(docs/remote.md). Each handler loads its module only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_system_commands(commands: Any) -> None:
    from quayd.cli.control import add_parser  # noqa: PLC0415

    system = add_parser(
        commands,
        "system",
        "what quayctl --host runs on the far host",
        "The far side of quayctl --host: dial-stdio bridges stdin and stdout to the agent's "
        "socket here (as docker system dial-stdio); forwarded runs a quayctl command line and "
        "stops it when the session's stdout loses its reader; plan-archive plans a config "
        "directory sent as a tar on stdin. See docs/remote.md.",
        "quayctl system dial-stdio  # what quayctl --host ssh://prod1 runs there, through ssh",
    )
    verbs = system.add_subparsers(dest="verb", metavar="VERB", required=True)
    dial = verbs.add_parser("dial-stdio", help="bridge stdin and stdout to the agent's socket")
    dial.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help="the agent's socket (default RUN_DIR/quayd.sock)",
    )
    dial.add_argument(
        "--attach", action="store_true", help="the attach socket beside it instead (quayctl run)"
    )
    dial.set_defaults(handler=_dial_stdio)
    forwarded = verbs.add_parser("forwarded", help="run a quayctl command line, guarded")
    forwarded.add_argument("arguments", nargs=argparse.REMAINDER, metavar="-- ARGUMENTS")
    forwarded.set_defaults(handler=_forwarded)
    archive = verbs.add_parser("plan-archive", help="plan a config directory sent as a tar")
    archive.add_argument("--shown-as", required=True, metavar="DIR", help="the caller's DIR")
    archive.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    archive.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    archive.set_defaults(handler=_plan_archive)


def _dial_stdio(args: argparse.Namespace) -> int:
    from quayd.cli.dial_stdio import cmd_dial_stdio  # noqa: PLC0415

    return cmd_dial_stdio(args)


def _forwarded(args: argparse.Namespace) -> int:
    from quayd.cli.forward import cmd_forwarded  # noqa: PLC0415

    return cmd_forwarded(args)


def _plan_archive(args: argparse.Namespace) -> int:
    from quayd.cli.forward import cmd_plan_archive  # noqa: PLC0415

    return cmd_plan_archive(args)
