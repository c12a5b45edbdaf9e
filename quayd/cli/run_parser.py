"""The command lines of ``quayctl run`` and ``quayctl attach`` (Docker's options).

Only the parser: every quayctl command builds it, so it stays as light as the rest of the lean
commands; :mod:`quayd.cli.run` (sockets, frames, signals) is loaded when one of the two runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from quayd.cli.control import add_parser


def add_parsers(commands: Any, add_timeout: Any) -> None:
    run = add_parser(
        commands,
        "run",
        "run an image as an ad-hoc unit, as docker run",
        "Run IMAGE (pulled if missing) as an ad-hoc unit: the agent keeps it in memory only "
        '(never in the config directory), with restart policy "no", on the bridge unless '
        "--network says otherwise; status, show, events and logs see it like any unit. CMD "
        "replaces the image's Cmd. As docker run: quayctl stays attached until the command "
        "ends, its stdout and stderr on quayctl's own (with -t: a terminal, attached to this "
        "one), stdin passed on with -i; SIGINT and SIGTERM are forwarded (SIGKILL after "
        "--stop-timeout, or at a second one). Its output also goes to `quayctl logs`. -d prints "
        "the unit's name and returns at once (`quayctl attach NAME` attaches later). --rm "
        "removes the unit once it ended (the default with -t); else it stays listed as exited "
        "until `quayctl rm`. Root only. Exit status: the command's (killed by signal N: 128+N; "
        "with -d 0); 125 quay's own failure (a name taken, a port published already, the image "
        "cannot be pulled, the agent cannot be reached, wrong usage); 126 the command cannot "
        "be executed; 127 the command is not found.",
        "quayctl run --rm localhost/busybox:1.36 sh -c 'echo out; echo err >&2; exit 3'",
        "echo hi | quayctl run --rm -i localhost/busybox:1.36 cat",
        "quayctl run --rm -it localhost/busybox:1.36 sh",
        "quayctl run -d -p 9090:80 --name web2 localhost/busybox:1.36 httpd -f -p 80",
    )
    run.add_argument("image", metavar="IMAGE")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD ...")
    run.add_argument("-i", "--interactive", action="store_true", help="pass stdin on")
    run.add_argument(
        "-t", "--tty", action="store_true", help="a terminal for the process, attached here"
    )
    run.add_argument(
        "-d", "--detach", action="store_true", help="do not attach: print the unit's name"
    )
    run.add_argument(
        "--rm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="remove the unit once it ended (default: with -t)",
    )
    run.add_argument("--name", metavar="NAME", help="the unit's name (default run-XXXXXX)")
    run.add_argument(
        "-e",
        "--env",
        action="append",
        metavar="KEY[=VALUE]",
        help="set a variable (KEY alone: its value here; repeatable)",
    )
    run.add_argument(
        "-v",
        "--volume",
        action="append",
        metavar="SRC:DST[:ro]",
        help="a bind mount (SRC a path) or a named volume (repeatable)",
    )
    run.add_argument(
        "-p",
        "--publish",
        action="append",
        metavar="HOST:CONTAINER",
        help="publish a port, as ports in a unit file (repeatable)",
    )
    run.add_argument("--network", metavar="MODE", help="bridge (the default), host or none")
    run.add_argument("-m", "--memory", metavar="SIZE", help='a memory limit, such as "64M"')
    run.add_argument("-u", "--user", metavar="USER[:GROUP]", help="run the command as USER")
    run.add_argument("-w", "--workdir", metavar="DIR", help="the command's working directory")
    run.add_argument(
        "--entrypoint", metavar="CMD", help="replaces the image's Entrypoint (and its Cmd)"
    )
    run.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="after a forwarded signal, SIGKILL if it has not ended by then (default 10)",
    )
    add_timeout(run, 600.0)
    run.set_defaults(handler=cmd_run)

    attach = add_parser(
        commands,
        "attach",
        "attach to a running ad-hoc unit",
        "Attach to an ad-hoc unit (quayctl run) that runs: its terminal (-t), or its stdout and "
        "stderr from now on, with stdin passed on when it was started with -i. Signals are "
        "forwarded as by quayctl run. Root only. Exit status: the command's once it ends; 125 "
        "no such running ad-hoc unit, or the agent cannot be reached.",
        "quayctl attach run-1a2b3c",
    )
    attach.add_argument("name", metavar="NAME")
    attach.add_argument(
        "--no-stdin", action="store_true", help="do not pass stdin on (without a terminal)"
    )
    attach.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="after a forwarded signal, SIGKILL if it has not ended by then (default 10)",
    )
    attach.set_defaults(handler=cmd_attach)


def cmd_run(args: argparse.Namespace) -> int:
    from quayd.cli import run  # noqa: PLC0415

    return run.cmd_run(args)


def cmd_attach(args: argparse.Namespace) -> int:
    from quayd.cli import run  # noqa: PLC0415

    return run.cmd_attach(args)
