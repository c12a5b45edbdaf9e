"""Churn and soak (issue 19, item 5): many units, random creates, edits and deletes of their
files over some minutes, then exact convergence to the files on disk, and quayd's RSS and open
file descriptors before and after.

The units are the crash campaign's kinds (tests/faults/crashes.py): bridged ``httpd`` ready on
tcp, health-checked ones, and ones without a network; each file carries a ``GENERATION`` that
its container's environment must show once converged. Writes alternate, seeded, between a file
renamed into place and one written in place (the two ways operators' tools write). After the
churn, convergence means: the status lists exactly the files' units, each running and ready,
each container with its file's generation, and nothing leaked (the crash campaign's pure
:func:`crashes.check`: scopes, runtime containers, container directories, mounts, veths,
leases, netns files).

:func:`churn` returns a :class:`ChurnReport`; tests/faults/test_churn.py runs a short one in
``./dev test``, ``python -m tests.faults churn`` the report's 100 units and 1,000 changes over
5 minutes.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.crashes import FINDINGS, KINDS, Round, check, kind_of, observe
from tests.support.agent import Deployment, wait_until

CONVERGE_TIMEOUT = float(os.environ.get("QUAY_CHURN_CONVERGE_TIMEOUT", "300"))
SETTLE_SECONDS = 5.0
"""After convergence, before RSS and fds are read: the last pass's work done."""


@dataclass
class ChurnReport:
    units: int
    changes: dict[str, int] = field(default_factory=dict)
    """How many creates, edits and deletes were made (by kind of write as well)."""
    seconds: float = 0.0
    converged: float = 0.0
    """Seconds from the last change to exact convergence."""
    rss_kib: tuple[int, int] = (0, 0)
    fds: tuple[int, int] = (0, 0)
    found: Round = field(default_factory=lambda: Round(action="churn"))
    """What :func:`crashes.check` found once converged (lost, duplicated, leaked)."""

    @property
    def findings(self) -> list[str]:
        return [f"{what} {item}" for what in FINDINGS for item in getattr(self.found, what)]

    def summary(self) -> dict[str, Any]:
        """The figures the report (python -m tests.faults) prints, in the crash report's form."""
        return {
            "rounds": 1,
            "totals": {what: len(getattr(self.found, what)) for what in FINDINGS},
            "findings": self.findings,
            "downtime": [],
            "converged": [self.converged],
            "notes": [self.describe()],
        }

    def describe(self) -> str:
        made = ", ".join(f"{count} {what}" for what, count in sorted(self.changes.items()))
        return (
            f"{self.units} units, {made} in {self.seconds:.0f} s; converged {self.converged:.1f} s "
            f"after the last; quayd RSS {self.rss_kib[0] / 1024:.1f} -> "
            f"{self.rss_kib[1] / 1024:.1f} MiB, fds {self.fds[0]} -> {self.fds[1]}"
        )

    def write_summary(self, name: str) -> None:
        directory = os.environ.get("QUAY_FAULT_REPORT_DIR")
        if directory:
            Path(directory, f"{name}.json").write_text(json.dumps(self.summary(), indent=1))


class Churn:
    """The unit files of one deployment and the random changes made to them."""

    def __init__(self, deployment: Deployment, rng: random.Random) -> None:
        self.deployment = deployment
        self.rng = rng
        self.units: dict[str, str] = {}
        self.generations: dict[str, int] = {}
        self.made: dict[str, int] = {}
        self.next_number = 0

    def write(self, name: str, generation: int) -> None:
        text = KINDS[kind_of(name)](generation)
        renamed = self.rng.random() < 0.5
        self.deployment.host.write_file(self.deployment.path(name), text, atomic=renamed)
        self.units[name], self.generations[name] = text, generation
        self.count("renamed into place" if renamed else "written in place")

    def count(self, what: str) -> None:
        self.made[what] = self.made.get(what, 0) + 1

    def create(self) -> None:
        kind = self.rng.choice(sorted(KINDS))
        name = f"{kind}{self.next_number}"
        self.next_number += 1
        self.write(name, 0)
        self.count("creates")

    def change(self, low: int, high: int) -> None:
        """One seeded change: an edit, a create or a delete, the count kept in [low, high]."""
        choice = self.rng.choice(["edit", "edit", "create", "delete"])
        if choice == "create" and len(self.units) >= high:
            choice = "edit"
        if choice == "delete" and len(self.units) <= low:
            choice = "edit"
        if choice == "create":
            self.create()
        elif choice == "delete":
            name = self.rng.choice(sorted(self.units))
            self.deployment.delete(name)
            del self.units[name], self.generations[name]
            self.count("deletes")
        else:
            name = self.rng.choice(sorted(self.units))
            self.write(name, self.generations[name] + 1)
            self.count("edits")

    # convergence -----------------------------------------------------------------------------

    def differences(self) -> list[str]:
        """What still differs from the files; empty once converged."""
        units = self.deployment.units()
        differs = [f"{n} not in status" for n in sorted(set(self.units) - set(units))]
        differs += [f"{n} in status only" for n in sorted(set(units) - set(self.units))]
        differs += [
            f"{n}: {u['state']}, ready {u['ready']}"
            for n, u in sorted(units.items())
            if n in self.units and not (u["state"] == "running" and u["ready"])
        ]
        return differs

    def wrong_generations(self) -> list[str]:
        wrong = []
        for name, generation in sorted(self.generations.items()):
            done = self.deployment.api(
                "POST", f"/v1/units/{name}/exec", {"argv": ["sh", "-c", "echo $GENERATION"]}
            )
            seen = str(done.get("stdout", done)).strip()
            if seen != str(generation):
                wrong.append(f"{name} runs generation {seen!r}, its file says {generation}")
        return wrong

    def converge(self, timeout: float = CONVERGE_TIMEOUT) -> float:
        began = time.monotonic()
        missing: list[str] = []

        def done() -> bool:
            missing[:] = self.differences() or self.wrong_generations()
            return not missing

        try:
            wait_until("the files' units", done, timeout=timeout)
        except AssertionError:
            raise AssertionError(
                f"not converged after {timeout:.0f} s: {missing[:20]}\n"
                + self.deployment.diagnosis(*[m.split(":")[0].split(" ")[0] for m in missing[:3]])
            ) from None
        return time.monotonic() - began

    def usage(self) -> tuple[int, int]:
        """quayd's RSS (KiB) and open file descriptors."""
        pid = self.deployment.main_pid()
        status = self.deployment.host.run(["cat", f"/proc/{pid}/status"]).stdout
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        fds = len(self.deployment.host.run(["ls", f"/proc/{pid}/fd"]).stdout.split())
        return rss, fds


def churn(
    deployment: Deployment, *, units: int, changes: int, seconds: float, seed: int
) -> ChurnReport:
    """``units`` units, then ``changes`` changes spread over ``seconds``, then convergence."""
    rng = random.Random(seed)
    work = Churn(deployment, rng)
    for _ in range(units):
        work.create()
    work.made.clear()
    work.converge()
    time.sleep(SETTLE_SECONDS)
    rss_before, fds_before = work.usage()
    began = time.monotonic()
    low, high = max(1, units * 8 // 10), units * 12 // 10
    for number in range(changes):
        due = began + seconds * number / changes
        time.sleep(max(0.0, due - time.monotonic()))
        work.change(low, high)
    report = ChurnReport(units=units, seconds=time.monotonic() - began, changes=dict(work.made))
    report.converged = work.converge()
    report.found = check(observe(deployment), work.units, {}, set(), deployment.state_dir)
    time.sleep(SETTLE_SECONDS)
    rss_after, fds_after = work.usage()
    report.rss_kib, report.fds = (rss_before, rss_after), (fds_before, fds_after)
    return report
