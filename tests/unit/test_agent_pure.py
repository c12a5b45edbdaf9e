"""The agent's pure helpers: unit hashes, container records, health specs and verdicts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from quayd.reconcile.health import HealthSpec, HealthState, ImageHealthcheck, health_spec, judge
from quayd.reconcile.records import (
    LATER_KEYS,
    ContainerRecord,
    read_record,
    unit_hash,
    write_record,
)
from quayd.units.model import Unit


def unit(**tables: Any) -> Unit:
    container = {"image": "busybox:1.36", **tables.pop("container", {})}
    return Unit.model_validate({"container": container, **tables})


# --- hashes and records ----------------------------------------------------------------------


def test_the_hash_ignores_how_a_unit_is_written() -> None:
    spelled = unit(container={"stop_timeout": "10s", "env": {"B": "2", "A": "1"}})
    defaulted = unit(container={"env": {"A": "1", "B": "2"}})
    assert unit_hash(spelled) == unit_hash(defaulted)


@pytest.mark.parametrize(
    "change",
    [
        {"container": {"env": {"A": "2"}}},
        {"resources": {"memory": "64M"}},
        {"network": {"ports": ["8080:80"]}},
        {"restart": {"policy": "no"}},
    ],
)
def test_any_change_changes_the_hash(change: dict[str, Any]) -> None:
    assert unit_hash(unit(**change)) != unit_hash(unit(container={"env": {"A": "1"}}))


def test_keys_added_later_keep_the_old_hash_at_their_default() -> None:
    base = unit(container={"env": {"A": "1"}})
    dumped = base.model_dump(mode="json", exclude={"update"})
    for section, keys in LATER_KEYS.items():
        for key in keys:
            del dumped[section][key]  # what the unit was before the key existed
    older = json.dumps({"unit": dumped}, sort_keys=True, separators=(",", ":"))
    assert unit_hash(base) == hashlib.sha256(older.encode()).hexdigest()[:16]
    allowed = unit(container={"env": {"A": "1"}, "user_namespaces": True})
    assert unit_hash(allowed) != unit_hash(base)


def test_the_image_digest_joins_the_hash_when_given() -> None:
    base = unit()
    assert unit_hash(base, "sha256:aa") != unit_hash(base, "sha256:bb")
    assert unit_hash(base, "sha256:aa") != unit_hash(base)


def test_a_record_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    record = ContainerRecord(
        name="web",
        hash="abc",
        unit=unit(resources={"memory": "64M"}, network={"ports": ["8080:80"]}),
        started_at=100.5,
        image_digest="sha256:aa",
    )
    write_record(tmp_path, record)
    assert read_record(tmp_path) == record
    ready = ContainerRecord(**{**record.__dict__, "ready_at": 101.0})
    write_record(tmp_path, ready)
    assert read_record(tmp_path) == ready
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quay.json"]


@pytest.mark.parametrize("content", [None, "", "{", '{"name": "web"}', '{"unit": 3}'])
def test_a_missing_or_damaged_record_reads_as_none(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "quay.json").write_text(content)
    assert read_record(tmp_path) is None


# --- health ----------------------------------------------------------------------------------


def test_no_command_anywhere_means_no_check() -> None:
    assert health_spec(unit(), None) is None
    assert health_spec(unit(), ImageHealthcheck(test=("NONE",))) is None


def test_unit_keys_win_then_the_image_then_dockers_defaults() -> None:
    image = ImageHealthcheck(test=("CMD-SHELL", "check"), interval=5.0, retries=7)
    spec = health_spec(unit(health={"timeout": "2s"}), image)
    assert spec == HealthSpec(
        argv=("/bin/sh", "-c", "check"), interval=5.0, timeout=2.0, start_period=0.0, retries=7
    )
    own = health_spec(unit(health={"command": ["true"], "interval": "1s"}), image)
    assert own is not None
    assert own.argv == ("true",)
    assert own.interval == 1.0
    assert health_spec(unit(), ImageHealthcheck(test=("CMD", "/bin/check", "-v"))) == HealthSpec(
        argv=("/bin/check", "-v"), interval=30.0, timeout=30.0, start_period=0.0, retries=3
    )


SPEC = HealthSpec(argv=("true",), interval=1.0, timeout=1.0, start_period=10.0, retries=2)


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        # (passed, seconds since start) per run -> (failures, healthy, unhealthy)
        ([(False, 1.0), (False, 2.0), (False, 3.0)], (0, False, False)),  # in start_period
        ([(False, 11.0)], (1, False, False)),
        ([(False, 11.0), (False, 12.0)], (2, False, True)),
        ([(False, 11.0), (False, 12.0), (True, 13.0)], (0, True, False)),
        ([(True, 1.0), (False, 11.0)], (1, False, False)),
    ],
)
def test_health_verdicts_follow_docker(
    runs: list[tuple[bool, float]], expected: tuple[int, bool, bool]
) -> None:
    state = HealthState()
    for passed, since in runs:
        state = judge(state, passed=passed, spec=SPEC, since_start=since)
    assert (state.failures, state.healthy, state.unhealthy) == expected
