"""The crash campaign's checks (tests/faults/crashes.py ``check``): pure, over what a round read."""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from quayd.net.naming import host_veth_name
from tests.faults.crashes import CRASHER, Observed, check

STATE = PurePosixPath("/var/lib/quay")
DESIRED = ["web0", "plain0", CRASHER]


def running(pid: int) -> dict[str, Any]:
    return {"state": "running", "pid": pid, "ready": True}


def clean() -> Observed:
    return Observed(
        units={
            "web0": running(10),
            "plain0": running(20),
            CRASHER: {"state": "backoff", "pid": None},
        },
        containers=["web0", "plain0"],
        scopes={"quay-web0.scope", "quay-plain0.scope"},
        container_dirs={"web0", "plain0", CRASHER},
        mounts=["/", f"{STATE}/containers/web0/rootfs", f"{STATE}/containers/plain0/rootfs"],
        veths={host_veth_name("web0")},
        leases={"web0"},
        netns={"web0"},
        partials=[],
        staging=[],
    )


def test_a_converged_host_has_no_finding() -> None:
    found = check(clean(), DESIRED, {"web0": 10, "plain0": 20}, set(), STATE)
    assert found.clean


def test_a_unit_not_running_is_lost_but_the_crash_looping_one_is_not() -> None:
    observed = replace(clean(), units={**clean().units, "plain0": {"state": "exited", "pid": None}})
    found = check(observed, DESIRED, {}, set(), STATE)
    assert found.lost == ["plain0"]


def test_two_containers_of_a_unit_are_a_duplicate() -> None:
    observed = replace(clean(), containers=["web0", "plain0", "web0"])
    assert check(observed, DESIRED, {}, set(), STATE).duplicated == ["web0"]


def test_a_survivor_with_a_new_pid_was_restarted_unless_the_round_touched_it() -> None:
    before = {"web0": 9, "plain0": 20, CRASHER: 5}
    assert check(clean(), DESIRED, before, set(), STATE).restarted == ["web0 (pid 9 -> 10)"]
    assert check(clean(), DESIRED, before, {"web0"}, STATE).clean


def test_what_no_unit_owns_is_leaked() -> None:
    observed = replace(
        clean(),
        containers=["web0", "plain0", "gone"],
        scopes={"quay-web0.scope", "quay-plain0.scope", "quay-gone.scope"},
        container_dirs={"web0", "plain0", "gone"},
        mounts=[*clean().mounts, f"{STATE}/containers/gone/rootfs"],
        veths={host_veth_name("web0"), host_veth_name("gone")},
        leases={"web0", "gone"},
        netns={"web0", "gone"},
        partials=["ab.partial"],
        staging=[".staging-x"],
    )
    leaked = check(observed, DESIRED, {}, set(), STATE).leaked
    assert leaked == [
        "scope quay-gone.scope",
        "runtime container gone",
        "container directory gone",
        f"mount {STATE}/containers/gone/rootfs",
        f"veth {host_veth_name('gone')}",
        "lease gone",
        "netns file gone",
        "partial download ab.partial",
        "layer staging .staging-x",
    ]
