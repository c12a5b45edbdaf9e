"""Plan reasons say what changed in a unit (quayd.reconcile.describe)."""

from __future__ import annotations

from typing import Any

import pytest

from quayd.reconcile.describe import describe_change
from quayd.units.model import Unit


def unit(**tables: Any) -> Unit:
    container = {"image": "busybox:1.36", **tables.pop("container", {})}
    return Unit.model_validate({"container": container, **tables})


@pytest.mark.parametrize(
    ("old", "new", "text"),
    [
        (
            {"resources": {"memory": "256M"}},
            {"resources": {"memory": "512M"}},
            "resources.memory 256M → 512M",
        ),
        ({}, {"resources": {"memory": "64M"}}, "resources.memory (unset) → 64M"),
        (
            {"container": {"image": "busybox:1.35"}},
            {},
            "container.image busybox:1.35 → busybox:1.36",
        ),
        (
            {"network": {"ports": ["8080:80"]}},
            {"network": {"ports": ["8080:80", "8443:443"]}},
            'network.ports ["8080:80"] → ["8080:80","8443:443"]',
        ),
        (
            {"container": {"env": {"A": "1"}}},
            {"container": {"env": {"A": "2", "B": "3"}}},
            "container.env.A 1 → 2, container.env.B (unset) → 3",
        ),
        ({"container": {"stop_timeout": "10s"}}, {}, "no change in the unit"),
    ],
)
def test_describe_change(old: dict[str, Any], new: dict[str, Any], text: str) -> None:
    assert describe_change(unit(**old), unit(**new)) == text


def test_many_changes_are_counted_not_listed() -> None:
    old = unit(container={"env": dict.fromkeys("ABCDE", "1")})
    new = unit(container={"env": dict.fromkeys("ABCDE", "2")})
    assert describe_change(old, new).endswith(" and 2 more")


def test_long_values_are_cut() -> None:
    old = unit(container={"command": ["sh", "-c", "x" * 100]})
    text = describe_change(old, unit())
    assert "…" in text
    assert len(text) < 120
