"""Names through the agent: a burst of bridged units, each seen by every running peer.

A start writes only its own hosts file; the others' follow in one rewrite once the burst is
quiet (docs/networking.md). These tests read ``/etc/hosts`` inside the containers (through the
agent's exec), so they check what a container's resolver sees, without restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import HOSTS, IMAGE, Deployment, deployed, running, wait_until
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

SLEEPER = f"""
[container]
image = "{IMAGE}"
command = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
stop_timeout = "2s"
"""
PEERS = [f"peer{i}" for i in range(6)]


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, host=request.param) as deployment:
        yield deployment


def hosts_names(deployment: Deployment, unit: str) -> set[str]:
    """The names in ``unit``'s /etc/hosts that have a 10.89.0.x address."""
    done = deployment.api("POST", f"/v1/units/{unit}/exec", {"argv": ["cat", "/etc/hosts"]})
    assert done.get("code") == 0, done
    return {
        name
        for line in done["stdout"].splitlines()
        if line.startswith("10.89.0.")
        for name in line.split()[1:]
    }


def test_a_burst_of_units_all_resolve_each_other_and_a_running_peer_sees_them(
    deployment: Deployment,
) -> None:
    deployment.write("alpha", SLEEPER)
    running(deployment, "alpha")
    for name in PEERS:
        deployment.write(name, SLEEPER)
    for name in PEERS:
        running(deployment, name)
    everyone = {"alpha", *PEERS}
    for unit in sorted(everyone):

        def complete(unit: str = unit) -> bool:
            return hosts_names(deployment, unit) == everyone

        wait_until(f"every peer in {unit}'s /etc/hosts", complete, timeout=5)


def test_a_removed_unit_leaves_the_running_peers_hosts_files(deployment: Deployment) -> None:
    deployment.delete("peer2")
    wait_until("peer2 removed", lambda: "peer2" not in deployment.units())
    for unit in ("alpha", "peer0"):

        def gone(unit: str = unit) -> bool:
            return "peer2" not in hosts_names(deployment, unit)

        wait_until(f"peer2 gone from {unit}'s /etc/hosts", gone, timeout=5)
