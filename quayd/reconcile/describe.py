"""What changed between two versions of a unit, in a few words (pure): plan reasons.

``quayctl plan`` and the events say *why* a container is replaced: "resources.memory 256M →
512M, container.env.LOG_LEVEL info → debug". Both units are compared as their canonical JSON
(the same form their hash is taken of), key by key, so a change of spelling in the file that
means the same ("10s" for "10 s") is no change at all.
"""

from __future__ import annotations

import json
from typing import Any

from quayd.units.model import Unit

MAX_CHANGES = 3
MAX_VALUE = 40
_ABSENT = object()


def describe_change(old: Unit, new: Unit) -> str:
    """``"resources.memory 256M → 512M"``; up to three changes, then "and N more"."""
    before = _flatten(old.model_dump(mode="json"))
    after = _flatten(new.model_dump(mode="json"))
    changes = [
        f"{key} {_show(before.get(key, _ABSENT))} → {_show(after.get(key, _ABSENT))}"
        for key in sorted(set(before) | set(after))
        if before.get(key, _ABSENT) != after.get(key, _ABSENT)
    ]
    if not changes:
        return "no change in the unit"
    text = ", ".join(changes[:MAX_CHANGES])
    if len(changes) > MAX_CHANGES:
        text += f" and {len(changes) - MAX_CHANGES} more"
    return text


def _flatten(document: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables become dotted keys; arrays stay whole values (``ports``, ``command``)."""
    if not isinstance(document, dict):
        return {prefix: document}
    flat: dict[str, Any] = {}
    for key, value in document.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def _show(value: Any) -> str:
    if value is _ABSENT or value is None:
        return "(unset)"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"
