"""The agent-crash campaign's quick variant (tests/faults/crashes.py): a few ``kill -9`` of quayd
at seeded moments in the namespace systemd host, 20 units, and nothing lost, duplicated,
restarted or leaked after any of them. ``QUAY_FAULT_KILLS`` sets the count (the report's run:
``python -m tests.faults crashes``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_agent_images import Registry
from tests.faults.crashes import SETTINGS, campaign
from tests.support.agent import Deployment, deployed, use_settings
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

KILLS = int(os.environ.get("QUAY_FAULT_KILLS", "5"))
SEED = int(os.environ.get("QUAY_FAULT_SEED", "19"))


@pytest.fixture(scope="module")
def deployment(sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, start=False) as deployment:
        use_settings(deployment, SETTINGS)
        deployment.host.systemctl("start", "quayd")
        yield deployment


def test_kill_9_at_random_moments_loses_duplicates_and_leaks_nothing(
    deployment: Deployment,
) -> None:
    registry = Registry(deployment)
    registry.start()
    report = campaign(deployment, registry, KILLS, SEED)
    assert len(report.rounds) == KILLS
    report.write_summary("crashes")
    assert report.findings() == []
    downtimes = sorted(r.downtime for r in report.rounds)
    print(f"{KILLS} kills (seed {SEED}): agent back in {downtimes[len(downtimes) // 2]:.1f} s p50")
