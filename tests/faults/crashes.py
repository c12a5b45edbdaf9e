"""The agent-crash campaign (issue 19, item 1): ``kill -9`` of quayd at random moments, systemd
restarting it, and after each restart a count of what was lost, duplicated or leaked.

The host runs quayd as its packaged service (``tests.support.agent.deployed``) with 20 units:
six bridged ``httpd`` units ready on tcp, six with health checks (ready once healthy), six
without a network, one crash-looping (``restart = "always"``) and one updated from the
registry in every round (``[update]``, its pulls capped at 1 MiB/s, so a kill often lands in
the middle of one). A round does one seeded thing to the host (edit units, which replaces their
containers; delete one and add another; ask for the update; or restart quayd and kill the new
one while it adopts), waits a random moment, and kills the agent. systemd restarts it
(``Restart=always``). Once the agent answers and every unit is back, the round counts:

* **lost**: a unit file whose unit does not run (the crash-looping one aside);
* **duplicated**: a unit with more than one container in the runtime;
* **restarted**: a unit the round did not touch whose container's PID changed (live restore
  means survivors keep their PIDs);
* **leaked**: a scope, runtime container, container directory, overlay mount, host veth,
  address lease or network namespace file of no unit, a partial download left once no pull
  runs, or a layer staging directory.

:func:`campaign` runs N rounds and returns a :class:`CrashReport`; tests/faults/test_crashes.py
runs a few rounds in ``./dev test``, ``python -m tests.faults crashes`` the report's count.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from quayd.net.naming import host_veth_name
from tests.support.agent import IMAGE, RUN_DIR, Deployment, wait_until
from tests.support.images import Entry, file

REGISTRY = "127.0.0.1:5000"
PULLER = "puller"
ADOPTION = "restart, then kill while adopting"
CRASHER = "crasher"
SETTINGS = '[updates]\ncheck_interval = "24h"\njitter = "0s"\nbandwidth = "1M"\n'
"""No scheduled update check (each is asked for), and update pulls capped: a 4 MiB image takes
about 4 s to come, a wide window for a kill."""
PAYLOAD_BYTES = 4 << 20
CONVERGE_TIMEOUT = 180.0

IDLE = "trap 'exit 0' TERM; while :; do sleep 1; done"
SERVE = "mkdir -p /tmp/w; echo ok > /tmp/w/index.html; exec httpd -f -p 80 -h /tmp/w"


def web_unit(generation: int) -> str:
    return (
        f'[container]\nimage = "{IMAGE}"\ncommand = ["sh", "-c", "{SERVE}"]\n'
        f'env = {{ GENERATION = "{generation}" }}\nstop_timeout = "2s"\n'
        '[ready]\nmode = "tcp"\nport = 80\n'
    )


def health_unit(generation: int) -> str:
    return (
        f'[container]\nimage = "{IMAGE}"\ncommand = ["sh", "-c", "{IDLE}"]\n'
        f'env = {{ GENERATION = "{generation}" }}\nstop_timeout = "2s"\n'
        '[ready]\nmode = "healthy"\n'
        '[health]\ncommand = ["true"]\ninterval = "500ms"\n'
    )


def plain_unit(generation: int) -> str:
    return (
        f'[container]\nimage = "{IMAGE}"\ncommand = ["sh", "-c", "{IDLE}"]\n'
        f'env = {{ GENERATION = "{generation}" }}\nstop_timeout = "2s"\n'
        '[network]\nmode = "none"\n'
    )


CRASHER_UNIT = (
    f'[container]\nimage = "{IMAGE}"\ncommand = ["sh", "-c", "sleep 0.5; exit 3"]\n'
    '[network]\nmode = "none"\n[restart]\npolicy = "always"\nbackoff = "1s"\n'
)
PULLER_UNIT = (
    f'[container]\nimage = "{REGISTRY}/faults/puller:latest"\n'
    'command = ["sh", "-c", "cat /version; trap \'exit 0\' TERM; while :; do sleep 1; done"]\n'
    'stop_timeout = "2s"\n'
    '[update]\npolicy = "registry"\nstrategy = "download-then-replace"\n'
)


class Registry(Protocol):
    """The host's registry (tests/e2e/test_agent_images.py's Registry)."""

    def start(self) -> None: ...

    def push(self, repository: str, version: str, extra: Sequence[Entry] = ()) -> None:
        """busybox with /version and the extra entries, as ``REGISTRY/repository:latest``."""
        ...


KINDS: dict[str, Callable[[int], str]] = {
    "web": web_unit,
    "health": health_unit,
    "plain": plain_unit,
}
BRIDGED = ("web", "health", PULLER)
"""Units on the bridge (a host veth, a lease, a namespace file each)."""


def initial_units() -> dict[str, str]:
    units = {f"{kind}{n}": make(0) for kind, make in KINDS.items() for n in range(6)}
    units[CRASHER] = CRASHER_UNIT
    units[PULLER] = PULLER_UNIT
    return units


def kind_of(name: str) -> str:
    return name.rstrip("0123456789")


FINDINGS = ("lost", "duplicated", "restarted", "leaked", "unverified")


@dataclass
class Round:
    """One kill: what the round did, the agent's downtime, and what was found after it."""

    action: str
    touched: set[str] = field(default_factory=set)
    downtime: float = 0.0
    converged: float = 0.0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    """``quayctl image verify`` failures (power cuts)."""
    notes: list[str] = field(default_factory=list)
    """What the round saw that is no finding of quay's (a unit write the power cut lost)."""

    @property
    def clean(self) -> bool:
        return not any(getattr(self, what) for what in FINDINGS)


@dataclass
class CrashReport:
    rounds: list[Round] = field(default_factory=list)

    def total(self, what: str) -> int:
        return sum(len(getattr(r, what)) for r in self.rounds)

    def summary(self) -> dict[str, Any]:
        """The figures the report (python -m tests.faults) prints."""
        return {
            "rounds": len(self.rounds),
            "actions": sorted({r.action.split(" ")[0] for r in self.rounds}),
            "totals": {what: self.total(what) for what in FINDINGS},
            "findings": self.findings(),
            "downtime": sorted(r.downtime for r in self.rounds),
            "converged": sorted(r.converged for r in self.rounds),
            "notes": [note for r in self.rounds for note in r.notes],
        }

    def write_summary(self, name: str) -> None:
        """The summary as JSON in ``$QUAY_FAULT_REPORT_DIR/NAME.json`` when the runner asks."""
        directory = os.environ.get("QUAY_FAULT_REPORT_DIR")
        if directory:
            Path(directory, f"{name}.json").write_text(json.dumps(self.summary(), indent=1))

    def findings(self) -> list[str]:
        found = []
        for number, done in enumerate(self.rounds, 1):
            for what in FINDINGS:
                found += [
                    f"round {number} ({done.action}): {what} {x}" for x in getattr(done, what)
                ]
        return found


# --- what the host has: pure checks over what was read ----------------------------------------


@dataclass(frozen=True)
class Observed:
    """What a round reads of the host once the agent has converged."""

    units: dict[str, dict[str, Any]]
    containers: list[str]
    scopes: set[str]
    container_dirs: set[str]
    mounts: list[str]
    veths: set[str]
    leases: set[str]
    netns: set[str]
    partials: list[str]
    staging: list[str]


def check(
    observed: Observed,
    desired: Iterable[str],
    before: dict[str, int],
    touched: set[str],
    state_dir: PurePosixPath,
) -> Round:
    """The findings of a round (``action`` is the caller's to fill): pure."""
    desired = set(desired)
    found = Round(action="")
    for name in sorted(desired - {CRASHER}):
        unit = observed.units.get(name)
        if not unit or unit["state"] != "running":
            found.lost.append(name)
    counts: dict[str, int] = {}
    for name in observed.containers:
        counts[name] = counts.get(name, 0) + 1
    found.duplicated += sorted(n for n, c in counts.items() if c > 1)
    for name, pid in sorted(before.items()):
        if name in touched or name == CRASHER or name not in desired:
            continue
        unit = observed.units.get(name)
        if unit and unit.get("pid") and int(unit["pid"]) != pid:
            found.restarted.append(f"{name} (pid {pid} -> {unit['pid']})")
    running = {n for n, u in observed.units.items() if u["state"] == "running"}
    found.leaked += [
        f"scope {s}" for s in sorted(observed.scopes - {f"quay-{n}.scope" for n in desired})
    ]
    found.leaked += [f"runtime container {n}" for n in sorted(set(counts) - desired)]
    found.leaked += [f"container directory {n}" for n in sorted(observed.container_dirs - desired)]
    containers = state_dir / "containers"
    for point in observed.mounts:
        path = PurePosixPath(point)
        if path.is_relative_to(containers):
            owner = path.relative_to(containers).parts[0]
            if owner not in running and owner != CRASHER:
                found.leaked.append(f"mount {point}")
    bridged = {n for n in desired if kind_of(n) in BRIDGED and n != CRASHER}
    expected_veths = {host_veth_name(n) for n in bridged & running}
    found.leaked += [f"veth {v}" for v in sorted(observed.veths - expected_veths)]
    found.leaked += [f"lease {n}" for n in sorted(observed.leases - bridged)]
    found.leaked += [f"netns file {n}" for n in sorted(observed.netns - bridged)]
    found.leaked += [f"partial download {p}" for p in observed.partials]
    found.leaked += [f"layer staging {s}" for s in observed.staging]
    return found


# --- the host ---------------------------------------------------------------------------------


class Campaign:
    """The units, the registry's puller image and the kills, on one deployment."""

    FAULT = "kill"

    SURVIVORS = True
    """Whether untouched units keep their containers through the fault (live restore)."""

    def __init__(self, deployment: Deployment, registry: Registry) -> None:
        self.deployment = deployment
        self.host = deployment.host
        self.registry = registry
        self.units: dict[str, str] = {}
        self.version = 0
        """The puller's last version pushed."""
        self.accepted: set[int] = set()
        """The puller versions a round accepts as converged (after a kill: the last pushed)."""
        self.generation = 0
        self.added = 0

    # setup ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.push_puller()
        for name, text in initial_units().items():
            self.deployment.write(name, text)
            self.units[name] = text
        self.converge()

    def push_puller(self) -> None:
        self.version += 1
        payload = secrets.token_bytes(PAYLOAD_BYTES)
        self.registry.push("faults/puller", str(self.version), [file("payload", payload)])

    # one round --------------------------------------------------------------------------------

    def round(self, rng: random.Random) -> Round:
        before = {
            name: int(unit["pid"])
            for name, unit in self.deployment.units().items()
            if unit["state"] == "running" and unit["pid"] and self.SURVIVORS
        }
        action, touched = self.act(rng)
        time.sleep(rng.uniform(0.0, 1.5))
        downtime = self.fault(action, rng)
        converged = self.converge()
        found = check(
            observe(self.deployment), self.units, before, touched, self.deployment.state_dir
        )
        found.action, found.touched = action, touched
        found.downtime, found.converged = downtime, converged
        return found

    def fault(self, action: str, rng: random.Random) -> float:
        """The round's fault (here kill -9 of the agent); the agent's downtime in seconds."""
        return self.kill(adopting=action == ADOPTION, rng=rng)

    def act(self, rng: random.Random) -> tuple[str, set[str]]:
        choice = rng.choice(["edit", "edit", "replace a unit", "update", "adoption"])
        if choice == "edit":
            self.generation += 1
            names = rng.sample(sorted(n for n in self.units if kind_of(n) in KINDS), 3)
            for name in names:
                self.units[name] = KINDS[kind_of(name)](self.generation)
                self.deployment.write(name, self.units[name])
            return f"edit {' '.join(names)}", set(names)
        if choice == "replace a unit":
            gone = rng.choice(sorted(n for n in self.units if kind_of(n) in KINDS))
            self.added += 1
            kind = kind_of(gone)
            new = f"{kind}{6 + self.added}"
            self.deployment.delete(gone)
            del self.units[gone]
            self.units[new] = KINDS[kind](0)
            self.deployment.write(new, self.units[new])
            return f"delete {gone}, add {new}", {gone, new}
        if choice == "update":
            self.push_puller()
            argv = [self.deployment.quayctl, "--run-dir", RUN_DIR, "update", PULLER]
            self.host.run(argv, check=False, timeout=60)
            return f"update {PULLER} to v{self.version}", {PULLER}
        return ADOPTION, set()

    def kill(self, *, adopting: bool, rng: random.Random) -> float:
        """kill -9 the agent (again while it adopts, when ``adopting``); the seconds until a new
        one answers."""
        pid = self.deployment.main_pid()
        if adopting:
            self.host.run(["kill", "-KILL", str(pid)], check=False)
            pid = wait_until(
                "a new quayd", lambda: (p := self.deployment.main_pid()) not in (0, pid) and p
            )
            time.sleep(rng.uniform(0.0, 0.5))
        killed = time.monotonic()
        self.host.run(["kill", "-KILL", str(pid)], check=False)
        wait_until("a new quayd", lambda: self.deployment.main_pid() not in (0, pid), timeout=60)
        wait_until("the agent answering", lambda: self.deployment.status().get("agent"), 60)
        return time.monotonic() - killed

    def converge(self) -> float:
        """Wait until every unit but the crash-looping one runs and is ready, the status has no
        other unit, and the puller runs the last version pushed; the seconds it took."""
        began = time.monotonic()

        missing: list[str] = []

        def done() -> bool:
            missing[:] = self.not_converged()
            return not missing

        try:
            wait_until("every unit back", done, timeout=CONVERGE_TIMEOUT)
        except AssertionError:
            names = [n for n in self.units if any(m.startswith(f"{n}:") for m in missing)]
            raise AssertionError(
                f"not converged after {CONVERGE_TIMEOUT:.0f} s: {missing}\n"
                + self.deployment.diagnosis(*names)
            ) from None
        return time.monotonic() - began

    def not_converged(self) -> list[str]:
        """What still differs from the files: empty once converged."""
        units = self.deployment.units()
        differs = [f"unit {n} not in status" for n in sorted(set(self.units) - set(units))]
        differs += [f"unit {n} in status only" for n in sorted(set(units) - set(self.units))]
        for name, unit in sorted(units.items()):
            if name != CRASHER and not (unit["state"] == "running" and unit["ready"]):
                differs.append(
                    f"{name}: {unit['state']}, ready {unit['ready']}: {unit.get('detail')}"
                )
        if differs:
            return differs
        version = self.puller_version()
        if version not in (self.accepted or {self.version}):
            return [f"{PULLER} runs v{version}, not {sorted(self.accepted or {self.version})}"]
        return []

    def puller_version(self) -> int | None:
        done = self.deployment.api(
            "POST", f"/v1/units/{PULLER}/exec", {"argv": ["cat", "/version"]}
        )
        try:
            return int(str(done.get("stdout", "")).strip())
        except ValueError:
            return None


def observe(deployment: Deployment) -> Observed:
    """What the host has of quay's, for :func:`check`."""
    host, state = deployment.host, deployment.state_dir

    def listing(directory: PurePosixPath) -> list[str]:
        done = host.run(["ls", "-A", str(directory)], check=False)
        return done.stdout.split() if done.returncode == 0 else []

    runtime = host.run(["crun", "--root", f"{RUN_DIR}/crun", "list", "-q"], check=False)
    scopes = host.systemctl(
        "list-units", "--all", "--type=scope", "--no-legend", "--plain", "quay-*", check=False
    ).stdout
    links = host.run(["ip", "-o", "link", "show"]).stdout
    leases_text = host.read_file(str(state / "net" / "leases.json")) or '{"leases": {}}'
    return Observed(
        units=deployment.units(),
        containers=runtime.stdout.split(),
        scopes={line.split()[0] for line in scopes.splitlines() if line.strip()},
        container_dirs=set(listing(state / "containers")),
        mounts=[
            line.split(" ")[4]
            for line in host.run(["cat", "/proc/self/mountinfo"]).stdout.splitlines()
        ],
        veths={
            line.split(":")[1].strip().split("@")[0]
            for line in links.splitlines()
            if line.split(":")[1].strip().startswith("qv-")
        },
        leases=set(json.loads(leases_text)["leases"]),
        netns=set(listing(PurePosixPath(RUN_DIR) / "netns")),
        partials=listing(state / "images" / "ingest"),
        staging=[n for n in listing(state / "images" / "layers") if n.startswith(".staging-")],
    )


def campaign(
    deployment: Deployment,
    registry: Registry,
    kills: int,
    seed: int,
    *,
    log: Callable[[str], None] = print,
    kind: type[Campaign] = Campaign,
) -> CrashReport:
    """``kills`` rounds of ``kind`` on ``deployment`` (its units written here), seeded."""
    rng = random.Random(seed)
    work = kind(deployment, registry)
    work.start()
    report = CrashReport()
    for number in range(1, kills + 1):
        try:
            done = work.round(rng)
        except AssertionError as error:  # not converged: the campaign's finding, and its end
            report.rounds.append(Round(action=f"round {number}", lost=[str(error)]))
            log(f"{kind.FAULT} {number}/{kills}: FOUND {error}")
            break
        report.rounds.append(done)
        log(
            f"{kind.FAULT} {number}/{kills}: {done.action}; back in {done.downtime:.1f} s, "
            f"converged in {done.converged:.1f} s" + ("" if done.clean else f"; FOUND {done}")
        )
    return report
