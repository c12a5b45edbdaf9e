"""quayctl: the operator's tool. ``validate`` and ``render`` work without the agent.

Exit codes: 0 success, 1 invalid configuration, 2 wrong usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from quayd.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    add_global_options,
    print_findings,
    print_json,
    report_config_error,
    settings_from,
)
from quayd.cli.image_commands import add_image_commands
from quayd.units.directory import (
    UNIT_SUFFIX,
    ConfigSnapshot,
    InvalidUnit,
    LoadedUnit,
    UnitFiles,
    assemble,
    discover,
    load_directory,
    load_files,
    name_finding,
    unit_name_for,
)
from quayd.units.fieldtypes import UNIT_NAME, UNIT_NAME_ACCEPTED
from quayd.units.findings import Finding, QuayConfigError
from quayd.units.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quayctl",
        description="Inspect and steer quay, the declarative container host agent.",
    )
    add_global_options(parser)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except QuayConfigError as error:
        return report_config_error(error)
    except BrokenPipeError:
        return EXIT_OK  # `quayctl render web | head` is fine
    return code


# --- validate ------------------------------------------------------------------------------------


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    units: dict[str, bool] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not any(f.is_error for f in self.findings)

    def add_snapshot(self, snapshot: ConfigSnapshot) -> None:
        self.checked.append(str(snapshot.directory))
        self.units.update(dict.fromkeys(snapshot.units, True))
        self.units.update(dict.fromkeys(snapshot.invalid, False))
        self.findings += snapshot.findings


def cmd_validate(args: argparse.Namespace) -> int:
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
    try:
        report.add_snapshot(load_directory(directory))
    except QuayConfigError as error:
        report.checked.append(str(directory))
        report.findings += error.findings


def _validate_file(report: Report, path: Path) -> None:
    """A file is a unit, whatever its name; its drop-ins come along when it has any."""
    report.checked.append(str(path))
    name = unit_name_for(path)
    loaded = load_files(UnitFiles(name=name, path=path, dropins=_dropins_beside(path)))
    report.units[name] = isinstance(loaded, LoadedUnit)
    if isinstance(loaded, InvalidUnit):
        report.findings += loaded.findings
    # A *.toml file's name becomes the unit's name: say so if it cannot be one.
    if path.name.endswith(UNIT_SUFFIX) and not path.name.startswith("."):
        bad_name = name_finding(path)
        if bad_name:
            report.units[name] = False
            report.findings.append(bad_name)


def _dropins_beside(path: Path) -> tuple[Path, ...]:
    """The drop-ins of unit file ``path`` (``NAME.toml.d/*.toml``), in the order they apply."""
    dropin_dir = path.with_name(path.name + ".d")
    if not path.name.endswith(UNIT_SUFFIX) or not dropin_dir.is_dir():
        return ()
    return tuple(
        sorted(
            p
            for p in dropin_dir.iterdir()
            if p.name.endswith(UNIT_SUFFIX) and not p.name.startswith(".") and p.is_file()
        )
    )


def _validate_as(report: Report, path: Path, name: str, directory: Path) -> None:
    """Check ``path`` as unit ``name`` among the other units of ``directory`` (before deploying)."""
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
    dropins = _dropins_beside(directory / f"{name}{UNIT_SUFFIX}")
    loaded = [load_files(f) for f in others if f.name != name]
    loaded.append(load_files(UnitFiles(name=name, path=path, dropins=dropins)))
    snapshot = assemble(directory, loaded)
    report.units[name] = name in snapshot.units
    if name in snapshot.invalid:
        report.findings += snapshot.invalid[name].findings


# --- render --------------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    settings: Settings = settings_from(args)
    path = Path(args.unit)
    # As systemctl: a path names a file; a bare name is a unit of the config directory.
    if "/" not in args.unit and not (args.unit.endswith(UNIT_SUFFIX) and path.is_file()):
        path = Path(settings.config_dir) / f"{args.unit.removesuffix(UNIT_SUFFIX)}{UNIT_SUFFIX}"
    if not path.is_file():
        print(f"quayctl render: there is no unit file {path}", file=sys.stderr)
        return EXIT_INVALID
    name = unit_name_for(path)
    loaded = load_files(UnitFiles(name=name, path=path, dropins=_dropins_beside(path)))
    if isinstance(loaded, InvalidUnit):
        print_findings(loaded.findings)
        return EXIT_INVALID
    sys.stdout.write(render_unit(loaded))
    return EXIT_OK


def render_unit(loaded: LoadedUnit) -> str:
    sources = ", ".join(str(p) for p in (loaded.path, *loaded.dropins))
    header = (
        f"# Effective unit {loaded.name!r}: {sources}\n"
        "# Drop-ins merged and defaults filled in; keys left out below are unset.\n"
    )
    document = loaded.unit.model_dump(mode="json", exclude_none=True)
    return header + tomli_w.dumps(document)


if __name__ == "__main__":
    sys.exit(main())
