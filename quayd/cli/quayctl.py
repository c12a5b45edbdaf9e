"""quayctl: the operator's tool. ``validate``, ``render``, ``image`` and ``export``/``import kube``
(:mod:`quayd.cli.kube`) work without the agent; ``status``, ``ping``, ``plan`` and the commands
of :mod:`quayd.cli.control` (``show``, ``events``, ``wait``, ``start``, ``stop``, ``restart``,
``exec``, ``run``, ``rm``, ``reload``) ask the agent
over its API socket (``RUN_DIR/quayd.sock``, docs/api.md); ``logs`` reads journald or the log
file.

Exit codes: 0 success, 1 invalid configuration (or, for a command that asks the agent: no such
unit, or the agent refused), 2 wrong usage; as supervisorctl: 3 some unit is not running (or not
ready; ``status``), 4 the agent cannot be reached (or cannot answer) or a unit asked for does not
exist (``status``, ``wait``). ``wait``: 1 a unit failed, 2 timed out. ``exec``: the command's.

The agent's commands are found and run before anything heavy is imported: they load only
:mod:`quayd.cli.client`, :mod:`quayd.cli.status` and :mod:`quayd.cli.control` (the standard
library's http.client; no pydantic, no unit models, no httpx or h11), so a script or a shell
prompt can call them often. Every other command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from quayd.cli.client import Connector
    from quayd.units.directory import ConfigSnapshot, LoadedUnit
    from quayd.units.findings import Finding
    from quayd.units.settings import Settings

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
AGENT_COMMANDS = (
    "status",
    "ping",
    "plan",
    "show",
    "logs",
    "events",
    "wait",
    "start",
    "stop",
    "restart",
    "exec",
    "run",
    "attach",
    "rm",
    "reload",
    "update",
    "connection",
    "system",
)
REMOTE_COMMANDS = ("connection", "system")
"""quayctl --host's own commands: registered on the lean parser only when one of them runs
(their modules are not loaded for ``status``)."""

# The lean twin of quayd.cli.common's global options (importing that module loads pydantic);
# tests/unit/test_status_format.py holds the two to the same options and defaults.
DEFAULT_SETTINGS_FILE = Path("/etc/quay/quayd.toml")
DEFAULT_RUN_DIR = Path("/run/quay")
DEFAULT_STATE_DIR = Path("/var/lib/quay")
_VALUE_OPTIONS = ("--config", "--config-dir", "--state-dir", "--run-dir", "--host")


def build_parser() -> argparse.ArgumentParser:
    from quayd.cli.common import add_global_options  # noqa: PLC0415
    from quayd.cli.completion import add_completion_command  # noqa: PLC0415
    from quayd.cli.image_commands import add_image_commands  # noqa: PLC0415
    from quayd.cli.kube import add_kube_commands  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="quayctl",
        description="Inspect and steer quay, the declarative container host agent.",
    )
    add_global_options(parser)
    add_host_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = commands.add_parser(
        "validate",
        help="check unit files (no agent needed)",
        description=(
            "Check unit files without the agent. With no PATH: the settings file and the whole "
            "config directory, rules across units included. A FILE is checked as a unit whatever "
            "it is called (Ansible's `validate: quayctl validate %s`); a DIR as a config "
            "directory."
        ),
    )
    validate.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    validate.add_argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help="check the one FILE as unit NAME of the config directory, rules across units included",
    )
    validate.add_argument("--json", action="store_true", help="print findings as JSON")
    validate.set_defaults(handler=cmd_validate)

    render = commands.add_parser(
        "render",
        help="print the effective unit as TOML",
        description="Print a unit with its drop-ins merged and every default filled in, as TOML.",
    )
    render.add_argument(
        "unit",
        metavar="NAME|FILE",
        help="a unit of the config directory, or a file (a path with '/' or ending in .toml)",
    )
    render.set_defaults(handler=cmd_render)
    add_image_commands(commands)
    add_kube_commands(commands)
    add_agent_commands(commands)
    add_completion_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if remote_wanted(arguments, os.environ):
        from quayd.cli import targets  # noqa: PLC0415

        routed = targets.route(arguments, os.environ)
        if routed is not None:
            return routed
    command = command_of(arguments)
    if command in AGENT_COMMANDS:
        return _run(build_agent_parser(remote=command in REMOTE_COMMANDS), arguments)
    if command == "image":
        through_agent = _pull_through_agent(arguments)
        if through_agent is not None:
            return through_agent
    from quayd.cli.common import report_config_error  # noqa: PLC0415
    from quayd.units.findings import QuayConfigError  # noqa: PLC0415

    try:
        return _run(build_parser(), arguments)
    except QuayConfigError as error:
        return report_config_error(error)


def _run(parser: argparse.ArgumentParser, arguments: list[str]) -> int:
    args = parser.parse_args(arguments)
    try:
        code: int = args.handler(args)
    except BrokenPipeError:
        return EXIT_OK  # `quayctl render web | head` is fine
    return code


# --- status, ping, plan: the lean path ----------------------------------------------------------


def command_of(arguments: Sequence[str]) -> str | None:
    """The subcommand, found without building the full parser (which imports pydantic).

    Only the global options that take a value are known here. Anything unusual (an abbreviated
    option, ``-h`` or ``--version`` first) gives None, and the full parser handles it, status and
    ping included: a miss only costs time, never a different result.
    """
    skip = False
    for arg in arguments:
        if skip:
            skip = False
        elif arg in _VALUE_OPTIONS:
            skip = True
        elif arg.startswith(tuple(f"{o}=" for o in _VALUE_OPTIONS)) or arg == "--all-connections":
            continue
        elif arg.startswith("-"):
            return None
        else:
            return arg
    return None


class _LeanParseError(Exception):
    """The lean parser does not take these arguments: the full parser will say why."""


class _LeanParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _LeanParseError(message)


def _pull_through_agent(arguments: list[str]) -> int | None:
    """``image pull`` as a request to the running agent, parsed and sent without the imports of
    the full parser (pydantic's models: about 0.17 s); None when it is not that command, or the
    agent cannot do it (then the full path runs: help, errors, the in-process pull)."""
    from quayd.cli import image_remote  # noqa: PLC0415
    from quayd.cli.image_commands import add_pull_command  # noqa: PLC0415

    parser = _LeanParser(prog="quayctl", add_help=False)
    _add_lean_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_LeanParser)
    verbs = commands.add_parser("image", add_help=False).add_subparsers(
        dest="image_command", required=True, parser_class=_LeanParser
    )
    add_pull_command(verbs)
    try:
        args = parser.parse_args(arguments)
    except _LeanParseError:
        return None
    if args.local:
        return None
    return image_remote.pull(args)


def _add_lean_global_options(parser: argparse.ArgumentParser) -> None:
    """The global options of ``quayd.cli.common.add_global_options``, without its imports."""
    group = parser.add_argument_group("global options")
    group.add_argument("--config", type=Path, metavar="FILE")
    group.add_argument("--config-dir", type=Path, metavar="DIR")
    group.add_argument("--state-dir", type=Path, metavar="DIR")
    group.add_argument("--run-dir", type=Path, metavar="DIR")
    add_host_options(parser)


def add_host_options(parser: argparse.ArgumentParser) -> None:
    """Which agent: another host's over ssh (docs/remote.md), quayctl's alone (not quayd's)."""
    group = parser.add_argument_group("host options")
    group.add_argument(
        "--host",
        action="append",
        metavar="URL|NAME",
        help="the agent of ssh://[USER@]HOST[:PORT][/SOCKET], or of a connection NAME "
        "(quayctl connection); repeat for status of several (default: $QUAY_HOST, the default "
        "connection, else this host's; 'local' is this host's); the global options above are "
        "then the far host's",
    )
    group.add_argument(
        "--all-connections", action="store_true", help="status of every connection's host"
    )


def remote_wanted(arguments: Sequence[str], environ: os._Environ[str] | dict[str, str]) -> bool:
    """Whether another host's agent may be meant: ``--host``, ``--all-connections``,
    ``QUAY_HOST`` or a connections file (``quayd.cli.connections.config_file``, found again
    here so that the local path loads no more modules)."""
    if environ.get("QUAY_HOST") or any(
        a == "--all-connections" or a.partition("=")[0] == "--host" for a in arguments
    ):
        return True
    base = environ.get("XDG_CONFIG_HOME") or ""
    if not base.startswith("/"):
        base = os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.isfile(os.path.join(base, "quay", "connections.toml"))


def build_agent_parser(*, remote: bool = False) -> argparse.ArgumentParser:
    """quayctl's parser with only the commands that talk to the agent, built from stdlib alone
    (with ``remote``, ``connection`` and ``system`` too)."""
    parser = argparse.ArgumentParser(
        prog="quayctl",
        description="Inspect and steer quay, the declarative container host agent.",
    )
    _add_lean_global_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_agent_commands(commands, remote=remote)
    return parser


def add_agent_commands(commands: Any, *, remote: bool = True) -> None:
    """Register the agent's commands (on the full parser and the lean one alike), with
    ``remote`` the commands of quayctl --host (docs/remote.md)."""
    from quayd.cli.control import add_control_commands, add_parser  # noqa: PLC0415

    status = add_parser(
        commands,
        "status",
        "show the agent's units and their states",
        "Show the agent and its units: state, health, image and digest, address, published "
        "ports, restarts, uptime (or the last exit) and why each is where it is; coloured on a "
        "terminal (not with NO_COLOR set). Exit status: 0 every unit (or each NAME) is running "
        "and ready, has exited, or was stopped by an operator; 3 some unit is in another state "
        "or its file is invalid (even while its last good version runs); "
        "4 the agent cannot be reached, or a NAME is not one of its units.",
        "quayctl status",
        "quayctl status web worker",
        "quayctl status --json | jq '.units[] | {name, state}'",
    )
    status.add_argument("names", nargs="*", metavar="NAME", help="only these units")
    status.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default 5")
    status.set_defaults(handler=cmd_status)

    ping = add_parser(
        commands,
        "ping",
        "check that the agent answers",
        "Print the agent's pid if it answers (exit 0); exit 4 if it does not.",
        "quayctl ping",
        "until quayctl ping >/dev/null 2>&1; do sleep 0.2; done",
    )
    ping.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default 5")
    ping.set_defaults(handler=cmd_ping)

    plan = add_parser(
        commands,
        "plan",
        "show what the agent is about to do",
        "Print the actions the agent's last pass planned, one a line with its reason, or "
        '"nothing to do". With DIR, a dry run: what the agent would do if DIR were its config '
        "directory (render into a staging directory, check, then move it into place). Exit "
        "status: 0; 1 DIR cannot be planned; 4 the agent cannot be reached.",
        "quayctl plan",
        "quayctl plan /srv/staging/quay.d",
    )
    plan.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="a config dir to dry-run")
    plan.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    plan.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default 5")
    plan.set_defaults(handler=cmd_plan)
    add_control_commands(commands)
    if not remote:
        return
    from quayd.cli.connections import add_connection_commands  # noqa: PLC0415
    from quayd.cli.system_commands import add_system_commands  # noqa: PLC0415

    add_connection_commands(commands)
    add_system_commands(commands)


def cmd_status(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415
    import time  # noqa: PLC0415

    from quayd.cli import client, status  # noqa: PLC0415

    socket_path = agent_target(args)
    if socket_path is None:
        return EXIT_INVALID
    try:
        payload = client.request(socket_path, "GET", "/v1/status", timeout=args.timeout)
    except (client.AgentUnreachableError, client.AgentError) as error:
        print(f"quayctl status: {error}", file=sys.stderr)
        return status.EXIT_UNREACHABLE
    if not _is_status(payload):
        print("quayctl status: the agent's answer is not a status", file=sys.stderr)
        return status.EXIT_UNREACHABLE
    selected, unknown = status.select(payload, args.names)
    if args.json:
        json.dump(selected, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_for(selected, time.time()))
    for name in unknown:
        print(f"quayctl status: the agent has no unit {name!r}", file=sys.stderr)
    if unknown:
        return status.EXIT_UNREACHABLE
    return status.exit_code(selected["units"])


def format_for(payload: dict[str, Any], now: float) -> str:
    """The table as this terminal shows it: coloured, as wide as the window (100 at least)."""
    import contextlib  # noqa: PLC0415
    import os  # noqa: PLC0415

    from quayd.cli import status  # noqa: PLC0415

    tty = sys.stdout.isatty()
    width = status.TABLE_WIDTH
    if tty:
        with contextlib.suppress(OSError):
            width = max(width, os.get_terminal_size(sys.stdout.fileno()).columns)
    return status.format_table(payload, now, colour=status.use_colour(tty, os.environ), width=width)


def _is_status(payload: Any) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("agent"), dict)
        and isinstance(payload.get("units"), list)
        and all(isinstance(u, dict) for u in payload["units"])
    )


def cmd_ping(args: argparse.Namespace) -> int:
    from quayd.cli import client, status  # noqa: PLC0415

    socket_path = agent_target(args)
    if socket_path is None:
        return EXIT_INVALID
    try:
        result = client.request(socket_path, "GET", "/v1/ping", timeout=args.timeout)
    except (client.AgentUnreachableError, client.AgentError) as error:
        print(f"quayctl ping: {error}", file=sys.stderr)
        return status.EXIT_UNREACHABLE
    pid = result.get("pid", "?") if isinstance(result, dict) else "?"
    print(f"quayd {pid} is up")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from quayd.cli import client, status  # noqa: PLC0415

    socket_path = agent_target(args)
    if socket_path is None:
        return EXIT_INVALID
    try:
        if args.dir is None:
            payload = client.request(socket_path, "GET", "/v1/plan", timeout=args.timeout)
        else:
            body = {"config_dir": os.path.abspath(args.dir)}
            payload = client.request(socket_path, "POST", "/v1/plan", body, timeout=args.timeout)
    except client.AgentError as error:
        print(f"quayctl plan: {error.message}", file=sys.stderr)
        return EXIT_INVALID if error.status in (400, 403) else status.EXIT_UNREACHABLE
    except client.AgentUnreachableError as error:
        print(f"quayctl plan: {error}", file=sys.stderr)
        return status.EXIT_UNREACHABLE
    actions = payload.get("actions") if isinstance(payload, dict) else None
    if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
        print("quayctl plan: the agent's answer is not a plan", file=sys.stderr)
        return status.EXIT_UNREACHABLE
    if args.json:
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for finding in payload.get("findings") or []:
            print(status.format_finding(finding), file=sys.stderr)
        sys.stdout.write(status.format_plan(actions))
    return EXIT_OK


def agent_target(args: argparse.Namespace) -> Path | Connector | None:
    """Where the command's requests go: this host's socket (:func:`agent_socket`), or with
    ``--host`` (``QUAY_HOST``, a default connection) another's; None once an error is shown."""
    if not remote_wanted([], os.environ) and not getattr(args, "host", None):
        return agent_socket(args)
    from quayd.cli.targets import agent_target as chosen_target  # noqa: PLC0415

    return chosen_target(args, lambda: agent_socket(args))


def agent_socket(args: argparse.Namespace) -> Path | None:
    """``RUN_DIR/quayd.sock``, RUN_DIR as every command resolves it; None once an error is shown."""
    from quayd.cli.client import SOCKET_NAME  # noqa: PLC0415

    run_dir = setting_dir(args, "run_dir", DEFAULT_RUN_DIR)
    return None if run_dir is None else run_dir / SOCKET_NAME


def setting_dir(args: argparse.Namespace, key: str, default: Path) -> Path | None:
    """The directory ``key`` (``run_dir``, ``state_dir``) as every command resolves it; None once
    an error is shown.

    Its option (``--run-dir``) wins. Otherwise only ``key`` of the settings file matters, so the
    file is read with tomllib alone; when that does not give an absolute path (bad TOML, a bad
    value, an unreadable or missing --config file), the full loader runs, to report the error
    with file, line and key as every other command does.
    """
    given = getattr(args, key, None)
    if given is not None:
        return Path(given).absolute()
    try:
        with (args.config or DEFAULT_SETTINGS_FILE).open("rb") as file:
            import tomllib  # noqa: PLC0415

            value = tomllib.load(file).get(key, str(default))
    except FileNotFoundError:
        value = str(default) if args.config is None else None
    except (OSError, ValueError):
        value = None
    if isinstance(value, str) and value.startswith("/"):
        return Path(value)
    from quayd.cli.common import report_config_error, settings_from  # noqa: PLC0415
    from quayd.units.findings import QuayConfigError  # noqa: PLC0415

    try:
        return Path(getattr(settings_from(args), key))
    except QuayConfigError as error:
        report_config_error(error)
        return None


# --- validate ------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.checked: list[str] = []
        self.units: dict[str, bool] = {}
        self.findings: list[Finding] = []

    @property
    def valid(self) -> bool:
        return not any(f.is_error for f in self.findings)

    def add_snapshot(self, snapshot: ConfigSnapshot) -> None:
        self.checked.append(str(snapshot.directory))
        self.units.update(dict.fromkeys(snapshot.units, True))
        self.units.update(dict.fromkeys(snapshot.invalid, False))
        self.findings += snapshot.findings


def cmd_validate(args: argparse.Namespace) -> int:
    from quayd.cli.common import print_findings, print_json, settings_from  # noqa: PLC0415
    from quayd.units.findings import QuayConfigError  # noqa: PLC0415

    report = Report()
    if args.as_name is not None and len(args.paths) != 1:
        print("quayctl validate: --as NAME takes exactly one FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = settings_from(args)
    except QuayConfigError as error:
        report.findings += error.findings
        settings = None
    if args.as_name is not None:
        if settings is not None:
            _validate_as(report, args.paths[0], args.as_name, Path(settings.config_dir))
    elif not args.paths:
        if settings is not None:
            _validate_directory(report, Path(settings.config_dir))
    else:
        for path in args.paths:
            if path.is_dir():
                _validate_directory(report, path)
            else:
                _validate_file(report, path)
    if args.json:
        print_json(
            {
                "valid": report.valid,
                "checked": report.checked,
                "units": report.units,
                "findings": [f.to_json() for f in report.findings],
            }
        )
    else:
        print_findings(report.findings)
        errors = sum(1 for f in report.findings if f.is_error)
        summary = f"{len(report.units)} unit(s) checked, " + (
            f"{errors} error(s)" if errors else "all valid"
        )
        print(summary, file=sys.stderr if errors else sys.stdout)
    return EXIT_OK if report.valid else EXIT_INVALID


def _validate_directory(report: Report, directory: Path) -> None:
    from quayd.units.directory import load_directory  # noqa: PLC0415
    from quayd.units.findings import QuayConfigError  # noqa: PLC0415

    try:
        report.add_snapshot(load_directory(directory))
    except QuayConfigError as error:
        report.checked.append(str(directory))
        report.findings += error.findings


def _validate_file(report: Report, path: Path) -> None:
    """A file is a unit, whatever its name; its drop-ins come along when it has any."""
    from quayd.units.directory import (  # noqa: PLC0415
        UNIT_SUFFIX,
        InvalidUnit,
        LoadedUnit,
        UnitFiles,
        dropins_beside,
        load_files,
        name_finding,
        unit_name_for,
    )

    report.checked.append(str(path))
    name = unit_name_for(path)
    loaded = load_files(UnitFiles(name=name, path=path, dropins=dropins_beside(path)))
    report.units[name] = isinstance(loaded, LoadedUnit)
    if isinstance(loaded, InvalidUnit):
        report.findings += loaded.findings
    # A *.toml file's name becomes the unit's name: say so if it cannot be one.
    if path.name.endswith(UNIT_SUFFIX) and not path.name.startswith("."):
        bad_name = name_finding(path)
        if bad_name:
            report.units[name] = False
            report.findings.append(bad_name)


def _validate_as(report: Report, path: Path, name: str, directory: Path) -> None:
    """Check ``path`` as unit ``name`` among the other units of ``directory`` (before deploying)."""
    from quayd.units.directory import (  # noqa: PLC0415
        UNIT_SUFFIX,
        UnitFiles,
        assemble,
        discover,
        dropins_beside,
        load_files,
    )
    from quayd.units.fieldtypes import UNIT_NAME, UNIT_NAME_ACCEPTED  # noqa: PLC0415
    from quayd.units.findings import Finding, QuayConfigError  # noqa: PLC0415

    report.checked.append(str(path))
    if not UNIT_NAME.fullmatch(name):
        report.findings.append(
            Finding(
                file=path, message=f'"{name}" is not a valid unit name', accepted=UNIT_NAME_ACCEPTED
            )
        )
        return
    try:
        others, _ = discover(directory)
    except QuayConfigError:
        others = []  # a directory that does not exist yet holds no other unit
    dropins = dropins_beside(directory / f"{name}{UNIT_SUFFIX}")
    loaded = [load_files(f) for f in others if f.name != name]
    loaded.append(load_files(UnitFiles(name=name, path=path, dropins=dropins)))
    snapshot = assemble(directory, loaded)
    report.units[name] = name in snapshot.units
    if name in snapshot.invalid:
        report.findings += snapshot.invalid[name].findings


# --- render --------------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    from quayd.cli.common import print_findings, settings_from  # noqa: PLC0415
    from quayd.units.directory import (  # noqa: PLC0415
        UNIT_SUFFIX,
        InvalidUnit,
        UnitFiles,
        dropins_beside,
        load_files,
        unit_name_for,
    )

    settings: Settings = settings_from(args)
    path = Path(args.unit)
    # As systemctl: a path names a file; a bare name is a unit of the config directory.
    if "/" not in args.unit and not (args.unit.endswith(UNIT_SUFFIX) and path.is_file()):
        path = Path(settings.config_dir) / f"{args.unit.removesuffix(UNIT_SUFFIX)}{UNIT_SUFFIX}"
    if not path.is_file():
        print(f"quayctl render: there is no unit file {path}", file=sys.stderr)
        return EXIT_INVALID
    name = unit_name_for(path)
    loaded = load_files(UnitFiles(name=name, path=path, dropins=dropins_beside(path)))
    if isinstance(loaded, InvalidUnit):
        print_findings(loaded.findings)
        return EXIT_INVALID
    sys.stdout.write(render_unit(loaded))
    return EXIT_OK


def render_unit(loaded: LoadedUnit) -> str:
    import tomli_w  # noqa: PLC0415

    sources = ", ".join(str(p) for p in (loaded.path, *loaded.dropins))
    header = (
        f"# Effective unit {loaded.name!r}: {sources}\n"
        "# Drop-ins merged and defaults filled in; keys left out below are unset.\n"
    )
    document = loaded.unit.model_dump(mode="json", exclude_none=True)
    return header + tomli_w.dumps(document)


if __name__ == "__main__":
    sys.exit(main())
