"""What the agent keeps about a container that the live system cannot tell: the record file.

A container's directory (``STATE/containers/NAME``) holds the runtime bundle and ``quay.json``:
the unit it runs (as validated then), that unit's hash, when it started and when it became
ready. It is written atomically before the container starts and again when it becomes ready. After
an agent restart this is how a running container is adopted (same PID, same hash, readiness
kept) and how a unit whose file has since become invalid keeps its last good version.
Everything else — is it running, its pid — comes from the runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quayd.atomicfile import replace_file
from quayd.units.model import Unit

RECORD = "quay.json"
VERSION = 1


def unit_hash(unit: Unit, image_digest: str | None = None) -> str:
    """A canonical hash of the effective unit: same unit, same hash, whatever the file's layout.

    ``image_digest`` joins it for ``pull = "always"`` units, so a new digest pulled for the
    reference replaces the container like any other change.
    """
    document: dict[str, Any] = {"unit": unit.model_dump(mode="json")}
    if image_digest is not None:
        document["image"] = image_digest
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ContainerRecord:
    name: str
    hash: str
    unit: Unit
    started_at: float
    ready_at: float | None = None
    image_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "name": self.name,
            "hash": self.hash,
            "unit": self.unit.model_dump(mode="json"),
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "image_digest": self.image_digest,
        }


def write_record(directory: Path, record: ContainerRecord) -> None:
    """Replace ``directory/quay.json`` atomically (a reader sees the old or the new record)."""
    write_json_atomically(directory / RECORD, record.to_json())


def write_json_atomically(path: Path, document: Any) -> None:
    """Replace ``path`` with ``document`` as JSON: temp file, fsync, rename, fsync the directory
    (after a power cut the file is the old one or the new one, never a part)."""
    data = json.dumps(document, indent=1, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, data, mode=0o600)


def read_record(directory: Path) -> ContainerRecord | None:
    """The record in ``directory``; None when it is missing or unreadable (then the container
    cannot be adopted: it is stopped and started again from its unit)."""
    try:
        document = json.loads((directory / RECORD).read_text())
        return ContainerRecord(
            name=str(document["name"]),
            hash=str(document["hash"]),
            unit=Unit.model_validate(document["unit"]),
            started_at=float(document["started_at"]),
            ready_at=None if document.get("ready_at") is None else float(document["ready_at"]),
            image_digest=document.get("image_digest"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
