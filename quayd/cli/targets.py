"""Which agent a command talks to, and how (docs/remote.md).

``--host URL|NAME`` (repeatable), ``--all-connections``, else ``QUAY_HOST``, else the default
connection (:mod:`quayd.cli.connections`), else this host's agent. Then, per command:

* **through the API** (the command runs here, its requests go over ssh through the far
  ``quayctl system dial-stdio``): ``status``, ``ping``, ``plan``, ``show``, ``events``,
  ``wait``, ``start``, ``stop``, ``restart``, ``exec`` without ``-i``/``-t``, ``rm``,
  ``reload``, ``update``, ``run -d``. Several hosts: ``status`` only (:mod:`quayd.cli.fleet`);
* **on the far host** (``ssh HOST quayctl system forwarded -- …``, :mod:`quayd.cli.forward`):
  what needs that host's own files, terminal or processes: ``logs`` (journald or the log
  file there), ``exec -i/-t`` and ``run``/``attach`` (the runtime's exec, a terminal's master
  passed over the attach socket), ``image``, ``export``/``import kube``, ``validate`` and
  ``render`` of the far config directory; with a terminal, ``ssh -t`` carries it (its size,
  its Ctrl-C);
* ``plan DIR``: DIR is read here and sent to the far agent's dry run;
* **here**, whatever the host: ``validate PATH…`` and ``render FILE`` (local files; neither
  asks an agent), ``connection``, ``completion``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from quayd.cli.connections import ConnectionsError, config_file, load, target_of
from quayd.cli.remote import (
    HOST_VARIABLE,
    LOCAL,
    Destination,
    HostError,
    SshConnector,
    SshTarget,
    UnixTarget,
    parse_url,
)

if TYPE_CHECKING:
    from quayd.cli.client import Connector
    from quayd.cli.connections import Connections

EXIT_USAGE = 2
VALUE_OPTIONS = ("--config", "--config-dir", "--state-dir", "--run-dir")
"""The global options passed on to the far quayctl: they are the far host's."""
HOST_OPTION = "--host"
ALL_OPTION = "--all-connections"
HERE = frozenset({"connection", "completion", "system"})
THROUGH_API = frozenset(
    {"status", "ping", "show", "events", "wait", "start", "stop", "restart", "rm", "reload"}
    | {"update"}
)


class Scanned(NamedTuple):
    """The global options before the command, and where the command starts."""

    hosts: list[str]
    all_connections: bool
    passed_on: list[str]
    command_at: int | None


def scan(arguments: Sequence[str]) -> Scanned | None:
    """The leading global options, without argparse; None for anything unusual (the full
    parser then decides: a miss costs time, never a different result)."""
    hosts: list[str] = []
    passed_on: list[str] = []
    every = False
    index = 0
    while index < len(arguments):
        arg = arguments[index]
        option, equals, value = arg.partition("=")
        if option in (HOST_OPTION, *VALUE_OPTIONS):
            if not equals:
                if index + 1 >= len(arguments):
                    return None
                value = arguments[index + 1]
                index += 1
            if option == HOST_OPTION:
                hosts.append(value)
            else:
                passed_on += [option, value]
        elif arg == ALL_OPTION:
            every = True
        elif arg.startswith("-"):
            return None
        else:
            return Scanned(hosts, every, passed_on, index)
        index += 1
    return Scanned(hosts, every, passed_on, None)


def destinations(
    hosts: Sequence[str], every: bool, environ: Mapping[str, str]
) -> list[Destination]:
    """The agents asked for, in order (none: this host's, as configured here)."""
    known = load(config_file(environ))
    if every:
        if not known.connections:
            raise HostError(f"--all-connections: no connection in {config_file(environ)}")
        chosen = [resolve(name, known) for name in sorted(known.connections)]
        return chosen + [resolve(h, known) for h in hosts if h not in known.connections]
    if hosts:
        return [resolve(h, known) for h in hosts]
    given = environ.get(HOST_VARIABLE, "").strip()
    if given:
        return [resolve(given, known)]
    if known.default is not None:
        return [resolve(known.default, known)]
    return []


def resolve(value: str, known: Connections) -> Destination:
    """A URL, ``local``, or a connection's name."""
    if value == LOCAL:
        return Destination(LOCAL, UnixTarget())
    if "://" in value:
        return Destination(value, parse_url(value))
    if value in known.connections:
        try:
            return Destination(value, target_of(known.connections[value]))
        except ConnectionsError as error:
            raise HostError(str(error)) from None
    raise HostError(
        f"{value!r} is neither a connection (quayctl connection ls) nor a URL "
        "(ssh://[USER@]HOST[:PORT])"
    )


# --- routing -------------------------------------------------------------------------------------


def route(arguments: list[str], environ: Mapping[str, str]) -> int | None:
    """Run the command where it belongs; None when it runs here as usual (this host's agent,
    or through the API with :func:`agent_target` giving the connector)."""
    scanned = scan(arguments)
    if scanned is None or scanned.command_at is None:
        return None
    command = arguments[scanned.command_at]
    if command in HERE:
        return None
    try:
        chosen = destinations(scanned.hosts, scanned.all_connections, environ)
    except (HostError, ConnectionsError) as error:
        print(f"quayctl: {error}", file=sys.stderr)
        return EXIT_USAGE
    if len(chosen) > 1 or scanned.all_connections:
        return _several(command, arguments, chosen, scanned)
    if not chosen or not isinstance(chosen[0].target, SshTarget):
        return None
    return _one(chosen[0], command, arguments, scanned, environ)


def _several(
    command: str, arguments: list[str], chosen: list[Destination], scanned: Scanned
) -> int:
    if command != "status":
        print(
            f"quayctl {command}: several hosts are for status only; give one --host",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from quayd.cli import fleet  # noqa: PLC0415
    from quayd.cli.quayctl import build_agent_parser  # noqa: PLC0415

    args = build_agent_parser().parse_args(arguments)
    return fleet.cmd_fleet_status(args, chosen, scanned.passed_on)


def _one(
    destination: Destination,
    command: str,
    arguments: list[str],
    scanned: Scanned,
    environ: Mapping[str, str],
) -> int | None:
    from quayd.cli import forward  # noqa: PLC0415

    assert scanned.command_at is not None
    rest = arguments[scanned.command_at :]
    how = placement(command, arguments)
    if how == "here":
        return None
    if how == "plan-dir":
        return forward.plan_directory(destination, scanned.passed_on, rest, environ)
    tty = how == "tty" and os.isatty(0)
    return forward.run_forwarded(destination, scanned.passed_on, rest, environ, tty=tty)


def placement(command: str, arguments: list[str]) -> str:
    """``here`` (this process, through the API if it asks the agent), ``far`` (run on the far
    host), ``tty`` (there, with a terminal if this one is), or ``plan-dir``."""
    if command in THROUGH_API:
        return "here"
    if command in ("plan", "exec", "run", "attach"):
        return _agent_placement(command, arguments)
    if command == "logs":
        return "far"
    rest = arguments[arguments.index(command) + 1 :]
    if command == "validate":
        return "here" if _has_operand(rest, ("--as",)) else "far"
    if command == "render":
        return "here" if any("/" in a for a in rest if not a.startswith("-")) else "far"
    return "far"


def _agent_placement(command: str, arguments: list[str]) -> str:
    from quayd.cli.quayctl import build_agent_parser  # noqa: PLC0415

    try:
        args = build_agent_parser().parse_args(arguments)
    except SystemExit:
        return "here"  # the same parser says what is wrong, when it runs for real
    if command == "plan":
        return "plan-dir" if args.dir is not None else "here"
    if command == "exec":
        return "tty" if args.tty else ("far" if args.interactive else "here")
    if command == "run":
        return "here" if args.detach else ("tty" if args.tty else "far")
    return "tty"  # attach: the unit may have a terminal


def _has_operand(rest: Sequence[str], value_options: Sequence[str]) -> bool:
    skip = False
    for arg in rest:
        if skip:
            skip = False
        elif arg in value_options:
            skip = True
        elif not arg.startswith("-"):
            return True
    return False


# --- the API's commands --------------------------------------------------------------------------


def passed_on(args: argparse.Namespace) -> list[str]:
    """The global options of a parsed command line, to give the far quayctl."""
    options: list[str] = []
    for option in VALUE_OPTIONS:
        value = getattr(args, option.removeprefix("--").replace("-", "_"), None)
        if value is not None:
            options += [option, str(value)]
    return options


def agent_target(
    args: argparse.Namespace, local: Callable[[], Path | None]
) -> Path | Connector | None:
    """The agent the command's requests go to: ``local()`` (this host's socket), a unix socket
    of a URL, or an :class:`~quayd.cli.remote.SshConnector`; None once an error is shown."""
    try:
        chosen = destinations(args.host or [], args.all_connections, os.environ)
    except (HostError, ConnectionsError) as error:
        print(f"quayctl: {error}", file=sys.stderr)
        return None
    if not chosen:
        return local()
    if len(chosen) > 1:
        print(f"quayctl {args.command}: several hosts are for status only", file=sys.stderr)
        return None
    name, target = chosen[0]
    if isinstance(target, UnixTarget):
        return Path(target.socket) if target.socket else local()
    return SshConnector(name, target, passed_on(args))
