"""The YAML blocks of docs/metrics.md (its scrape config and alert rules), which tests run."""

from __future__ import annotations

import re

from tests.support.systemd_host import REPO

DOC = REPO / "docs" / "metrics.md"


def doc_block(heading: str) -> str:
    """The fenced yaml block under ``heading`` in docs/metrics.md."""
    text = DOC.read_text()
    found = re.search(rf"^#+ {re.escape(heading)}\n.*?```yaml\n(.*?)```", text, re.S | re.M)
    assert found, f"docs/metrics.md has no yaml block under {heading!r}"
    return found.group(1)
