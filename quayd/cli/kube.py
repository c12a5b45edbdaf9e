"""``quayctl export kube`` and ``quayctl import kube``: units to Kubernetes manifests and back.

The mapping is :mod:`quayd.kube` (pure); this module reads unit files and manifests, writes YAML
or unit files, and prints what did not map. Neither command needs the agent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quayd.kube.export import KINDS

if TYPE_CHECKING:
    from quayd.kube.export import ExportOptions
    from quayd.units.directory import LoadedUnit
    from quayd.units.settings import Settings

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def add_kube_commands(commands: Any) -> None:
    export = commands.add_parser(
        "export", help="write units as other formats (kube)", description="Write units out."
    )
    export_formats = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    kube = export_formats.add_parser(
        "kube",
        help="Kubernetes manifests (YAML) of units",
        description=(
            "Print units as Kubernetes manifests. Every unit key either maps (docs/units.md, "
            "'Moving to Kubernetes') or is named in a trailing comment with the reason it does "
            "not."
        ),
    )
    kube.add_argument(
        "units", nargs="*", metavar="NAME|FILE", help="units of the config directory, or files"
    )
    kube.add_argument("--all", action="store_true", help="every valid unit of the config directory")
    kube.add_argument("--kind", choices=KINDS, default="pod", help="the workload (default pod)")
    kube.add_argument(
        "--service", action="store_true", help="a Service for the published ports, too"
    )
    kube.add_argument(
        "--env-from",
        choices=("configmap", "secret"),
        default="configmap",
        help="env files as ConfigMap (default) or Secret references",
    )
    kube.add_argument(
        "--volumes",
        choices=("pvc", "hostpath"),
        default="pvc",
        help="named volumes as PersistentVolumeClaims (default) or hostPaths of the agent's copy",
    )
    kube.add_argument(
        "--digests",
        action="store_true",
        help="pin each image by the digest of the image in the store, where it is stored",
    )
    kube.set_defaults(handler=cmd_export_kube)

    imports = commands.add_parser(
        "import", help="write unit files from other formats (kube)", description="Read units in."
    )
    import_formats = imports.add_subparsers(dest="format", metavar="FORMAT", required=True)
    kube_in = import_formats.add_parser(
        "kube",
        help="unit files from Kubernetes Pods, Deployments and DaemonSets",
        description=(
            "Write one unit per Pod, Deployment or DaemonSet (its pod template). A key with no "
            "quay equivalent is an error naming its YAML path; with --lossy, a warning."
        ),
    )
    kube_in.add_argument("files", nargs="+", type=Path, metavar="FILE", help="YAML; - for stdin")
    kube_in.add_argument(
        "--into", type=Path, metavar="DIR", help="write DIR/NAME.toml (default: stdout)"
    )
    kube_in.add_argument(
        "--lossy", action="store_true", help="leave out what has no equivalent, with a warning"
    )
    kube_in.set_defaults(handler=cmd_import_kube)


# --- export --------------------------------------------------------------------------------------


def cmd_export_kube(args: argparse.Namespace) -> int:
    from quayd.cli.common import print_findings, settings_from  # noqa: PLC0415
    from quayd.kube.export import ExportOptions  # noqa: PLC0415

    if not args.units and not args.all:
        print("quayctl export kube: name units, or --all", file=sys.stderr)
        return EXIT_USAGE
    settings = settings_from(args)
    loaded, findings = _units(args, settings)
    if findings:
        print_findings(findings)
        return EXIT_INVALID
    options = ExportOptions(
        kind=args.kind,
        service=args.service,
        env_from=args.env_from,
        volumes=args.volumes,
        volumes_dir=str(Path(settings.state_dir) / "volumes"),
    )
    return _write_export(loaded, options, settings if args.digests else None)


def _units(args: argparse.Namespace, settings: Settings) -> tuple[list[LoadedUnit], list[Any]]:
    from quayd.units.directory import (  # noqa: PLC0415
        UNIT_SUFFIX,
        InvalidUnit,
        UnitFiles,
        dropins_beside,
        load_directory,
        load_files,
        unit_name_for,
    )
    from quayd.units.findings import Finding  # noqa: PLC0415

    config_dir = Path(settings.config_dir)
    loaded: list[LoadedUnit] = []
    findings: list[Finding] = []
    if args.all:
        snapshot = load_directory(config_dir)
        loaded += [snapshot.units[name] for name in sorted(snapshot.units)]
        findings += [f for f in snapshot.findings if f.is_error]
    for given in args.units:
        path = Path(given)
        # As render: a path names a file; a bare name is a unit of the config directory.
        if "/" not in given and not (given.endswith(UNIT_SUFFIX) and path.is_file()):
            path = config_dir / f"{given.removesuffix(UNIT_SUFFIX)}{UNIT_SUFFIX}"
        if not path.is_file():
            findings.append(Finding(file=path, message="there is no such unit file"))
            continue
        files = UnitFiles(name=unit_name_for(path), path=path, dropins=dropins_beside(path))
        result = load_files(files)
        if isinstance(result, InvalidUnit):
            findings += result.findings
        else:
            loaded.append(result)
    return loaded, findings


def _write_export(
    loaded: list[LoadedUnit], options: ExportOptions, settings: Settings | None
) -> int:
    from quayd.kube.export import KubeExportError, export_unit  # noqa: PLC0415
    from quayd.kube.yamltext import dump_documents  # noqa: PLC0415

    written: set[tuple[str, str]] = set()
    chunks = []
    for unit in loaded:
        image = _pinned(unit.unit.container.image, settings) if settings else None
        try:
            exported = export_unit(unit.name, unit.unit, options, image)
        except KubeExportError as error:
            print(f"quayctl export kube: {error}", file=sys.stderr)
            return EXIT_INVALID
        documents = []
        for document in exported.documents:
            key = (document["kind"], document["metadata"]["name"])
            if key not in written:  # a volume two units share is claimed once
                written.add(key)
                documents.append(document)
        sources = ", ".join(str(p) for p in (unit.path, *unit.dropins))
        notes = [f"quayctl export kube: unit {unit.name} ({sources})"]
        if image is None and settings is not None:
            notes.append(
                f"container.image: {unit.unit.container.image} is not in the store: "
                "not pinned by digest"
            )
        notes += [str(n) for n in exported.notes]
        chunks.append(dump_documents(documents, notes))
    sys.stdout.write("".join(chunks))
    return EXIT_OK


def _pinned(reference: str, settings: Settings) -> str | None:
    """``reference@sha256:…`` for the image the store holds (the manifest the agent runs)."""
    from quayd.images.store import Store  # noqa: PLC0415
    from quayd.units.reference import parse_reference  # noqa: PLC0415

    parsed = parse_reference(reference)
    if parsed.digest is not None:
        return reference
    if not (Path(settings.state_dir) / "images").is_dir():
        return None  # no store: opening one would create it
    record = Store.for_settings(settings).get(reference)
    return None if record is None else f"{reference}@{record.manifest_digest}"


# --- import --------------------------------------------------------------------------------------


def cmd_import_kube(args: argparse.Namespace) -> int:
    from quayd.kube.importer import ImportedUnit, import_manifests  # noqa: PLC0415
    from quayd.kube.reader import KubeImportError  # noqa: PLC0415
    from quayd.kube.yamltext import ManifestSyntaxError, load_documents  # noqa: PLC0415

    imported: list[ImportedUnit] = []
    failed = False
    for path in args.files:
        origin = "<stdin>" if str(path) == "-" else str(path)
        try:
            text = sys.stdin.read() if origin == "<stdin>" else path.read_text(encoding="utf-8")
            units, skipped = import_manifests(
                load_documents(text, origin), origin, lossy=args.lossy
            )
        except (OSError, UnicodeDecodeError) as error:
            print(f"{origin}: cannot read the file: {error}", file=sys.stderr)
            failed = True
            continue
        except (ManifestSyntaxError, KubeImportError) as error:
            print(error, file=sys.stderr)
            failed = True
            continue
        for problem in skipped:
            print(f"{origin}: {problem}", file=sys.stderr)
        for unit in units:
            for warning in unit.warnings:
                print(f"{origin}: warning: {warning}", file=sys.stderr)
        imported += units
    names = [u.name for u in imported]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        print(
            f"quayctl import kube: more than one unit named {', '.join(duplicates)}",
            file=sys.stderr,
        )
        failed = True
    if failed:
        return EXIT_INVALID
    if args.into is None:
        sys.stdout.write("\n".join(u.text for u in imported))
        return EXIT_OK
    return _write_units(imported, args.into)


def _write_units(imported: list[Any], directory: Path) -> int:
    from quayd.atomicfile import replace_file  # noqa: PLC0415

    targets = [directory / f"{u.name}.toml" for u in imported]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        print(
            f"quayctl import kube: {', '.join(existing)} exists: move it away first "
            "(import never replaces a unit file)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    for unit, target in zip(imported, targets, strict=True):
        replace_file(target, unit.text.encode())
        print(target)
    return EXIT_OK
