"""What ``quayctl image …`` does in this process: pull, ls, rm, prune, verify, load, on the
store directly (``<state_dir>/images``; its flocks keep this and the agent's pulls apart).

``image pull`` goes through the running agent when there is one (``quayd.cli.image_remote``);
this module's pull is for ``--local`` and a host where no agent runs. Imported only when it is
needed (see ``image_commands``): httpx and the store are not needed by ``validate`` or ``render``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from quayd.cli.common import EXIT_INVALID, EXIT_OK, print_json, settings_from
from quayd.cli.progress import ProgressDisplay
from quayd.images.archive import load_archive
from quayd.images.errors import ImageError
from quayd.images.model import Platform
from quayd.images.pull import pull, repair
from quayd.images.registry import RegistryClient
from quayd.images.store import Store, record_to_json
from quayd.images.unpack import UnpackLimits
from quayd.images.versions import by_digest_reference
from quayd.reconcile.records import UPDATES, read_update_record
from quayd.units.directory import ConfigDirError, LoadedUnit, UnitFiles, discover, load_files
from quayd.units.findings import QuayConfigError
from quayd.units.loader import parse_layers, read_source
from quayd.units.reference import ImageReferenceError, parse_reference
from quayd.units.settings import Settings


def _store(settings: Settings) -> Store:
    return Store.for_settings(settings)


def _limits(settings: Settings) -> UnpackLimits:
    return UnpackLimits(
        max_uncompressed_bytes=settings.images.max_layer_size,
        max_entries=settings.images.max_layer_entries,
    )


def _error(message: str) -> int:
    print(f"quayctl: {message}", file=sys.stderr)
    return EXIT_INVALID


# --- pull ----------------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        platform = Platform.parse(args.platform) if args.platform else None
        reference = str(parse_reference(args.reference))
    except (ValueError, ImageReferenceError) as error:
        return _error(str(error))
    display = None if args.quiet or not sys.stderr.isatty() else ProgressDisplay(reference)
    try:
        with RegistryClient(settings.registries) as client:
            record = pull(
                reference,
                store=_store(settings),
                client=client,
                platform=platform,
                progress=display,
                max_concurrent=settings.images.max_concurrent_downloads,
                min_free_bytes=settings.images.min_free_disk,
                limits=_limits(settings),
            )
    except ImageError as error:
        if display:
            display.finish()
        return _error(f"pulling {reference}: {error}")
    if display:
        display.finish()
    print(f"{record.reference} {record.manifest_digest} {record.platform}")
    return EXIT_OK


def cmd_load(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        platform = Platform.parse(args.platform) if args.platform else None
        records = load_archive(
            args.path,
            store=_store(settings),
            reference=args.reference,
            platform=platform,
            limits=_limits(settings),
        )
    except (ValueError, ImageError) as error:
        return _error(f"loading {args.path}: {error}")
    for record in records:
        print(f"loaded {record.reference} {record.manifest_digest} {record.platform}")
    return EXIT_OK


# --- ls, rm, prune, verify -----------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    images = _store(settings_from(args)).images()
    if args.json:
        print_json([record_to_json(record) for record in images.values()])
        return EXIT_OK
    rows = [("REFERENCE", "DIGEST", "PLATFORM", "SIZE", "STORED")]
    for record in sorted(images.values(), key=lambda r: r.reference):
        size = sum(layer.size for layer in record.layers)
        rows.append(
            (
                record.reference,
                record.manifest_digest.removeprefix("sha256:")[:12],
                str(record.platform),
                f"{size / 1e6:.1f}MB",
                record.created,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    store = _store(settings_from(args))
    code = EXIT_OK
    for text in args.references:
        try:
            reference = str(parse_reference(text))
        except ImageReferenceError as error:
            code = _error(f"{text}: {error}")
            continue
        if store.remove(reference):
            print(f"removed {reference}")
        else:
            code = _error(f"no image {reference} in the store")
    report = store.prune()
    _print_freed(report.freed_bytes)
    return code


def cmd_prune(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    keep = None
    if args.unused:
        references = _unit_references(Path(settings.config_dir))
        keep = references + update_references(Path(settings.state_dir), references)
    report = _store(settings).prune(keep=keep)
    for reference in report.removed_images:
        print(f"removed {reference}")
    print(
        f"removed {len(report.removed_blobs)} blob(s), {len(report.removed_layers)} layer(s), "
        f"{len(report.removed_partials)} partial download(s)"
    )
    _print_freed(report.freed_bytes)
    return EXIT_OK


def _unit_references(config_dir: Path) -> list[str]:
    """The images the unit files name, invalid units included (their last good version may run)."""
    try:
        files, _ = discover(config_dir)
    except ConfigDirError:
        return []
    references = []
    for unit_files in files:
        loaded = load_files(unit_files)
        if isinstance(loaded, LoadedUnit):
            references.append(str(loaded.unit.container.image_reference))
        else:
            references += _image_named_by(unit_files)
    return references


def update_references(state_dir: Path, references: list[str]) -> list[str]:
    """``REPOSITORY@DIGEST`` of each digest an update record needs (the current one, the one
    being rolled out), in the repositories of ``references``: a version pulled by digest for an
    update or a rollback is kept as long as the tag's own versions are."""
    records = state_dir / UPDATES
    digests = set()
    if records.is_dir():
        for path in records.glob("*.json"):
            record = read_update_record(state_dir, path.stem)
            digests |= {d for d in (record.current, record.target) if d is not None}
    return [by_digest_reference(ref, digest) for ref in references for digest in sorted(digests)]


def _image_named_by(files: UnitFiles) -> list[str]:
    """The image an invalid unit names, if that much of it can be read."""
    try:
        document, _ = parse_layers([read_source(p) for p in (files.path, *files.dropins)])
        return [str(parse_reference(document["container"]["image"]))]
    except (QuayConfigError, ImageReferenceError, KeyError, TypeError):
        return []


def _print_freed(freed: int) -> None:
    print(f"freed {freed / 1e6:.1f} MB")


def cmd_verify(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    store = _store(settings)
    report = store.verify()
    print(f"checked {report.checked_blobs} blob(s)")
    for digest in report.bad_blobs:
        print(f"damaged blob removed: {digest}")
    for chain in report.bad_layers:
        print(f"incomplete layer removed: {chain}")
    if report.ok:
        print("all stored content verifies")
        return EXIT_OK
    _list("damaged image", report.damaged_images)
    if not args.repair:
        print("run `quayctl image verify --repair` to re-fetch what is missing", file=sys.stderr)
        return EXIT_INVALID
    with RegistryClient(settings.registries) as client:
        result = repair(store, client, report=report, limits=_limits(settings))
    _list("repaired", result.repaired)
    for reference, why in result.failed.items():
        print(f"could not repair {reference}: {why}", file=sys.stderr)
    return EXIT_OK if not result.failed else EXIT_INVALID


def _list(label: str, items: Iterable[str]) -> None:
    for item in items:
        print(f"{label}: {item}")
