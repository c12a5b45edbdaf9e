"""From TOML text to a validated model: parse, merge drop-ins, validate, check rules.

Everything here is pure except :func:`read_source` and :func:`read_bytes`: it works on
:class:`SourceFile` values (a path and its text), so tests feed it plain strings. Every problem
found in a file is reported at once, each naming the file that holds the offending key: the unit
file or the drop-in.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from quayd.units.findings import Finding, QuayConfigError
from quayd.units.model import Unit
from quayd.units.rules import Problem, check_tables, check_unit
from quayd.units.tomlpos import KeyPath, key_lines
from quayd.units.validation import dotted, findings_from, toml_text

MAX_FILE_SIZE = 1024 * 1024
"""No unit or settings file needs more; a bigger one is a mistake (or an attack on the parser)."""

ModelT = TypeVar("ModelT", bound=BaseModel)
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


@dataclass(frozen=True)
class SourceFile:
    path: Path
    text: str


def read_source(path: Path) -> SourceFile:
    """Read a unit or settings file; refuse what cannot be a sane TOML file."""
    return decode_source(path, read_bytes(path))


def read_bytes(path: Path) -> bytes:
    """A file's bytes, one more than :data:`MAX_FILE_SIZE` at most (so that too big shows).

    Read in reads of its size (plus one, to see the end): the agent reads every unit file on
    every pass, and a buffered ``read(MAX_FILE_SIZE + 1)`` allocates a megabyte each time
    (40 us a file, 4 ms a pass over 100 units)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            total = 0
            want = os.fstat(fd).st_size + 1
            while total <= MAX_FILE_SIZE:
                chunk = os.read(fd, min(max(want - total, 4096), MAX_FILE_SIZE + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    except OSError as error:
        raise QuayConfigError(
            [Finding(file=path, message=f"cannot read the file: {error.strerror or error}")]
        ) from None


def decode_source(path: Path, data: bytes) -> SourceFile:
    """What :func:`read_bytes` read as a source; refuse what cannot be a sane TOML file."""
    if len(data) > MAX_FILE_SIZE:
        raise QuayConfigError(
            [Finding(file=path, message=f"the file is larger than {MAX_FILE_SIZE // 1024} KiB")]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise QuayConfigError(
            [Finding(file=path, line=line, message="the file is not UTF-8 text")]
        ) from None
    return SourceFile(path=path, text=text)


def parse_toml(source: SourceFile) -> dict[str, Any]:
    """Parse TOML; a syntax error becomes a finding with file, line and column."""
    try:
        return tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        line = column = None
        match = _TOML_POSITION.search(message)
        if match:
            line, column = int(match.group(1)), int(match.group(2))
            message = message[: match.start()]
        elif message.endswith("(at end of document)"):
            line = source.text.count("\n") + 1
            message = message.removesuffix("(at end of document)").rstrip()
        raise QuayConfigError(
            [
                Finding(
                    file=source.path,
                    line=line,
                    column=column,
                    message=f"TOML syntax error: {message[:1].lower()}{message[1:]}",
                )
            ]
        ) from None
    except RecursionError:
        raise QuayConfigError(
            [Finding(file=source.path, message="TOML syntax error: values nested too deeply")]
        ) from None


@dataclass
class SourceMap:
    """Which file, and which line, each key of a merged document came from."""

    main: Path
    origins: dict[KeyPath, tuple[Path, int]] = field(default_factory=dict)

    def add(self, path: Path, data: dict[str, Any], lines: dict[KeyPath, int]) -> None:
        for key, line in lines.items():
            if isinstance(_value_at(data, key), dict):
                # A table header in a drop-in adds to the table; the table stays where it was.
                self.origins.setdefault(key, (path, line))
                continue
            # A scalar or an array replaces what was there, children included.
            for old in [k for k in self.origins if len(k) > len(key) and k[: len(key)] == key]:
                del self.origins[old]
            self.origins[key] = (path, line)

    def locate(self, loc: KeyPath) -> tuple[Path, int | None]:
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.origins:
                return self.origins[loc[:end]]
        return self.main, None


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Tables merge deeply; scalars and arrays (arrays of tables too) replace."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_layers(sources: Sequence[SourceFile]) -> tuple[dict[str, Any], SourceMap]:
    """Parse a file and its drop-ins (in the order given) into one document and its source map.

    Syntax errors of every file are reported together.
    """
    source_map = SourceMap(main=sources[0].path)
    document: dict[str, Any] = {}
    findings: list[Finding] = []
    for source in sources:
        try:
            data = parse_toml(source)
        except QuayConfigError as error:
            findings += error.findings
            continue
        document = merge(document, data)
        source_map.add(source.path, data, key_lines(source.text))
    if findings:
        raise QuayConfigError(findings)
    return document, source_map


def validate(model: type[ModelT], document: dict[str, Any], source_map: SourceMap) -> ModelT:
    """Validate a merged document against ``model``; every error is a finding."""
    try:
        return model.model_validate(document)
    except ValidationError as error:
        findings = findings_from(error, model, source_map.locate)
        raise QuayConfigError(sorted_findings(findings, [source_map.main])) from None
    except RecursionError:
        raise QuayConfigError(
            [Finding(file=source_map.main, message="values nested too deeply")]
        ) from None


def problem_findings(
    problems: Sequence[Problem], document: dict[str, Any], source_map: SourceMap
) -> list[Finding]:
    findings = []
    for problem in problems:
        file, line = source_map.locate(problem.loc)
        value = problem.value
        if value is None:
            found = _value_at(document, problem.loc)
            value = None if found is _MISSING else toml_text(found)
        findings.append(
            Finding(
                file=file,
                line=line,
                key=dotted(problem.loc) or None,
                value=value,
                message=problem.message,
                accepted=problem.accepted,
            )
        )
    return findings


def load_unit(main: SourceFile, dropins: Sequence[SourceFile] = ()) -> tuple[Unit, SourceMap]:
    """A validated unit from a file and its drop-ins, or :class:`QuayConfigError`."""
    document, source_map = parse_layers([main, *dropins])
    files = [main.path, *(d.path for d in dropins)]
    try:
        unit = validate(Unit, document, source_map)
    except QuayConfigError as error:
        # Shape errors in some tables must not hide rule violations in the others.
        problems = check_tables(_valid_tables(document))
        raise QuayConfigError(
            sorted_findings(
                [*error.findings, *problem_findings(problems, document, source_map)], files
            )
        ) from None
    findings = problem_findings(check_unit(unit), document, source_map)
    if findings:
        raise QuayConfigError(sorted_findings(findings, files))
    return unit, source_map


def _valid_tables(document: dict[str, Any]) -> dict[str, Any]:
    """Each top-level table of a unit that validates on its own (defaults for absent ones)."""
    tables = {}
    for name, field_info in Unit.model_fields.items():
        adapter = _table_adapter(name)
        try:
            if name in document:
                tables[name] = adapter.validate_python(document[name], strict=True)
            elif not field_info.is_required():
                tables[name] = field_info.get_default(call_default_factory=True)
        except (ValidationError, RecursionError):
            continue
    return tables


@functools.cache
def _table_adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(Unit.model_fields[name].annotation or Any)


def sorted_findings(findings: Sequence[Finding], files: Sequence[Path] = ()) -> list[Finding]:
    """In ``files`` order (unit file, then drop-ins), then by line; those without a line first."""
    order = {path: index for index, path in enumerate(files)}
    for finding in findings:
        order.setdefault(finding.file, len(order))
    return sorted(findings, key=lambda f: (order[f.file], f.line or 0, f.column or 0))


_MISSING = object()


def _value_at(data: Any, path: KeyPath) -> Any:
    for part in path:
        in_list = isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data)
        in_table = isinstance(part, str) and isinstance(data, dict) and part in data
        if not (in_list or in_table):
            return _MISSING
        data = data[part]
    return data
