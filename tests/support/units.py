"""Helpers to write config directories and load units from plain text in tests."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

from quayd.units.findings import Finding, QuayConfigError
from quayd.units.loader import SourceFile, load_unit
from quayd.units.model import Unit

MINIMAL = '[container]\nimage = "busybox"\n'


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``{"web.toml": "...", "web.toml.d/10-a.toml": "..."}`` under ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def unit_from(text: str, *dropins: str, name: str = "web.toml") -> Unit:
    """Load a unit from text (and drop-in texts); raises QuayConfigError like the real loader."""
    main = SourceFile(Path(name), textwrap.dedent(text))
    extra = [
        SourceFile(Path(f"{name}.d/{index:02d}.toml"), textwrap.dedent(dropin))
        for index, dropin in enumerate(dropins)
    ]
    unit, _ = load_unit(main, extra)
    return unit


def findings_for(text: str, *dropins: str, name: str = "web.toml") -> list[Finding]:
    """The findings loading ``text`` produces; fails the test if it loads cleanly."""
    try:
        unit_from(text, *dropins, name=name)
    except QuayConfigError as error:
        return list(error.findings)
    raise AssertionError("expected the unit to be invalid, but it loaded")


def only_finding(text: str, *dropins: str) -> Finding:
    findings = findings_for(text, *dropins)
    assert len(findings) == 1, "\n".join(str(f) for f in findings)
    return findings[0]
