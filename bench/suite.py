"""Every scenario of issue 8, once, in one systemd host; writes docs/benchmarks.md.

    python -m bench all [--quick] [--source DIR] [--out PATH] [--json PATH]

Installs what is missing (Debian's podman, crun, skopeo, umoci, docker-registry, gcc,
busybox-static), boots one throwaway systemd host (tests.support.systemd_host), and runs there,
quay and each peer alternately (A B A B …):

1. **start**: unit file renamed into the config dir → the container's process ran (bridge, host
   network; and → ready for a ``[ready] mode = "notify"`` unit whose container sends READY=1), vs
   ``podman run -d`` (bridge, ``--network host``) and raw ``crun run -d`` of the same busybox
   (the floor). Timed as in bench/agent.py: the container touches a file on a bind mount; its
   mtime minus a timestamp taken right before the action. Ready: quayd's "ready" log line.
2. **pull**: cold pull of a ~100 MB 5-layer image and of a one-layer busybox, and a re-pull where
   only the top layer changed, vs ``podman pull`` and ``skopeo copy`` + ``umoci unpack``, from a
   docker-registry inside the host (bench/pull.py's images).
3. **scale**: N units dropped at once → all running and ready; all deleted → units and scopes gone;
   vs ``podman run -d`` N times in a shell loop, then ``podman rm -f -a``.
4. **restart**: ``kill -9`` of the container's process → its next process ran (policy always,
   backoff 0) vs podman ``--restart=always``.
5. **footprint**: quayd's RSS and CPU seconds per minute idle with 0, 50 and 100 containers;
   ``kill -9`` quayd with 100 running → all adopted (same PIDs); quayd's cold start (process
   started → its "agent ready" log line) and ``quayctl status`` against it (vs ``podman ps``).

``--this-host`` runs it all on this machine's own systemd instead (refused unless PID 1 is
systemd; bench/hosts.py): in a VM guest, where a host nested in namespaces would measure the
nesting (the VM test host: a Debian 12 guest with cgroup v2).
``--source DIR`` measures quayd and quayctl from DIR (``git archive HEAD quayd | tar -x -C DIR``).
Missed goals get a profile in the report. Numbers, not assertions: never part of the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import agent, pull
from bench.agent import IMAGE, Bench, log, mark_time, percentile, quay_unit, wait_until
from bench.hosts import BenchHost, LocalHostError, cgroup_fs, local_host, local_refusal
from bench.report import render
from tests.support.registry import _registry_config
from tests.support.systemd_host import REPO, systemd_host

PACKAGES = {
    "podman": "podman",
    "crun": "crun",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "docker-registry": "docker-registry",
    "gcc": "gcc",
    "busybox": "busybox-static",
}
"""Command → the Debian package that brings it."""
OUT = REPO / "docs" / "benchmarks.md"
HOST_KINDS = {
    False: "a throwaway systemd host in namespaces",
    True: "this machine's own systemd (--this-host)",
}
REGISTRY_PORT = 5000
"""docker-registry's port on the host's own loopback (a fresh network namespace)."""


def ensure_packages(packages: Mapping[str, str] = PACKAGES) -> None:
    """apt-get install the packages of ``packages`` (command → package) whose command is missing."""
    missing = sorted({pkg for cmd, pkg in packages.items() if shutil.which(cmd) is None})
    if missing:
        log(f"installing {' '.join(missing)}")
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def stats(values: list[float]) -> dict[str, Any]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "runs": values}


@dataclass
class Suite:
    bench: Bench
    quick: bool
    tools_dir: Path

    @property
    def host(self) -> BenchHost:
        return self.bench.host

    def timed(self, argv: list[str], timeout: float = 600.0) -> float:
        """Seconds ``argv`` took, timed inside the host (no nsenter in the figure)."""
        t0, t1 = self.bench.in_host(argv, timeout=timeout)
        return (t1 - t0) / 1e9


# --- setup ---------------------------------------------------------------------------------------


def build_sd_notify(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(directory / "sd_notify"),
         str(REPO / "tests" / "support" / "sd_notify.c")],
        check=True,
    )  # fmt: skip


def log_events(bench: Bench, event: str) -> list[tuple[str, float]]:
    """(unit, epoch seconds) of each of quayd's JSON log lines for ``event``, in order."""
    found: list[tuple[str, float]] = []
    for line in bench.agent_log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            stamp = datetime.fromisoformat(entry["timestamp"]).timestamp()
            found.append((str(entry.get("unit", "")), stamp))
    return found


def event_time(bench: Bench, event: str, unit: str, timeout: float = 30.0) -> float:
    def find() -> float | None:
        for name, stamp in log_events(bench, event):
            if name == unit:
                return stamp
        return None

    value: float = wait_until(f"{event} of {unit} in quayd's log", find, timeout, every=0.02)
    return value


# --- 1. start ------------------------------------------------------------------------------------


def start(suite: Suite, runs: int) -> dict[str, list[float]]:
    bench = suite.bench
    results: dict[str, list[float]] = {
        name: []
        for name in (
            "quay",
            "podman",
            "quay (host net)",
            "podman (host net)",
            "crun run",
            "quay notify: running",
            "quay notify: ready",
        )
    }
    notify = '[ready]\nmode = "notify"\ntimeout = "30s"\n'
    for run in range(runs):
        for network, label in (("bridge", "quay"), ("host", "quay (host net)")):
            run_id = f"q{network[0]}{run}"
            results[label].append(bench.quay_start(f"st{run_id}", run_id, network=network))
        for network, label in (("bridge", "podman"), ("host", "podman (host net)")):
            run_id = f"p{network[0]}{run}"
            results[label].append(bench.podman_start(f"st{run_id}", run_id, network))
        results["crun run"].append(bench.crun_start(f"stc{run}", f"c{run}"))

        run_id = f"n{run}"
        text = quay_unit(
            ["sh", "-c", f"touch /marks/{run_id}; exec /tools/sd_notify READY=1 sleep 1000"],
            mark=bench.marks,
            binds={suite.tools_dir: "/tools"},
            extra=notify,
        )
        t0 = bench.write_unit(f"st{run_id}", text)
        results["quay notify: running"].append((mark_time(bench.marks / run_id) - t0) / 1e9)
        ready = event_time(bench, "ready", f"st{run_id}")
        results["quay notify: ready"].append(ready - t0 / 1e9)
        bench.delete_units([f"st{run_id}"])
        log(
            f"start {run + 1}/{runs}: "
            + "  ".join(f"{tool} {values[-1]:.3f}" for tool, values in results.items())
        )
    return results


# --- 2. pull -------------------------------------------------------------------------------------


@contextlib.contextmanager
def host_registry(host: BenchHost, directory: Path) -> Iterator[str]:
    """docker-registry inside the host, on its loopback; stopped (by PID) on exit."""
    directory.mkdir(parents=True)
    (directory / "storage").mkdir()
    config = directory / "config.yml"
    config.write_text(_registry_config(directory / "storage", REGISTRY_PORT, None, None, None))
    with open(directory / "registry.log", "wb") as out:
        process = subprocess.Popen(
            [*host.nsenter(), "docker-registry", "serve", str(config)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    address = f"127.0.0.1:{REGISTRY_PORT}"
    probe = (
        "import sys, time, urllib.request\n"
        "for _ in range(300):\n"
        "    try:\n"
        f"        urllib.request.urlopen('http://{address}/v2/', timeout=1); sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    try:
        host.run(["/usr/bin/python3", "-c", probe], timeout=60)
        yield address
    finally:
        child = agent.running_pid(host, process)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def pull_runs(suite: Suite, runs: int, big_mb: int) -> dict[str, Any]:
    bench = suite.bench
    work = bench.root / "pull"
    work.mkdir()
    results: dict[str, dict[str, list[float]]] = {}
    counter = [0]

    def in_host(command: list[str]) -> object:
        return suite.host.run(command, timeout=300)

    def fresh(tool: str) -> Path:
        counter[0] += 1
        directory = work / f"{counter[0]}-{tool}"
        directory.mkdir()
        return directory

    running: list[list[str]] = []  # the options that reach the running quayd (below)

    def quay(reference: str, first: str | None) -> float:
        return quay_pull_running(suite, running[0], reference, first)

    def quay_fresh(reference: str, first: str | None) -> float:
        return quay_pull(suite, fresh("quay"), reference, first)

    def quay_local(reference: str, first: str | None) -> float:
        return quay_pull_local(suite, fresh("local"), reference, first)

    def podman(reference: str, first: str | None) -> float:
        directory = fresh("podman")
        base = ["podman", "--root", str(directory / "root"), "--runroot",
                f"/run/bp{counter[0]}", "--storage-driver", "overlay", "pull", "--quiet",
                "--tls-verify=false"]  # fmt: skip
        if first:
            in_host([*base, first])
        seconds = suite.timed([*base, reference])
        suite.host.run(["umount", str(directory / "root" / "overlay")], check=False)
        suite.host.run(["rm", "-rf", "--one-file-system", str(directory), f"/run/bp{counter[0]}"])
        return seconds

    def skopeo_umoci(reference: str, first: str | None) -> float:
        directory = fresh("skopeo")
        layout = directory / "oci"

        def script(ref: str, tag: str) -> list[str]:
            return [
                "sh", "-c",
                "skopeo copy --quiet --src-tls-verify=false \"$1\" \"$2\" && "
                "umoci unpack --image \"$3\" \"$4\" >/dev/null",
                "-", f"docker://{ref}", f"oci:{layout}:{tag}", f"{layout}:{tag}",
                str(directory / f"bundle-{tag}"),
            ]  # fmt: skip

        if first:
            in_host(script(first, "first"))
        seconds = suite.timed(script(reference, "timed"))
        suite.host.run(["rm", "-rf", "--one-file-system", str(directory)])
        return seconds

    def quay_in_process(reference: str, first: str | None) -> float:
        directory = fresh("inproc")
        done = suite.host.run(
            [sys.executable, "-c", pull.IN_PROCESS, str(agent.SOURCE[0]), first or "", reference,
             str(directory / "state")],
            timeout=300,
        )  # fmt: skip
        suite.host.run(["rm", "-rf", "--one-file-system", str(directory)])
        return float(done.stdout.split()[-1])

    tools = {
        "quay": quay,
        "quay (fresh quayd)": quay_fresh,
        "quay --local": quay_local,
        "quay (in-process)": quay_in_process,
        "podman": podman,
        "skopeo+umoci": skopeo_umoci,
    }
    with (
        host_registry(suite.host, bench.root / "registry") as address,
        pull_agent(suite, fresh("agent")) as options,
    ):
        running.append(options)
        log(f"pull: building the images ({big_mb} MB) and pushing them")
        targets = pull.build_images(work, address, big_mb, in_host)
        profiles = {
            scenario: pull_profile(suite, targets[scenario], work / f"profile-{scenario}")
            for scenario in ("cold-big", "cold-busybox")
        }
        for scenario, reference in targets.items():
            first = targets["cold-big"] if scenario == "top-changed" else None
            for run in range(runs):
                for tool, runner in tools.items():
                    results.setdefault(scenario, {}).setdefault(tool, []).append(
                        runner(reference, first)
                    )
                took = "  ".join(f"{t} {results[scenario][t][-1]:.3f}" for t in tools)
                log(f"pull {scenario} {run + 1}/{runs}: {took}")
    return {
        "big_mb": big_mb,
        "profiles": profiles,
        "scenarios": {
            scenario: {tool: stats(values) for tool, values in tools_.items()}
            for scenario, tools_ in results.items()
        },
    }


def quay_pull_running(suite: Suite, options: list[str], reference: str, first: str | None) -> float:
    """``quayctl image pull`` as an operator runs it: quayd runs (one for all the runs, its
    store emptied before each: ``image prune --unused`` with no units) and the command asks it
    to pull."""
    base = [*agent.quayctl_argv(), *options, "image"]
    suite.host.run([*base, "prune", "--unused"], timeout=300)
    if first:
        suite.host.run([*base, "pull", "-q", first], timeout=300)
    return suite.timed([*base, "pull", "-q", reference])


def quay_pull(suite: Suite, directory: Path, reference: str, first: str | None) -> float:
    """The same with a quayd started for this run alone: its first pull also loads the HTTP
    stack (httpx, the pull and unpack modules), which quayd imports at its first pull only."""
    with pull_agent(suite, directory) as options:
        base = [*agent.quayctl_argv(), *options, "image", "pull", "-q"]
        if first:
            suite.host.run([*base, first], timeout=300)
        seconds = suite.timed([*base, reference])
    suite.host.run(["rm", "-rf", "--one-file-system", str(directory)])
    return seconds


def quay_pull_local(suite: Suite, directory: Path, reference: str, first: str | None) -> float:
    """``quayctl image pull --local``: the command pulls in its own process (no agent)."""
    settings = directory / "quayd.toml"
    settings.write_text("")
    base = [*agent.quayctl_argv(), "--config", str(settings), "--state-dir",
            str(directory / "state"), "image", "pull", "-q", "--local"]  # fmt: skip
    if first:
        suite.host.run([*base, first], timeout=300)
    seconds = suite.timed([*base, reference])
    suite.host.run(["rm", "-rf", "--one-file-system", str(directory)])
    return seconds


def pulls(suite: Suite, quick: bool) -> dict[str, Any]:
    """The pull scenarios, with the bench's main quayd stopped meanwhile (see pull_agent)."""
    suite.bench.stop_quayd()
    try:
        return pull_runs(suite, 1 if quick else 5, 20 if quick else 100)
    finally:
        suite.bench.start_quayd()
        wait_until("quayd answering", suite.bench.status, 30)


@contextlib.contextmanager
def pull_agent(suite: Suite, directory: Path) -> Iterator[list[str]]:
    """A quayd of its own in ``directory`` (empty store, no units) for one pull run; yields the
    quayctl options that reach it. The bench's main quayd is stopped meanwhile (see run): two
    agents would each claim the bridge and its ruleset."""
    for sub in ("etc", "state"):
        (directory / sub).mkdir()
    # Its run dir in the host's own /run: quayd makes RUN/netns a shared mount, which
    # `rm -rf --one-file-system` of the run's directory would refuse to cross.
    run_dir = Path("/run") / f"quay-bench-{directory.name}"
    out = open(directory / "quayd.log", "ab")  # noqa: SIM115 (kept open by the child)
    process = subprocess.Popen(
        [*suite.host.nsenter(), *agent.quayd_argv(), "--state-dir", str(directory / "state"),
         "--config-dir", str(directory / "etc"), "--run-dir", str(run_dir)],
        stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    out.close()
    status = [*agent.quayctl_argv(), "--run-dir", str(run_dir), "status", "--json"]
    try:
        wait_until(
            "the pull's quayd answering",
            lambda: suite.host.run(status, check=False).returncode == 0,
            timeout=30,
        )
        yield [
            "--run-dir", str(run_dir), "--state-dir", str(directory / "state"),
            "--config-dir", str(directory / "etc"),
        ]  # fmt: skip
    finally:
        inner = agent.running_pid(suite.host, process)
        if inner is not None:
            os.kill(inner, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            if inner is not None:
                os.kill(inner, signal.SIGKILL)
            process.wait(timeout=10)
        suite.host.run(["umount", str(run_dir / "netns")], check=False)
        suite.host.run(["rm", "-rf", "--one-file-system", str(run_dir)], check=False)


PULL_PROFILE = """
import cProfile, io, pstats, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from quayd.images.pull import pull
from quayd.images.registry import RegistryClient
from quayd.images.store import Store
store = Store(Path(sys.argv[3]))
with RegistryClient() as client:
    profiler = cProfile.Profile()
    profiler.enable()
    pull(sys.argv[2], store=store, client=client)
    profiler.disable()
out = io.StringIO()
stats = pstats.Stats(profiler, stream=out)
stats.sort_stats("tottime").print_stats(12)
print(out.getvalue())
"""


def pull_profile(suite: Suite, reference: str, directory: Path) -> str:
    """cProfile of one cold pull of ``reference`` in-process: the 12 functions with the most own
    time (wall-clock totals are for the main thread)."""
    directory.mkdir()
    done = suite.host.run(
        [sys.executable, "-c", PULL_PROFILE, str(agent.SOURCE[0]), reference,
         str(directory / "state")],
        timeout=300,
    )  # fmt: skip
    suite.host.run(["rm", "-rf", "--one-file-system", str(directory)])
    text = done.stdout
    start = text.find("   ncalls")
    head = [line for line in text.splitlines() if "function calls" in line]
    body = text[start:] if start >= 0 else text
    body = body.replace(str(agent.SOURCE[0]) + "/", "")
    return "\n".join([*head, body.rstrip()])


def scale_profile(bench: Bench, prefix: str) -> dict[str, float]:
    """From quayd's log, one scale run: when the starts happened, counted from the first
    start action, and how long each took from its action to its "started" line."""
    actions: dict[str, float] = {}
    started: dict[str, float] = {}
    for unit, stamp in log_events(bench, "action"):
        if unit.startswith(prefix):
            actions.setdefault(unit, stamp)
    for unit, stamp in log_events(bench, "started"):
        if unit.startswith(prefix):
            started.setdefault(unit, stamp)
    if not actions or not started:
        return {}
    first = min(actions.values())
    gaps = [started[u] - actions[u] for u in started if u in actions]
    return {
        "first_action_s": 0.0,
        "last_action_s": max(actions.values()) - first,
        "first_started_s": min(started.values()) - first,
        "last_started_s": max(started.values()) - first,
        "action_to_started_p50_s": statistics.median(gaps),
        "action_to_started_max_s": max(gaps),
    }


# --- 3. scale ------------------------------------------------------------------------------------


def scale_quay(suite: Suite, count: int, network: str, run: int) -> tuple[float, float]:
    bench = suite.bench
    names = [f"sc{run}x{i:03d}" for i in range(count)]
    text = quay_unit(["sleep", "1000"], network=network)
    staging = bench.root / "staging"
    staging.mkdir(exist_ok=True)
    for name in names:
        (staging / f"{name}.toml").write_text(text)
    t0 = time.monotonic()
    for name in names:
        (staging / f"{name}.toml").rename(bench.config_dir / f"{name}.toml")

    def all_ready() -> bool:
        units = bench.units()
        return all(
            n in units and units[n]["state"] == "running" and units[n]["ready"] for n in names
        )

    wait_until(f"{count} running and ready", all_ready, 600, every=0.05)
    up = time.monotonic() - t0
    t0 = time.monotonic()
    seen = len(log_events(bench, "removed"))
    bench.delete_units(names, timeout=600)
    wait_removed(bench, names, seen)
    gone = time.monotonic() - t0
    return up, gone


def wait_removed(bench: Bench, names: list[str], seen: int) -> None:
    """Until quayd logged "removed" for each of ``names`` (after the first ``seen`` such lines):
    its clean-up (records, mounts, network) is done, not only the processes."""

    def done() -> bool:
        return set(names) <= {unit for unit, _ in log_events(bench, "removed")[seen:]}

    wait_until(f"quayd's removal of {len(names)} units", done, 600, every=0.1)


def scale_podman(suite: Suite, count: int, network: str, run: int) -> tuple[float, float]:
    bench = suite.bench
    prefix = f"sc{run}p"
    argv = bench.podman("run", "-d", "--network", network, "--name", "NAME", IMAGE, "sleep", "1000")
    one = " ".join(f'{prefix}"$i"' if a == "NAME" else shlex.quote(a) for a in argv)
    loop = f"for i in $(seq 1 {count}); do {one} >/dev/null || exit 1; done"
    up = suite.timed(["sh", "-c", loop])
    listed = suite.host.run(bench.podman("ps", "-q", "--filter", "status=running")).stdout
    running = len(listed.split())
    if running != count:
        raise RuntimeError(f"podman: {running} of {count} running after the loop")
    gone = suite.timed(bench.podman("rm", "-f", "-t", "0", "-a"))
    left = suite.host.run(bench.podman("ps", "-a", "-q")).stdout.split()
    if left:
        raise RuntimeError(f"podman rm -a left {left}")
    return up, gone


def scale(
    suite: Suite, count: int, runs: int
) -> tuple[dict[str, dict[str, list[float]]], list[dict[str, float]]]:
    """Per tool, the "up" and "gone" times; and per quay run, its starts from quayd's log."""
    results: dict[str, dict[str, list[float]]] = {
        "quay": {"up": [], "gone": []},
        "podman loop": {"up": [], "gone": []},
    }
    quay_log: list[dict[str, float]] = []
    for run in range(runs):
        for tool, runner in (("quay", scale_quay), ("podman loop", scale_podman)):
            before = passes(suite.bench)
            up, gone = runner(suite, count, "bridge", run)
            if tool == "quay":
                found = scale_profile(suite.bench, f"sc{run}x")
                after = passes(suite.bench)
                found["passes"] = after - before if after >= before else float("nan")
                found["passes_before"], found["passes_after"] = before, after
                quay_log.append(found)
            results[tool]["up"].append(up)
            results[tool]["gone"].append(gone)
            log(f"scale {run + 1}/{runs} {tool}: {count} up {up:.2f} s, gone {gone:.2f} s")
    return results, quay_log


def scale_under_profiler(suite: Suite, count: int) -> dict[str, Any]:
    """One more quay scale run under a quayd with timers around the pieces of a start
    (bench/agent.py's ``PROFILED``): per piece, calls, summed seconds, p50 and max."""
    bench = suite.bench
    bench.stop_quayd()
    timings = bench.root / "scale-profile.jsonl"
    bench.start_quayd(
        [sys.executable, "-c", agent.PROFILER, str(timings), json.dumps(agent.PROFILED),
         str(agent.SOURCE[0])],
    )  # fmt: skip
    wait_until("profiled quayd answering", bench.status, 30)
    up, _ = scale_quay(suite, count, "bridge", 9)
    bench.stop_quayd()
    per: dict[str, list[float]] = {}
    first, last = float("inf"), 0.0
    for line in timings.read_text().splitlines():
        label, start_ns, end_ns, _thread = json.loads(line)
        per.setdefault(label, []).append((end_ns - start_ns) / 1e9)
        if label == "Executor.start":
            first, last = min(first, start_ns / 1e9), max(last, end_ns / 1e9)
    pieces = {
        label: {
            "calls": len(v),
            "sum_s": sum(v),
            "p50_s": statistics.median(v),
            "max_s": max(v),
        }
        for label, v in per.items()
    }
    log(f"profiled scale: {count} up in {up:.2f} s")
    return {
        "units": count,
        "up_s": up,
        "starts_window_s": last - first if last else 0.0,
        "pieces": dict(sorted(pieces.items(), key=lambda kv: -kv[1]["sum_s"])),
    }


def passes(bench: Bench) -> int:
    """quayd's pass counter (0 when status does not answer within 10 s)."""
    try:
        status: dict[str, Any] = wait_until("status", bench.status, 10, every=0.1)
    except RuntimeError:
        return 0
    return int(status.get("agent", {}).get("passes", 0))


# --- 4. restart ----------------------------------------------------------------------------------


def _new_mark(marks: Path, prefix: str, seen: set[str], timeout: float) -> int:
    def find() -> Path | None:
        for path in marks.glob(f"{prefix}.*"):
            if path.name not in seen:
                return path
        return None

    found: Path = wait_until(f"a new {prefix} mark", find, timeout, every=0.005)
    seen.add(found.name)
    return found.stat().st_mtime_ns


def restart(suite: Suite, runs: int) -> dict[str, list[float]]:
    bench = suite.bench
    results: dict[str, list[float]] = {"quay": [], "podman": []}
    command = ["sh", "-c", "mktemp /marks/{p}.XXXXXX >/dev/null; exec sleep 1000"]
    text = quay_unit(
        [*command[:2], command[2].format(p="rq")],
        mark=bench.marks,
        extra='[restart]\npolicy = "always"\nbackoff = "0s"\nbackoff_max = "0s"\n',
    )
    seen_q: set[str] = set()
    seen_p: set[str] = set()
    bench.write_unit("crashy", text)
    _new_mark(bench.marks, "rq", seen_q, 60)
    suite.host.run(
        bench.podman(
            "run", "-d", "--restart=always", "--name", "crashy", "-v", f"{bench.marks}:/marks",
            IMAGE, *command[:2], command[2].format(p="rp"),
        )
    )  # fmt: skip
    _new_mark(bench.marks, "rp", seen_p, 60)

    def quay_pid() -> int | None:
        unit = bench.units().get("crashy")
        if unit and unit["state"] == "running" and unit["pid"]:
            return int(unit["pid"])
        return None

    def podman_pid() -> int | None:
        done = suite.host.run(
            bench.podman("inspect", "-f", "{{.State.Running}} {{.State.Pid}}", "crashy"),
            check=False,
        )
        words = done.stdout.split()
        return int(words[1]) if done.returncode == 0 and words and words[0] == "true" else None

    last = {"quay": 0, "podman": 0}
    for run in range(runs):
        for tool, pid_of, prefix, seen in (
            ("quay", quay_pid, "rq", seen_q),
            ("podman", podman_pid, "rp", seen_p),
        ):

            def again(pid_of: Any = pid_of, tool: str = tool) -> int | None:
                pid: int | None = pid_of()
                return pid if pid and pid != last[tool] else None

            pid: int = wait_until(f"{tool}'s container running again", again, 60, every=0.05)
            last[tool] = pid
            t0, _ = bench.in_host(["kill", "-9", str(pid)])
            try:
                results[tool].append((_new_mark(bench.marks, prefix, seen, 60) - t0) / 1e9)
            except RuntimeError as error:
                log(f"restart {tool}: {error}")
                results[tool].append(float("nan"))
        log(
            f"restart {run + 1}/{runs}: "
            + "  ".join(f"{t} {v[-1]:.3f}" for t, v in results.items())
        )
    bench.delete_units(["crashy"])
    suite.host.run(bench.podman("rm", "-f", "-t", "0", "crashy"))
    return results


# --- 5. footprint --------------------------------------------------------------------------------


def idle_sample(bench: Bench, count: int, seconds: float) -> dict[str, Any]:
    time.sleep(2.0)  # let the passes that follow the starts settle
    assert bench.quayd_pid is not None
    before = agent.sample(bench.quayd_pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = agent.sample(bench.quayd_pid)
    elapsed = time.monotonic() - t0
    cpu = (after.cpu_ticks - before.cpu_ticks) / agent.CLK_TCK
    memory = smaps(bench.quayd_pid)
    result = {
        "pss_mib": memory.get("Pss", 0) / 1024,
        "private_mib": (memory.get("Private_Clean", 0) + memory.get("Private_Dirty", 0)) / 1024,
        "containers": count,
        "seconds": elapsed,
        "cpu_s_per_min": cpu / elapsed * 60,
        "cpu_percent": 100 * cpu / elapsed,
        "rss_mib": after.rss_kb / 1024,
        "wakeups_per_s": (after.switches - before.switches) / elapsed,
        "threads": len(after.threads),
    }
    log(
        f"idle with {count}: {result['cpu_s_per_min']:.3f} CPU s/min, "
        f"rss {result['rss_mib']:.1f} MiB, {result['wakeups_per_s']:.1f} wake-ups/s"
    )
    return result


def smaps(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in KiB: Rss, Pss (shared pages divided among their users),
    Private_Clean and Private_Dirty (pages only this process maps)."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            words = line.split()
            if len(words) >= 2 and words[1].isdigit():
                found[words[0].rstrip(":")] = int(words[1])
    return found


def add_units(bench: Bench, names: list[str], network: str) -> None:
    text = quay_unit(["sleep", "100000"], network=network)
    for name in names:
        bench.write_unit(name, text)


def running_pids(bench: Bench, names: list[str]) -> dict[str, int] | None:
    units = bench.units()
    pids = {n: units[n]["pid"] for n in names if n in units and units[n]["state"] == "running"}
    return pids if len(pids) == len(names) else None


def all_running(bench: Bench, names: list[str]) -> bool:
    return running_pids(bench, names) is not None


def footprint(suite: Suite, counts: list[int], seconds: float, network: str) -> dict[str, Any]:
    bench = suite.bench
    idle: list[dict[str, Any]] = []
    names: list[str] = []
    for count in counts:
        more = [f"idle{i:03d}" for i in range(len(names), count)]
        add_units(bench, more, network)
        names += more
        wanted = list(names)
        wait_until(
            f"{count} running", functools.partial(all_running, bench, wanted), 600, every=0.1
        )
        idle.append(idle_sample(bench, count, seconds))
    pids: dict[str, int] = running_pids(bench, names) or {}
    bench.kill_quayd()
    t0 = time.monotonic()
    bench.start_quayd()
    adopted: dict[str, int] = wait_until(
        "adopted", lambda: running_pids(bench, names), 300, every=0.02
    )
    adoption = time.monotonic() - t0
    changed = sorted(n for n in names if adopted.get(n) != pids.get(n))
    log(f"kill -9 with {len(names)}: all adopted after {adoption:.2f} s, {len(changed)} new PIDs")
    after_adoption = idle_sample(bench, len(names), min(seconds, 10.0))
    seen = len(log_events(bench, "removed"))
    bench.delete_units(names, timeout=600)
    wait_removed(bench, names, seen)
    return {
        "network": network,
        "idle": idle,
        "adoption_s": adoption,
        "adopted_units": len(names),
        "changed_pids": changed,
        "after_adoption": after_adoption,
    }


def cold_start(suite: Suite, runs: int) -> dict[str, list[float]]:
    """quayd process started → its "agent ready" line; ``quayctl status`` vs ``podman ps``."""
    bench = suite.bench
    results: dict[str, list[float]] = {"quayd": [], "quayctl status": [], "podman ps": []}
    for run in range(runs):
        bench.stop_quayd()
        seen = len(log_events(bench, "agent ready"))
        t0 = time.time()
        bench.start_quayd()
        ready = functools.partial(_nth_ready, bench, seen)
        stamp: float = wait_until("agent ready", ready, 60, every=0.02)
        results["quayd"].append(stamp - t0)
        wait_until("quayd answering", bench.status, 30)
        log(f"quayd cold start {run + 1}/{runs}: {results['quayd'][-1]:.3f} s")
    status = [*agent.quayctl_argv(), "--run-dir", agent.RUN_DIR, "status"]
    for _ in range(runs * 2):
        results["quayctl status"].append(suite.timed(status))
        results["podman ps"].append(suite.timed(bench.podman("ps")))
    log(
        f"quayctl status p50 {statistics.median(results['quayctl status']):.3f} s, "
        f"podman ps p50 {statistics.median(results['podman ps']):.3f} s"
    )
    return results


def _nth_ready(bench: Bench, n: int) -> float | None:
    found = log_events(bench, "agent ready")
    return found[n][1] if len(found) > n else None


# --- profiles ------------------------------------------------------------------------------------

RSS_PROBE = """
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
base = rss()
sys.path.insert(0, sys.argv[1])
sys.modules["rich"] = None  # as quayd's run_agent does (structlog would import it)
import quayd.cli.quayd_main, quayd.agent.agent, quayd.agent.api, quayd.reconcile.executor
print(base, rss())
"""


RSS_BY_PACKAGE = """
import importlib, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
sys.path.insert(0, sys.argv[1])
sys.modules["rich"] = None  # as quayd's run_agent does
AS_QUAYD = {"pyroute2": "quayd.net.pyroute2_light"}  # its rtnetlink modules, not the package
last = rss()
for name in sys.argv[2:]:
    try:
        importlib.import_module(AS_QUAYD.get(name, name))
    except Exception:
        continue
    now = rss()
    print(name, now - last)
    last = now
"""


def memory_profile(suite: Suite) -> dict[str, Any]:
    """RSS of the bare interpreter and after importing quayd's modules (no work done), and what
    each top-level package adds when imported in the order quayd imports them, and as quayd
    imports them (no ``rich``; pyroute2's rtnetlink modules, not the whole package)."""
    src = str(agent.SOURCE[0])
    out = suite.host.run([sys.executable, "-c", RSS_PROBE, src]).stdout.split()
    order = suite.host.run(
        [sys.executable, "-X", "importtime", "-c",
         f"import sys; sys.path.insert(0, {src!r}); import quayd.cli.quayd_main, "
         "quayd.agent.agent, quayd.agent.api, quayd.reconcile.executor"]
    ).stderr  # fmt: skip
    packages: list[str] = []
    for line in order.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            top = parts[2].split(".")[0]
            if top not in packages and not top.startswith("_"):
                packages.append(top)
    deltas = suite.host.run([sys.executable, "-c", RSS_BY_PACKAGE, src, *packages]).stdout
    by_package = {
        line.split()[0]: float(line.split()[1]) for line in deltas.splitlines() if line.strip()
    }
    biggest = dict(sorted(by_package.items(), key=lambda kv: -kv[1])[:10])
    return {
        "interpreter_mib": float(out[0]),
        "after_imports_mib": float(out[1]),
        "by_package_mib": biggest,
    }


def import_profile(suite: Suite, modules: str, runs: int) -> dict[str, Any]:
    """A bare interpreter's start, the same plus importing ``modules`` (from the measured
    source), and the slowest modules to import (own time, ``-X importtime``)."""
    code = f"import sys; sys.path.insert(0, {str(agent.SOURCE[0])!r}); import {modules}"
    bare = [suite.timed([sys.executable, "-c", "pass"]) for _ in range(runs)]
    imports = [suite.timed([sys.executable, "-c", code]) for _ in range(runs)]
    done = suite.host.run([sys.executable, "-X", "importtime", "-c", code])
    top: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[0].isdigit():
            top.append((int(parts[0]), parts[2]))  # each module's own import time, µs
    top.sort(reverse=True)
    return {
        "modules": modules,
        "interpreter_s": statistics.median(bare),
        "imports_s": statistics.median(imports),
        "top_imports_ms": {name: us / 1000 for us, name in top[:10]},
    }


def check_source(suite: Suite) -> None:
    """quayd must come from the measured source inside the host (not an editable install)."""
    source = str(agent.SOURCE[0])
    code = f"import sys; sys.path.insert(0, {source!r}); import quayd; print(quayd.__file__)"
    found = suite.host.run([sys.executable, "-c", code]).stdout.strip()
    if not found.startswith(source + "/"):
        raise RuntimeError(f"inside the host quayd imports from {found}, not from {source}")


# --- the command ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench all", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke check: under 2 minutes")
    parser.add_argument(
        "--source", type=Path, help="import quayd and quayctl from DIR (an exported commit)"
    )
    parser.add_argument(
        "--commit",
        help="measure this commit: `git archive COMMIT quayd` into a scratch dir, then --source",
    )
    parser.add_argument(
        "--this-host",
        action="store_true",
        help="run on this machine's own systemd (PID 1 must be systemd: a VM guest, say) "
        "instead of a throwaway systemd host in namespaces; what the bench made is removed",
    )
    parser.add_argument(
        "--units",
        type=int,
        help="units at once in the scale scenario, and the footprint's largest count "
        "(default 100; 10 with --quick)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="the report (docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--agent-log", type=Path, help="keep a copy of quayd's log here")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: write the report again from a run's --json (after editing "
        "bench/notes.md or bench/report.py)",
    )
    args = parser.parse_args(argv)
    if args.render:
        args.out.write_text(render(json.loads(args.render.read_text())))
        log(f"wrote {args.out} from {args.render}")
        return 0
    if args.this_host and (reason := local_refusal()) is not None:
        print(f"bench all: {reason}", file=sys.stderr)  # before installing anything
        return 2
    with contextlib.ExitStack() as stack:
        if args.commit:
            args.source = agent.export_commit(stack, args.commit)
        try:
            return run(args)
        except LocalHostError as error:
            print(f"bench all: {error}", file=sys.stderr)
            return 2


def run(args: argparse.Namespace) -> int:
    if args.source:
        agent.SOURCE[0] = args.source.resolve()
        if not args.this_host and agent.hidden_in_host(agent.SOURCE[0]):
            print(f"bench all: {agent.SOURCE[0]} is not visible in the systemd host (its /tmp, "
                  "/run and /var/tmp are its own); use --commit or a dir elsewhere",
                  file=sys.stderr)  # fmt: skip
            return 2
    quick: bool = args.quick
    ensure_packages()
    started = time.monotonic()
    results: dict[str, Any] = {
        "quick": quick,
        "machine": machine(),
        "source": str(agent.SOURCE[0]),
        "commit": commit_of(args.commit, args.source),
    }
    scale_units = args.units or (10 if quick else 100)
    counts = [0, scale_units // 2, scale_units]
    hosting: contextlib.AbstractContextManager[BenchHost] = (
        local_host() if args.this_host else systemd_host()
    )
    with hosting as host:
        results["host"] = host_record(host, this_host=args.this_host)
        bench = Bench(host)
        suite = Suite(bench, quick, bench.root / "tools")
        try:
            check_source(suite)
            bench.setup()
            build_sd_notify(suite.tools_dir)
            bench.start_quayd()
            wait_until("quayd answering", bench.status, 30)
            results["start"] = {k: stats(v) for k, v in start(suite, 3 if quick else 20).items()}
            results["pull"] = pulls(suite, quick)
            scaled, quay_log = scale(suite, scale_units, 1 if quick else 3)
            results["scale"] = {
                "units": scale_units,
                "tools": {
                    tool: {k: stats(v) for k, v in item.items()} for tool, item in scaled.items()
                },
                "quay_log": quay_log,
            }
            results["restart"] = {
                k: stats(v) for k, v in restart(suite, 3 if quick else 10).items()
            }
            results["footprint"] = footprint(suite, counts, 5.0 if quick else 60.0, "bridge")
            results["cold"] = {k: stats(v) for k, v in cold_start(suite, 2 if quick else 5).items()}
            results["memory_profile"] = memory_profile(suite)
            results["quayctl_profile"] = import_profile(suite, "quayd.cli.quayctl", 5)
            results["pull_import_profile"] = import_profile(
                suite,
                "quayd.cli.quayctl, quayd.images.pull, quayd.images.registry, quayd.images.store",
                5,
            )
            if not quick:  # where the time goes, met or missed: the notes read these
                log("scale: one more run under a profiled quayd")
                results["scale_profile"] = scale_under_profiler(suite, scale_units)
                log("start: profiling where its time goes")
                results["start_profile"] = agent.profile(bench, 5)
        finally:
            bench.stop_quayd()
            if args.agent_log and bench.agent_log.exists():
                shutil.copyfile(bench.agent_log, args.agent_log)
            with contextlib.suppress(Exception):
                host.run(bench.podman("rm", "-a", "-f", "-t", "0"), check=False)
                host.run(bench.podman("system", "reset", "-f"), check=False, timeout=120)
    results["wall_s"] = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    args.out.write_text(render(results))
    log(f"wrote {args.out} after {results['wall_s']:.0f} s")
    return 0


def host_record(host: BenchHost, *, this_host: bool) -> dict[str, Any]:
    """Which host the run uses and its cgroup layout, for the report."""
    kind = HOST_KINDS[this_host]
    layout = cgroup_fs(host)
    log(f"{kind} up in {host.boot_seconds:.1f} s ({host.state}; /sys/fs/cgroup: {layout})")
    return {"kind": kind, "cgroup_fs": layout, "this_host": this_host}


def machine() -> dict[str, str]:
    def version(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.stdout.splitlines()[0].strip() if done.stdout else "?"

    debian = Path("/etc/debian_version").read_text().strip()
    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1 (hybrid)"
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{int(memory) / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "debian": debian,
        "cgroup": cgroup,
        "python": platform.python_version(),
        "crun": version(["crun", "--version"]),
        "podman": version(["podman", "--version"]),
        "skopeo": version(["skopeo", "--version"]),
        "umoci": version(["umoci", "--version"]),
    }


def commit_of(commit: str | None, source: Path | None) -> str:
    """What was measured: the commit (``--commit``), a directory (``--source``) or the checkout."""
    rev = commit or "HEAD"
    if shutil.which("git") is None:  # a copy of the checkout (a VM guest has no git)
        return f"the tree in {source or REPO}, copied from a checkout"
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    named = done.stdout.strip() or rev
    if commit:
        return f"{named} (`--commit {commit}`)"
    if source:
        return f"the tree in {source} (`--source`)"
    return f"{named} plus the working tree"
