"""The config directory: which files are units, their drop-ins, and rules across units.

``/etc/quay.d/NAME.toml`` is unit NAME; ``NAME.toml.d/*.toml`` are its drop-ins, merged in lexical
order. Files whose names start with ``.`` are ignored silently (editor swap files, Ansible's temp
files); other files that do not end in ``.toml`` are ignored with a warning, so a ``web.toml~``
backup never runs and never goes unnoticed.

:func:`discover` and :func:`load_directory` read the disk; :func:`assemble` is pure.

The agent loads its directory on every pass (hundreds while 100 units start); with a
:class:`LoadCache` a unit whose files hold the same bytes as at the last load is not parsed and
validated again. The files are read each time: their bytes, not their metadata, say whether they
changed (an in-place rewrite of the same size within the filesystem's timestamp granularity
keeps size, inode, mtime and ctime, and a change must never be missed). The rules across units
still run over the whole set each time (:func:`assemble`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from quayd.units.fieldtypes import UNIT_NAME, UNIT_NAME_ACCEPTED
from quayd.units.findings import Finding, QuayConfigError, Severity
from quayd.units.loader import (
    SourceFile,
    SourceMap,
    decode_source,
    load_unit,
    problem_findings,
    read_bytes,
    sorted_findings,
)
from quayd.units.model import Unit
from quayd.units.rules import check_together

UNIT_SUFFIX = ".toml"
DROPIN_SUFFIX = ".toml.d"


@dataclass(frozen=True)
class UnitFiles:
    name: str
    path: Path
    dropins: tuple[Path, ...] = ()


@dataclass(frozen=True)
class LoadedUnit:
    name: str
    path: Path
    dropins: tuple[Path, ...]
    unit: Unit
    source_map: SourceMap


@dataclass(frozen=True)
class InvalidUnit:
    name: str
    path: Path
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class ConfigSnapshot:
    """The config directory at one moment: valid units, invalid ones with why, and warnings."""

    directory: Path
    units: Mapping[str, LoadedUnit]
    invalid: Mapping[str, InvalidUnit]
    warnings: tuple[Finding, ...] = ()

    @property
    def findings(self) -> list[Finding]:
        found = [f for name in sorted(self.invalid) for f in self.invalid[name].findings]
        return found + list(self.warnings)

    @property
    def valid(self) -> bool:
        return not self.invalid


class ConfigDirError(QuayConfigError):
    """The config directory itself cannot be read."""


def unit_name_for(path: Path) -> str:
    return path.name.removesuffix(UNIT_SUFFIX)


def name_finding(path: Path) -> Finding | None:
    """A unit's name comes from its file name, which must be a valid unit name."""
    if UNIT_NAME.fullmatch(unit_name_for(path)):
        return None
    return Finding(
        file=path,
        message=f'"{unit_name_for(path)}" is not a valid unit name (it comes from the file name)',
        accepted=UNIT_NAME_ACCEPTED,
    )


def discover(directory: Path) -> tuple[list[UnitFiles], list[Finding]]:
    """The unit files of a config directory, their drop-ins, and warnings about ignored entries."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except FileNotFoundError:
        raise ConfigDirError(
            [Finding(file=directory, message="the config directory does not exist")]
        ) from None
    except OSError as error:
        raise ConfigDirError(
            [Finding(file=directory, message=f"cannot read the config directory: {error.strerror}")]
        ) from None
    warnings: list[Finding] = []
    mains: dict[str, Path] = {}
    dropin_dirs: dict[str, Path] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = directory / entry.name
        if entry.name.endswith(UNIT_SUFFIX) and entry.is_file():
            mains[unit_name_for(path)] = path
        elif entry.name.endswith(DROPIN_SUFFIX) and entry.is_dir():
            dropin_dirs[entry.name.removesuffix(DROPIN_SUFFIX)] = path
        else:
            warnings.append(_ignored(path, is_dir=entry.is_dir()))
    units = []
    for name, path in mains.items():
        dropins, ignored = _dropins(dropin_dirs.pop(name, None))
        warnings += ignored
        units.append(UnitFiles(name=name, path=path, dropins=dropins))
    for name, path in dropin_dirs.items():
        warnings.append(
            Finding(
                file=path,
                message=f"drop-ins for a unit that does not exist: there is no {name}{UNIT_SUFFIX}",
                severity=Severity.WARNING,
            )
        )
    return units, warnings


def dropins_beside(path: Path) -> tuple[Path, ...]:
    """The drop-ins of the unit file ``path`` (``NAME.toml.d/*.toml``), in the order they apply
    (for one file named on a command line; :func:`discover` finds them for a directory)."""
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


def _dropins(directory: Path | None) -> tuple[tuple[Path, ...], list[Finding]]:
    if directory is None:
        return (), []
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as error:
        return (), [
            Finding(
                file=directory,
                message=f"cannot read the drop-in directory: {error.strerror}",
                severity=Severity.WARNING,
            )
        ]
    dropins, warnings = [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = directory / entry.name
        if entry.name.endswith(UNIT_SUFFIX) and entry.is_file():
            dropins.append(path)
        else:
            warnings.append(_ignored(path, is_dir=entry.is_dir()))
    return tuple(dropins), warnings


def _ignored(path: Path, *, is_dir: bool) -> Finding:
    expected = f"*{UNIT_SUFFIX} files and *{DROPIN_SUFFIX} directories"
    return Finding(
        file=path,
        message=f"ignored: only {expected} are read"
        if is_dir
        else f"ignored: not a *{UNIT_SUFFIX} file",
        severity=Severity.WARNING,
    )


def load_files(
    files: UnitFiles, contents: Sequence[bytes] | None = None
) -> LoadedUnit | InvalidUnit:
    """Read and validate one unit's content with its drop-ins (or validate ``contents``, their
    bytes already read, in the same order).

    Per-unit rules only: the name (which comes from the file name) and the rules across units are
    the directory's business (:func:`load_directory`, :func:`assemble`).
    """
    findings: list[Finding] = []
    sources: list[SourceFile] = []
    for index, path in enumerate((files.path, *files.dropins)):
        try:
            data = read_bytes(path) if contents is None else contents[index]
            sources.append(decode_source(path, data))
        except QuayConfigError as error:
            findings += error.findings
    if not findings:
        try:
            unit, source_map = load_unit(sources[0], sources[1:])
        except QuayConfigError as error:
            findings += error.findings
        else:
            return LoadedUnit(files.name, files.path, files.dropins, unit, source_map)
    return InvalidUnit(files.name, files.path, tuple(findings))


def assemble(
    directory: Path, loaded: Sequence[LoadedUnit | InvalidUnit], warnings: Sequence[Finding] = ()
) -> ConfigSnapshot:
    """Apply the rules across units; a unit that breaks one becomes invalid, with the finding."""
    valid = {u.name: u for u in loaded if isinstance(u, LoadedUnit)}
    invalid = {u.name: u for u in loaded if isinstance(u, InvalidUnit)}
    problems = check_together({n: u.unit for n, u in valid.items()}, set(valid) | set(invalid))
    for name, found in problems.items():
        unit = valid.pop(name)
        document = unit.unit.model_dump(mode="json")
        findings = problem_findings(found, document, unit.source_map)
        files = [unit.path, *unit.dropins]
        invalid[name] = InvalidUnit(name, unit.path, tuple(sorted_findings(findings, files)))
    return ConfigSnapshot(
        directory=directory,
        units=dict(sorted(valid.items())),
        invalid=dict(sorted(invalid.items())),
        warnings=tuple(warnings),
    )


def load_directory(directory: Path, cache: LoadCache | None = None) -> ConfigSnapshot:
    """Read the whole config directory; :class:`ConfigDirError` only if it cannot be listed.

    With ``cache`` (kept by the caller across loads of the same directory) a unit whose files
    did not change is not read again: the result is the same as without it.
    """
    files, warnings = discover(directory)
    if cache is None:
        loaded = [load_files(f) for f in files]
    else:
        loaded = [cache.load(f) for f in files]
        cache.keep({f.name for f in files})
    return assemble(directory, [_named(unit) for unit in loaded], warnings)


class LoadCache:
    """Per unit: its files' paths and bytes at the last load, and what :func:`load_files` made
    of them. Keyed on content, so whatever the sequence of writes, the next load after a change
    sees it (a half-written file read mid-write is parsed again once its bytes change).

    Safe to share between threads (a pass and a dry run may load at once).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[_Contents, LoadedUnit | InvalidUnit]] = {}
        self._lock = threading.Lock()

    def load(self, files: UnitFiles) -> LoadedUnit | InvalidUnit:
        """:func:`load_files`, or its earlier result when every file holds the same bytes."""
        contents = _contents(files)
        if contents is None:
            return load_files(files)  # a file cannot be read: load_files says why
        with self._lock:
            entry = self._entries.get(files.name)
        if entry is not None and entry[0] == contents:
            return entry[1]
        result = load_files(files, [data for _, data in contents])
        with self._lock:
            self._entries[files.name] = (contents, result)
        return result

    def keep(self, names: set[str]) -> None:
        """Forget the units not in ``names`` (their files are gone)."""
        with self._lock:
            for name in set(self._entries) - names:
                del self._entries[name]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


_Contents = tuple[tuple[str, bytes], ...]
"""A unit's files, in order: each path and its bytes."""


def _contents(files: UnitFiles) -> _Contents | None:
    """The bytes of a unit's files; None when one cannot be read (then no caching)."""
    found = []
    for path in (files.path, *files.dropins):
        try:
            found.append((str(path), read_bytes(path)))
        except QuayConfigError:
            return None
    return tuple(found)


def _named(loaded: LoadedUnit | InvalidUnit) -> LoadedUnit | InvalidUnit:
    bad_name = name_finding(loaded.path)
    if bad_name is None:
        return loaded
    findings = loaded.findings if isinstance(loaded, InvalidUnit) else ()
    return InvalidUnit(loaded.name, loaded.path, (bad_name, *findings))
