"""Findings: what validation says about a file, precisely enough for a person to act on it.

A finding names the file, the line (and column for syntax errors), the dotted key, the bad value and
what would be accepted. Errors make a unit invalid; warnings (an ignored file, an orphan drop-in
directory) are shown but never block anything.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, kw_only=True)
class Finding:
    file: Path
    message: str
    key: str | None = None
    line: int | None = None
    column: int | None = None
    value: str | None = None
    """The offending value, as TOML would spell it (already quoted when it is a string)."""
    accepted: str | None = None
    severity: Severity = Severity.ERROR

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def location(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def __str__(self) -> str:
        text = self.location() + ": "
        if self.severity is Severity.WARNING:
            text += "warning: "
        if self.key:
            text += f"{self.key}"
            text += f" = {self.value}: " if self.value is not None else ": "
        text += self.message
        if self.accepted:
            text += f"; accepted: {self.accepted}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "line": self.line,
            "column": self.column,
            "key": self.key,
            "value": self.value,
            "message": self.message,
            "accepted": self.accepted,
            "severity": self.severity.value,
        }


class QuayConfigError(Exception):
    """A unit file or the settings cannot be used; carries every finding, not only the first."""

    def __init__(self, findings: Iterable[Finding]) -> None:
        self.findings: tuple[Finding, ...] = tuple(findings)
        super().__init__("\n".join(str(f) for f in self.findings))


def errors_in(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.is_error]
