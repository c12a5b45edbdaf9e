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
from tests.support.agent import Deployment, deployed, wait_until
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

KILLS = int(os.environ.get("QUAY_FAULT_KILLS", "5"))
SEED = int(os.environ.get("QUAY_FAULT_SEED", "19"))


@pytest.fixture(scope="module")
def deployment(sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, settings=SETTINGS) as deployment:
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


def test_a_burst_of_crashes_never_makes_systemd_give_up(deployment: Deployment) -> None:
    """Ten kills, each as soon as the next agent runs: more than systemd's default start limit
    (5 in 10 s), which the packaged service turns off; quayd is back after the last."""
    assert deployment.show("StartLimitIntervalUSec")["StartLimitIntervalUSec"] == "0"
    for _ in range(10):
        killed = deployment.main_pid()
        deployment.host.run(["kill", "-KILL", str(killed)], check=False)
        wait_until(
            "a new quayd",
            lambda: deployment.main_pid() not in (0, killed),  # noqa: B023
            timeout=30,
        )
    wait_until("the agent answering", lambda: deployment.status().get("agent"), timeout=60)
