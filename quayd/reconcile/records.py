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
from quayd.reconcile.model import UpdateRecord
from quayd.units.model import Unit

RECORD = "quay.json"
LATER_KEYS: dict[str, dict[str, Any]] = {"container": {"user_namespaces": False, "init": True}}
"""Keys added to the unit format after units were first run, by table, with their defaults:
left out of the hash at their default, so a unit that does not set them keeps the hash an
older quay gave it and an upgrade replaces none of its containers."""
VERSION = 1


def unit_hash(unit: Unit, image_digest: str | None = None) -> str:
    """A canonical hash of the effective unit: same unit, same hash, whatever the file's layout.

    ``image_digest`` joins it for ``pull = "always"`` units, so a new digest for the reference
    replaces the container like any other change. Not for units with ``[update]``: their digest
    is the planner's to change (quayd/reconcile/update.py), step by step with a rollback. The
    ``[update]`` table itself is left out: how updates happen does not change what runs (and
    units written before the table existed keep their hash: an upgrade replaces no container).
    """
    dumped = unit.model_dump(mode="json", exclude={"update"})
    for section, keys in LATER_KEYS.items():
        for key, default in keys.items():
            if dumped.get(section, {}).get(key, default) == default:
                dumped[section].pop(key, None)
    document: dict[str, Any] = {"unit": dumped}
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


UPDATES = "updates"


def write_update_record(state_dir: Path, name: str, record: UpdateRecord) -> None:
    """``STATE/updates/NAME.json``, atomically: written before each step of an update acts, so
    after a power cut it names the digest to run (and the one to keep for a rollback)."""
    document = {
        "version": VERSION,
        "current": record.current,
        "target": record.target,
        "bad": record.bad,
        "bad_reason": record.bad_reason,
        "forced": record.forced,
    }
    write_json_atomically(state_dir / UPDATES / f"{name}.json", document)


def read_update_record(state_dir: Path, name: str) -> UpdateRecord:
    """The unit's update record; an empty one when there is none or it cannot be read (then the
    running container's digest counts as current: nothing is rolled back to a guess)."""
    try:
        document = json.loads((state_dir / UPDATES / f"{name}.json").read_text())
        fields = {key: document.get(key) for key in ("current", "target", "bad")}
        if not all(value is None or isinstance(value, str) for value in fields.values()):
            return UpdateRecord()
        return UpdateRecord(
            **fields,
            bad_reason=str(document.get("bad_reason") or ""),
            forced=document.get("forced") is True,
        )
    except (OSError, ValueError, AttributeError):
        return UpdateRecord()


def remove_update_record(state_dir: Path, name: str) -> None:
    """Forget a removed unit's update (a unit added again under the name starts afresh)."""
    (state_dir / UPDATES / f"{name}.json").unlink(missing_ok=True)
