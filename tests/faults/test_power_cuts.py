"""The power-cut campaign (tests/faults/power.py) as a test: cuts of the booted cgroup v2 guest
at seeded moments with the crash campaign's 20 units; after each boot the store verifies and
every unit runs, nothing duplicated or leaked. ``QUAY_FAULT_CUTS`` sets the count (3 in
``./dev test``; ``python -m tests.faults power`` runs the report's 20).

It found that a unit could not start again after a boot: the agent, aborted by its watchdog
in the burst of starts after the boot, took the runtime's creates in flight with it (systemd
kills the service's whole cgroup), and each left its init in the unit's scope, unknown to the
runtime ("Unit quay-NAME.scope was already loaded or has a fragment file" for good). Fixed in
quayd/isolation/leftovers.py; regression tests: tests/integration/test_container_leftovers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_agent_images import Registry
from tests.faults.crashes import SETTINGS, campaign
from tests.faults.power import PowerCuts
from tests.support import vm_host as vm
from tests.support.agent import Deployment, deployed
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [
    *CONTAINER_TEST_MARKS,
    pytest.mark.e2e,
    pytest.mark.skipif(vm.unavailable_reason() is not None, reason=vm.unavailable_reason() or ""),
]

CUTS = int(os.environ.get("QUAY_FAULT_CUTS", "3"))
SEED = int(os.environ.get("QUAY_FAULT_SEED", "19"))


@pytest.fixture(scope="module")
def deployment(sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, host="vm", settings=SETTINGS) as deployment:
        yield deployment


def test_power_cuts_at_random_moments_lose_duplicate_and_leak_nothing(
    deployment: Deployment,
) -> None:
    registry = Registry(deployment)
    registry.start()
    report = campaign(deployment, registry, CUTS, SEED, kind=PowerCuts)
    assert len(report.rounds) == CUTS
    report.write_summary("power")
    assert report.findings() == []
    for number, done in enumerate(report.rounds, 1):
        for note in done.notes:
            print(f"cut {number}: {note}")
