"""The agent's update bookkeeping (quayd/agent/updates.py): the check schedule with its jitter
and window, the download backoff, and the record kept on disk."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from quayd.agent.updates import (
    Updates,
    fetch_backoff,
    jitter_share,
    others_using,
    window_state,
)
from quayd.reconcile.model import UpdateRecord
from quayd.reconcile.records import read_update_record
from quayd.units.model import Unit
from quayd.units.settings import UpdateSettings

V1, V2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def unit(policy: str = "registry") -> Unit:
    return Unit.model_validate(
        {"container": {"image": "registry.lan:5000/app:stable"}, "update": {"policy": policy}}
    )


@pytest.mark.parametrize(
    ("window", "now", "inside", "wait"),
    [
        (None, "12:00", True, 0),
        ("02:00-04:00", "02:00", True, 0),
        ("02:00-04:00", "03:59", True, 0),
        ("02:00-04:00", "04:00", False, 22 * 3600),
        ("02:00-04:00", "01:30", False, 1800),
        ("23:00-01:00", "00:30", True, 0),
        ("23:00-01:00", "23:30", True, 0),
        ("23:00-01:00", "12:00", False, 11 * 3600),
    ],
)
def test_the_window_in_local_time(window: str | None, now: str, inside: bool, wait: int) -> None:
    hour, minute = map(int, now.split(":"))
    assert window_state(window, datetime(2026, 12, 7, hour, minute)) == (inside, float(wait))


def test_the_jitter_share_is_fixed_per_key_and_spread() -> None:
    assert jitter_share("host-a/app") == jitter_share("host-a/app")
    shares = [jitter_share(f"host-{i}/app") for i in range(200)]
    assert all(0 <= share < 1 for share in shares)
    # A fleet is spread over the whole jitter.
    assert min(shares) < 0.1
    assert max(shares) > 0.9


def test_the_download_backoff_doubles_to_an_hour() -> None:
    assert [fetch_backoff(n) for n in (1, 2, 3, 7, 20)] == [60, 120, 240, 3600, 3600]


def test_checks_follow_the_interval_and_the_jitter(tmp_path: Path) -> None:
    clock = [1000.0]
    settings = UpdateSettings(check_interval=timedelta(hours=1), jitter=timedelta(0))
    updates = Updates(tmp_path, settings, "host", lambda: clock[0])
    units = {"app": unit(), "local": unit("local"), "off": unit("off")}
    assert updates.due_checks(units) == ["app"]  # soon after the agent starts
    updates.of("app").checking = True
    assert updates.due_checks(units) == []
    updates.checked("app", V2, None)
    assert updates.due_checks(units) == []
    assert updates.wake_at(units) == 1000.0 + 3600
    clock[0] += 3600
    assert updates.due_checks(units) == ["app"]


def test_a_closed_window_holds_checks_but_not_a_forced_one(tmp_path: Path) -> None:
    settings = UpdateSettings(window="02:00-04:00", jitter=timedelta(0))
    updates = Updates(tmp_path, settings, "host", lambda: 5000.0,
                      local_time=lambda: datetime(2026, 12, 7, 12, 0))  # fmt: skip
    assert updates.due_checks({"app": unit()}) == []
    state = updates.observed("app", unit(), {}, None)
    assert (state.due, state.opens_at) == (False, 5000.0 + 14 * 3600)
    updates.force("app")
    assert updates.due_checks({"app": unit()}) == ["app"]
    assert updates.observed("app", unit(), {}, None).due


def test_local_policy_offers_the_stores_digest(tmp_path: Path) -> None:
    updates = Updates(tmp_path, UpdateSettings(), "host", lambda: 0.0)
    updates.checked("app", V1, None)
    assert updates.observed("app", unit("local"), {}, V2).offered == V2
    assert updates.observed("app", unit(), {}, V2).offered == V1


def test_a_failed_download_waits_and_the_tag_moving_clears_it(tmp_path: Path) -> None:
    updates = Updates(tmp_path, UpdateSettings(), "host", lambda: 100.0)
    updates.checked("app", V1, None)
    updates.fetched("app", V1, "registry said 500")
    state = updates.observed("app", unit(), {}, None)
    assert (state.fetch_error, state.fetch_retry_at) == ("registry said 500", 160.0)
    updates.checked("app", V2, None)
    assert updates.observed("app", unit(), {}, None).fetch_error is None


def test_the_record_is_saved_and_read_back_after_a_restart(tmp_path: Path) -> None:
    updates = Updates(tmp_path, UpdateSettings(), "host", lambda: 0.0)
    updates.save("app", UpdateRecord(current=V1, target=V2))
    assert read_update_record(tmp_path, "app") == UpdateRecord(current=V1, target=V2)
    again = Updates(tmp_path, UpdateSettings(), "host", lambda: 0.0)
    assert again.observed("app", unit(), {}, None).record == UpdateRecord(current=V1, target=V2)
    again.forget(set())
    assert again.units == {}


def test_prune_unused_keeps_the_versions_update_records_need(tmp_path: Path) -> None:
    from quayd.cli.image_actions import update_references  # noqa: PLC0415

    assert update_references(tmp_path, ["registry.lan:5000/app:stable"]) == []
    updates = Updates(tmp_path, UpdateSettings(), "host", lambda: 0.0)
    updates.save("app", UpdateRecord(current=V1, target=V2, bad="sha256:" + "3" * 64))
    assert update_references(tmp_path, ["registry.lan:5000/app:stable"]) == [
        f"registry.lan:5000/app@{V1}",
        f"registry.lan:5000/app@{V2}",
    ]


def test_replace_then_download_keeps_an_image_other_units_use() -> None:
    references = {"app": "r/app:1", "twin": "r/app:1", "db": "r/db:1"}
    assert others_using(references, "app") == ["twin"]
    assert others_using(references, "db") == []


def test_an_operators_update_now_survives_an_agent_restart_until_confirmed(
    tmp_path: Path,
) -> None:
    settings = UpdateSettings(window="02:00-04:00", jitter=timedelta(0))

    def agent() -> Updates:
        return Updates(tmp_path, settings, "host", lambda: 5000.0,
                       local_time=lambda: datetime(2026, 12, 7, 12, 0))  # fmt: skip

    agent().force("app")
    restarted = agent()
    assert restarted.observed("app", unit(), {}, None).due
    assert restarted.due_checks({"app": unit()}) == ["app"]
    restarted.save("app", dataclasses.replace(restarted.of("app").record, forced=False))
    assert not agent().observed("app", unit(), {}, None).due
