"""Agent benchmark: quayd inside a throwaway systemd host, against podman and raw crun.

    python -m bench agent [--quick] [--runs N] [--json PATH] [--source DIR] [--profile]

Everything runs inside one systemd host (tests.support.systemd_host) booted here; quayd runs in it
as a plain background process (``quayd --state-dir S --config-dir C --run-dir R``, JSON logs to a
file), podman and crun run in it too, with their storage in the host's state dir (so nothing is
left on the machine). ``--source DIR`` imports quayd and quayctl from DIR instead of the checkout
(benchmark a commit while the working tree moves: ``git archive HEAD quayd | tar -x -C DIR``).
Status is read the way an operator reads it: ``quayctl status --json`` inside the host.

1. **start latency**: unit file renamed into the config dir (from a staging dir next to it) /
   ``podman run -d`` started / ``crun --systemd-cgroup run -d`` started → the container's process
   ran. The container runs ``sh -c 'touch /marks/RUNID; exec sleep 1000'`` with a host directory
   bind-mounted at /marks; the time is the file's mtime minus ``time.time_ns()`` taken just
   before the action (no polling bias; the mtime has the kernel's coarse clock granularity, a
   few ms). podman and crun are started by a small launcher already inside the host, which takes
   the timestamp right before it forks the command. Runs alternate quay, podman, crun. quay and
   podman use a bridge network; raw crun gets an empty network namespace and ``crun spec``'s
   defaults (no seccomp filter).
2. **mass start**: 100 units dropped at once → ``status`` shows all running (network "none", then
   "bridge"); then ``kill -9`` quayd, start it again → it answers status with all running,
   adopted (same PIDs: checked). Then the files are deleted → all gone.
3. **idle**: quayd with 50 containers over 60 s: CPU seconds (utime+stime), RSS, wake-ups per
   second (voluntary + involuntary context switches summed over its threads, also per thread),
   and the passes it ran meanwhile.
4. **profile** (when quay's p50 misses the 0.1 s goal, or ``--profile``): quayd is restarted with
   timers wrapped around the pieces of a start (:data:`PROFILED`; quayd's code is untouched) and
   5 more starts say when each piece began, counted from the rename, and how long it took.

Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.hosts import BenchHost
from tests.support.systemd_host import REPO, systemd_host

SOURCE: list[Path] = [REPO]
"""Where quayd and quayctl are imported from (``--source``): the checkout, or an exported commit."""
ENTRY = "import sys; sys.path.insert(0, {source!r}); from quayd.cli.{module} import main; "
ENTRY += "sys.exit(main(sys.argv[1:]))"


def hidden_in_host(path: Path) -> bool:
    """The systemd host has its own /run, /tmp and /var/tmp: a --source there is not the one it
    would import (quayd would silently come from the checkout's editable install instead)."""
    return any(path.is_relative_to(private) for private in ("/run", "/tmp", "/var/tmp"))


def export_commit(stack: contextlib.ExitStack, commit: str) -> Path:
    """``git archive COMMIT quayd`` into a scratch dir below /var/lib (which the systemd host
    sees), removed when ``stack`` closes: the source to measure (``--commit``)."""
    export = Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="quay-bench-src-", dir="/var/lib"))
    )
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "quayd"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(export)], input=archive.stdout, check=True)
    return export


def quayd_argv() -> list[str]:
    return [sys.executable, "-c", ENTRY.format(source=str(SOURCE[0]), module="quayd_main")]


def quayctl_argv() -> list[str]:
    return [sys.executable, "-c", ENTRY.format(source=str(SOURCE[0]), module="quayctl")]


IMAGE = "localhost/busybox:1.36"
RUN_DIR = "/run/quay-bench"
PODMAN_RUNROOT = "/run/bench-podman"
GOAL_SECONDS = 0.1
"""The project's goal for quay's start latency (p50)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

LAUNCHER = """
import subprocess, sys, tempfile, time
with tempfile.TemporaryFile() as err:  # not a pipe: a detached container inherits it
    t0 = time.time_ns()
    done = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    t1 = time.time_ns()
    err.seek(0)
    sys.stderr.write(err.read().decode(errors="replace"))
print(t0, t1, done.returncode)
"""
"""Run inside the host: the timestamp is taken right before the command is forked."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_until(
    what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.01
) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the bench host ------------------------------------------------------------------------------


@dataclass
class Bench:
    host: BenchHost
    root: Path = field(init=False)
    config_dir: Path = field(init=False)
    quay_state: Path = field(init=False)
    marks: Path = field(init=False)
    bundle: Path = field(init=False)
    agent_log: Path = field(init=False)
    quayd: subprocess.Popen[bytes] | None = None
    quayd_pid: int | None = None
    """quayd's PID as the machine sees it (for /proc and kill)."""

    def __post_init__(self) -> None:
        self.root = self.host.state_dir
        self.config_dir = self.root / "etc-quay.d"
        self.quay_state = self.root / "quay"
        self.marks = self.root / "marks"
        self.bundle = self.root / "crun-bundle"
        self.agent_log = self.root / "quayd.log"

    def podman(self, *args: str) -> list[str]:
        return [
            "podman", "--root", str(self.root / "podman"), "--runroot", PODMAN_RUNROOT,
            "--tmpdir", f"{PODMAN_RUNROOT}-tmp", *args,
        ]  # fmt: skip

    # --- setup -----------------------------------------------------------------------------------

    def load_quay_image(self) -> Path:
        """Build the busybox image (examples/build-busybox-image) and load it into quay's store
        as IMAGE; returns its OCI layout."""
        layout = self.root / "busybox-oci"
        subprocess.run([str(REPO / "examples" / "build-busybox-image"), str(layout)], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(
            [*quayctl_argv(), "--state-dir", str(self.quay_state), "image", "load", str(layout),
             "--reference", IMAGE],
            check=True, capture_output=True,
        )  # fmt: skip
        return layout

    def setup(self) -> None:
        self.config_dir.mkdir()
        self.marks.mkdir()
        layout = self.load_quay_image()
        pulled = self.host.run(self.podman("pull", "-q", f"oci:{layout}:1.36"), timeout=120)
        self.host.run(self.podman("tag", pulled.stdout.strip().splitlines()[-1], IMAGE))
        self._prepare_bundle(layout)

    def _prepare_bundle(self, layout: Path) -> None:
        index = json.loads((layout / "index.json").read_text())
        blobs = layout / "blobs" / "sha256"
        manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        for layer in manifest["layers"]:
            blob = blobs / layer["digest"].split(":")[1]
            subprocess.run(["tar", "-xzf", str(blob), "-C", str(rootfs)], check=True)
        subprocess.run(["crun", "spec"], cwd=self.bundle, check=True)
        config_path = self.bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["terminal"] = False
        config["root"]["readonly"] = False
        config["mounts"].append(
            {"destination": "/marks", "type": "bind", "source": str(self.marks),
             "options": ["rbind", "rw"]}
        )  # fmt: skip
        config_path.write_text(json.dumps(config))

    def crun_bundle_for(self, run_id: str) -> None:
        config_path = self.bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["args"] = ["sh", "-c", f"touch /marks/{run_id}; exec sleep 1000"]
        config_path.write_text(json.dumps(config))

    # --- quayd -----------------------------------------------------------------------------------

    def start_quayd(self, program: list[str] | None = None, extra: Sequence[str] = ()) -> None:
        """quayd in the host, in the background; ``extra``: more of its options (``--config``)."""
        out = open(self.agent_log, "ab")  # noqa: SIM115 (kept open by the child)
        self.quayd = subprocess.Popen(
            [*self.host.nsenter(), *(program or quayd_argv()), "--state-dir", str(self.quay_state),
             "--config-dir", str(self.config_dir), "--run-dir", RUN_DIR, *extra],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        out.close()
        self.quayd_pid = host_pid(self.host, self.quayd)

    def kill_quayd(self) -> None:
        assert self.quayd is not None
        assert self.quayd_pid is not None
        os.kill(self.quayd_pid, signal.SIGKILL)
        self.quayd.wait(timeout=10)
        self.quayd = None
        self.quayd_pid = None

    def stop_quayd(self) -> None:
        if self.quayd is None or self.quayd_pid is None:
            return
        if self.quayd.poll() is not None:  # it died on its own
            self.quayd = None
            self.quayd_pid = None
            return
        os.kill(self.quayd_pid, signal.SIGTERM)
        try:
            self.quayd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill_quayd()
        self.quayd = None
        self.quayd_pid = None

    def status(self) -> dict[str, Any] | None:
        if self.quayd is not None and self.quayd.poll() is not None:
            tail = "\n".join(self.agent_log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"quayd exited {self.quayd.returncode}:\n{tail}")
        done = self.host.run(
            [*quayctl_argv(), "--run-dir", RUN_DIR, "status", "--json"], check=False
        )
        if done.returncode != 0:
            return None  # 4: not answering (yet)
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def units(self) -> dict[str, dict[str, Any]]:
        status = self.status() or {}
        return {unit["name"]: unit for unit in status.get("units", [])}

    def write_unit(self, name: str, text: str) -> int:
        """Write ``name``'s unit file and rename it into place; the time of the rename (ns)."""
        temporary = self.root / "staging" / f"{name}.toml"  # outside: only the rename is seen
        temporary.parent.mkdir(exist_ok=True)
        temporary.write_text(text)
        started = time.time_ns()
        temporary.rename(self.config_dir / f"{name}.toml")
        return started

    def delete_units(self, names: list[str], timeout: float = 120.0) -> None:
        for name in names:
            (self.config_dir / f"{name}.toml").unlink(missing_ok=True)
        gone = set(names)
        wait_until("units removed", lambda: not (gone & set(self.units())), timeout, every=0.05)
        scopes = {f"quay-{name}.scope" for name in names}
        wait_until("their scopes gone", lambda: not (scopes & self.scopes()), timeout, every=0.05)

    def scopes(self) -> set[str]:
        """The host's loaded scope units (a container's scope goes when its last process does)."""
        listed = self.host.systemctl("list-units", "--type=scope", "--no-legend", "--plain")
        return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}

    def in_host(self, argv: list[str], timeout: float = 120.0) -> tuple[int, int]:
        """Run ``argv`` through the in-host launcher: (start ns, end ns)."""
        done = self.host.run(["/usr/bin/python3", "-c", LAUNCHER, *argv], timeout=timeout)
        t0, t1, code = (int(word) for word in done.stdout.split())
        if code != 0:
            raise RuntimeError(f"{argv} exited {code}: {done.stderr}")
        return t0, t1

    # --- one timed start of each tool: its container's command touches /marks/RUN_ID -----

    def quay_start(self, unit: str, run_id: str, **options: Any) -> float:
        """Seconds from the unit file's rename to its process running; the unit is removed."""
        command = ["sh", "-c", f"touch /marks/{run_id}; exec sleep 1000"]
        t0 = self.write_unit(unit, quay_unit(command, mark=self.marks, **options))
        seconds = (mark_time(self.marks / run_id) - t0) / 1e9
        self.delete_units([unit])
        return seconds

    def podman_start(self, container: str, run_id: str, network: str | None = None) -> float:
        """Seconds from ``podman run -d`` to its process running; the container is removed."""
        options = ["--network", network] if network is not None else []
        t0, _ = self.in_host(
            self.podman(
                "run", "-d", "--name", container, *options, "-v", f"{self.marks}:/marks", IMAGE,
                "sh", "-c", f"touch /marks/{run_id}; exec sleep 1000",
            )
        )  # fmt: skip
        seconds = (mark_time(self.marks / run_id) - t0) / 1e9
        self.host.run(self.podman("rm", "-f", "-t", "0", container))
        return seconds

    def crun_start(self, container: str, run_id: str) -> float:
        """Seconds from raw ``crun run -d`` of the bundle to its process running (the floor)."""
        self.crun_bundle_for(run_id)
        t0, _ = self.in_host(
            ["crun", "--systemd-cgroup", "run", "-d", "--bundle", str(self.bundle), container]
        )
        seconds = (mark_time(self.marks / run_id) - t0) / 1e9
        self.host.run(["crun", "delete", "-f", container])
        return seconds


def host_pid(host: BenchHost, process: subprocess.Popen[bytes]) -> int:
    """The PID (as the machine sees it) of the command ``process`` runs in ``host``: nsenter's
    child in a namespace host, the process itself where there is no nsenter (--this-host)."""
    if not host.nsenter():
        return process.pid
    pid: int = wait_until("the command's process", lambda: child_of(process.pid), timeout=10)
    return pid


def running_pid(host: BenchHost, process: subprocess.Popen[bytes]) -> int | None:
    """As :func:`host_pid`, without waiting: None once the command has ended."""
    if process.poll() is not None:
        return None
    return child_of(process.pid) if host.nsenter() else process.pid


def child_of(pid: int) -> int | None:
    try:
        words = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(words[0]) if words else None


def quay_unit(
    command: list[str],
    *,
    network: str = "bridge",
    mark: Path | None = None,
    binds: dict[Path, str] | None = None,
    extra: str = "",
) -> str:
    """A unit running ``command``; ``mark`` bind-mounted at /marks, ``binds`` (host path →
    container path) too, and ``extra`` TOML tables appended."""
    lines = [
        "[container]",
        f'image = "{IMAGE}"',
        f"command = {json.dumps(command)}",
        'stop_signal = "SIGKILL"',
        "[network]",
        f'mode = "{network}"',
    ]
    if mark is not None:
        lines += ["[[mounts]]", 'type = "bind"', f'source = "{mark}"', 'target = "/marks"']
    for source, target in (binds or {}).items():
        lines += ["[[mounts]]", 'type = "bind"', f'source = "{source}"', f'target = "{target}"']
    return "\n".join(lines) + "\n" + extra


def mark_time(path: Path, timeout: float = 60.0) -> int:
    wait_until(f"{path}", path.exists, timeout, every=0.005)
    return path.stat().st_mtime_ns


# --- 1. start latency ---------------------------------------------------------------------------


def latency(bench: Bench, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"quay": [], "podman": [], "crun": []}
    for run in range(runs):
        results["quay"].append(bench.quay_start(f"lat{run}", f"q{run}"))
        results["podman"].append(bench.podman_start(f"lat{run}", f"p{run}"))
        results["crun"].append(bench.crun_start(f"lat{run}", f"c{run}"))
        log(
            f"run {run + 1}/{runs}: "
            + "  ".join(f"{tool} {values[-1]:.3f}s" for tool, values in results.items())
        )
    return results


def quay_breakdown(bench: Bench) -> dict[str, float]:
    """From quayd's JSON log: per latency run, the unit file's rename → "action" → "started"."""
    events: dict[str, dict[str, float]] = {}
    for line in bench.agent_log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        unit = entry.get("unit", "")
        if not isinstance(unit, str) or not unit.startswith("lat"):
            continue
        stamp = datetime.fromisoformat(entry["timestamp"]).timestamp()
        name = entry.get("event")
        if name == "action" and entry.get("kind") == "start":
            events.setdefault(unit, {}).setdefault("action", stamp)
        elif name == "started":
            events.setdefault(unit, {}).setdefault("started", stamp)
    gaps = [
        item["started"] - item["action"]
        for item in events.values()
        if "action" in item and "started" in item
    ]
    return {"action_to_started_p50": statistics.median(gaps)} if gaps else {}


# --- 2. mass start and adoption ------------------------------------------------------------------


def mass(bench: Bench, count: int, network: str) -> dict[str, Any]:
    names = [f"m{network[0]}{i:03d}" for i in range(count)]
    text = quay_unit(["sleep", "1000"], network=network)
    passes_before = (bench.status() or {}).get("agent", {}).get("passes", 0)
    t0 = time.monotonic()
    for name in names:
        bench.write_unit(name, text)

    def all_running() -> dict[str, int] | None:
        units = bench.units()
        pids = {n: units[n]["pid"] for n in names if n in units and units[n]["state"] == "running"}
        return pids if len(pids) == count else None

    pids: dict[str, int] = wait_until(f"{count} running", all_running, 300, every=0.05)
    started = time.monotonic() - t0
    passes = (bench.status() or {}).get("agent", {}).get("passes", 0) - passes_before
    log(f"{count} units ({network}): all running after {started:.2f} s, {passes} passes")

    bench.kill_quayd()
    t0 = time.monotonic()
    bench.start_quayd()
    adopted_pids: dict[str, int] = wait_until("adopted", all_running, 120, every=0.02)
    adopted = time.monotonic() - t0
    same = adopted_pids == pids
    changed = sorted(name for name in names if adopted_pids.get(name) != pids.get(name))
    log(
        f"kill -9, restart: all {count} adopted after {adopted:.2f} s (same PIDs: {same})"
        + (f"; new PIDs: {len(changed)} ({', '.join(changed[:5])}...)" if changed else "")
    )

    t0 = time.monotonic()
    bench.delete_units(names, timeout=300)
    removed = time.monotonic() - t0
    log(f"removed all {count} after {removed:.2f} s")
    return {
        "network": network,
        "units": count,
        "all_running_s": started,
        "passes_while_starting": passes,
        "adopted_s": adopted,
        "same_pids": same,
        "changed_pids": changed,
        "all_removed_s": removed,
    }


# --- 3. idle -------------------------------------------------------------------------------------


@dataclass
class Sample:
    cpu_ticks: int
    switches: int
    rss_kb: int
    threads: dict[str, tuple[str, int]]
    """Per thread id: its name (comm) and its context switches."""


def sample(pid: int) -> Sample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = int(fields[11]) + int(fields[12])  # utime, stime (all threads, dead ones too)
    switches = 0
    threads: dict[str, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            count = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    count += int(line.split()[1])
            threads[task.name] = ((task / "comm").read_text().strip(), count)
            switches += count
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return Sample(cpu, switches, rss, threads)


def idle(bench: Bench, count: int, seconds: float) -> dict[str, Any]:
    names = [f"idle{i:03d}" for i in range(count)]
    text = quay_unit(["sleep", "100000"])
    for name in names:
        bench.write_unit(name, text)
    wait_until(
        f"{count} running",
        lambda: (
            sum(1 for n, u in bench.units().items() if n in names and u["state"] == "running")
            == count
        ),
        300,
        every=0.1,
    )
    time.sleep(2.0)  # let the passes that follow the starts settle
    assert bench.quayd_pid is not None
    pid = bench.quayd_pid
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    passes_before = (bench.status() or {}).get("agent", {}).get("passes", 0)
    before = sample(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = sample(pid)
    elapsed = time.monotonic() - t0
    passes = (bench.status() or {}).get("agent", {}).get("passes", 0) - passes_before
    result = {
        "containers": count,
        "seconds": elapsed,
        "cpu_s": (after.cpu_ticks - before.cpu_ticks) / CLK_TCK,
        "cpu_percent": 100 * (after.cpu_ticks - before.cpu_ticks) / CLK_TCK / elapsed,
        "rss_mib": after.rss_kb / 1024,
        "wakeups_per_s": (after.switches - before.switches) / elapsed,
        "threads": threads,
        "passes": passes,
        "wakeups_per_s_by_thread": {
            f"{tid} {name}": (count - before.threads.get(tid, (name, 0))[1]) / elapsed
            for tid, (name, count) in after.threads.items()
            if count != before.threads.get(tid, (name, 0))[1]
        },
    }
    log(
        f"idle with {count}: cpu {result['cpu_s']:.3f} s over {elapsed:.0f} s, "
        f"rss {result['rss_mib']:.1f} MiB, {result['wakeups_per_s']:.1f} wake-ups/s"
    )
    bench.delete_units(names, timeout=300)
    return result


# --- 4. where quay's start time goes --------------------------------------------------------------

PROFILED = [
    # (module, owner class or "", attribute): wrapped with a timer in a profiled quayd
    ("quayd.agent.loop", "Loop", "file_event"),
    ("quayd.agent.loop", "Loop", "_coalesce"),
    ("quayd.agent.passes", "Passes", "run"),
    ("quayd.agent.passes", "", "load_directory"),
    ("quayd.agent.passes", "", "plan"),
    ("quayd.agent.desired", "DesiredState", "build"),
    ("quayd.agent.passes", "Passes", "observed"),
    ("quayd.reconcile.executor", "Executor", "start"),
    ("quayd.reconcile.executor", "Executor", "image"),
    ("quayd.reconcile.executor", "Executor", "_clear"),
    ("quayd.reconcile.executor", "Executor", "_attach"),
    ("quayd.net.network", "Network", "prepare"),
    ("quayd.net.network", "Network", "connect"),
    ("quayd.net.network", "Network", "sync_unit"),
    ("quayd.net.network", "Network", "sync"),
    ("quayd.reconcile.executor", "Executor", "sync_peers"),
    ("quayd.images.store", "Store", "image_config"),
    ("quayd.reconcile.executor", "", "prepare"),
    ("quayd.isolation.container", "", "mount_rootfs"),
    ("quayd.isolation.container", "", "build_spec"),
    ("quayd.isolation.container", "", "resolve_user"),
    ("quayd.isolation.container", "", "write_atomically"),
    ("quayd.reconcile.executor", "", "write_record"),
    ("quayd.reconcile.executor", "", "start"),
    ("quayd.reconcile.executor", "", "create"),
    ("quayd.reconcile.executor", "", "start_created"),
    ("quayd.isolation.runtime", "OciRuntime", "create"),
    ("quayd.isolation.container", "", "watch_oom"),
    ("quayd.isolation.runtime", "OciRuntime", "start"),
]

PROFILER = """
import asyncio, functools, importlib, json, sys, threading, time
out = open(sys.argv[1], "a", buffering=1)
def record(label, start, end):
    out.write(json.dumps([label, start, end, threading.get_ident()]) + "\\n")
def wrap(module, owner, attr):
    target = importlib.import_module(module)
    holder = getattr(target, owner) if owner else target
    fn = getattr(holder, attr)
    label = (owner or module.rsplit(".", 1)[1]) + "." + attr
    if asyncio.iscoroutinefunction(fn):
        async def timed(*a, **k):
            t = time.time_ns()
            try:
                return await fn(*a, **k)
            finally:
                record(label, t, time.time_ns())
    else:
        def timed(*a, **k):
            t = time.time_ns()
            try:
                return fn(*a, **k)
            finally:
                record(label, t, time.time_ns())
    setattr(holder, attr, functools.wraps(fn)(timed))
sys.path.insert(0, sys.argv[3])
for module, owner, attr in json.loads(sys.argv[2]):
    wrap(module, owner, attr)
from quayd.cli.quayd_main import main
sys.exit(main(sys.argv[4:]))
"""
"""quayd with timers around :data:`PROFILED` (first arg: the output file); quayd/ untouched."""


def profile(bench: Bench, runs: int) -> dict[str, dict[str, float]]:
    """Start latency again under a profiled quayd: per run, when each piece began (from the
    rename) and how long it took; medians over the runs."""
    bench.stop_quayd()
    timings = bench.root / "profile.jsonl"
    bench.start_quayd(
        [sys.executable, "-c", PROFILER, str(timings), json.dumps(PROFILED), str(SOURCE[0])],
    )
    wait_until("profiled quayd answering", bench.status, 30)
    time.sleep(0.5)
    windows: list[tuple[int, int]] = []
    for run in range(runs):
        run_id = f"prof{run}"
        text = quay_unit(["sh", "-c", f"touch /marks/{run_id}; exec sleep 1000"], mark=bench.marks)
        t0 = bench.write_unit(run_id, text)
        mark = mark_time(bench.marks / run_id)
        time.sleep(0.2)  # let the start return and its timers land
        windows.append((t0, mark))
        log(f"profiled run {run + 1}/{runs}: {(mark - t0) / 1e9:.3f} s")
        bench.delete_units([run_id])
        time.sleep(0.3)
    bench.stop_quayd()
    records = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
    per_label: dict[str, list[tuple[float, float]]] = {}
    for t0, mark in windows:
        first: dict[str, tuple[float, float]] = {}
        for label, start, end, _thread in records:
            if t0 <= start <= mark + 150_000_000 and label not in first:
                first[label] = ((start - t0) / 1e9, (end - start) / 1e9)
        first["container process ran (mark)"] = ((mark - t0) / 1e9, 0.0)
        for label, value in first.items():
            per_label.setdefault(label, []).append(value)
    result = {
        label: {
            "at_s": statistics.median(v[0] for v in values),
            "took_s": statistics.median(v[1] for v in values),
            "runs": len(values),
        }
        for label, values in per_label.items()
    }
    return dict(sorted(result.items(), key=lambda item: item[1]["at_s"]))


# --- the command ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench agent", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="5 latency runs, 10 s idle")
    parser.add_argument("--runs", type=int, help="latency runs per tool (default 20, 5 quick)")
    parser.add_argument("--units", type=int, default=100, help="units in the mass start")
    parser.add_argument("--idle-units", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, help="default 60, 10 quick")
    parser.add_argument("--networks", default="none,bridge", help="mass start: network modes")
    parser.add_argument("--profile", action="store_true", help="profile even if the goal is met")
    parser.add_argument(
        "--source",
        type=Path,
        help="import quayd and quayctl from this directory (default: the checkout), e.g. a "
        "commit exported with `git archive HEAD quayd | tar -x -C DIR`",
    )
    parser.add_argument("--agent-log", type=Path, help="keep a copy of quayd's log here")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    runs = args.runs or (5 if args.quick else 20)
    if args.source:
        SOURCE[0] = args.source.resolve()
        if hidden_in_host(SOURCE[0]):
            print(f"bench agent: {SOURCE[0]} is not visible in the systemd host", file=sys.stderr)
            return 2
    idle_seconds = args.idle_seconds or (10.0 if args.quick else 60.0)
    for tool in ("podman", "crun"):
        if shutil.which(tool) is None:
            print(f"bench agent: {tool} is missing (apt-get install -y {tool})", file=sys.stderr)
            return 2

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}",
        "runs": runs,
        "source": str(SOURCE[0]),
    }
    with systemd_host() as host:
        log(f"systemd host up in {host.boot_seconds:.1f} s ({host.state})")
        bench = Bench(host)
        try:
            bench.setup()
            bench.start_quayd()
            wait_until("quayd answering", bench.status, 30)
            log("quayd up; start latency")
            lat = latency(bench, runs)
            results["latency"] = {
                tool: {"p50": percentile(v, 0.5), "p95": percentile(v, 0.95), "runs": v}
                for tool, v in lat.items()
            }
            results["latency_quay_log"] = quay_breakdown(bench)
            results["mass"] = [
                mass(bench, args.units, network) for network in args.networks.split(",")
            ]
            results["idle"] = idle(bench, args.idle_units, idle_seconds)
            if args.profile or results["latency"]["quay"]["p50"] > GOAL_SECONDS:
                log("quay misses its goal: profiling where its start time goes")
                results["profile"] = profile(bench, 5)
        finally:
            bench.stop_quayd()
            if args.agent_log and bench.agent_log.exists():
                shutil.copyfile(bench.agent_log, args.agent_log)
            with contextlib.suppress(Exception):
                host.run(bench.podman("rm", "-a", "-f", "-t", "0"), check=False)
                host.run(bench.podman("system", "reset", "-f"), check=False, timeout=120)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report(results: dict[str, Any]) -> None:
    print(f"\n{results['machine']}, {results['date']}")
    lat = results["latency"]
    podman = lat["podman"]["p50"]
    print(f"\n1. unit written / command started -> container process ran ({results['runs']} runs)")
    print(f"{'tool':<8} {'p50 s':>8} {'p95 s':>8} {'p50 / podman':>13}")
    for tool, values in lat.items():
        ratio = values["p50"] / podman
        print(f"{tool:<8} {values['p50']:>8.3f} {values['p95']:>8.3f} {ratio:>12.2f}x")
    for key, value in results.get("latency_quay_log", {}).items():
        print(f"  quayd log: {key} = {value:.3f} s")
    print("\n2. units dropped at once -> all running; kill -9 quayd -> all adopted")
    print(f"{'network':<8} {'units':>5} {'running s':>10} {'passes':>7} {'adopted s':>10} "
          f"{'same PIDs':>10} {'removed s':>10}")  # fmt: skip
    for item in results["mass"]:
        print(f"{item['network']:<8} {item['units']:>5} {item['all_running_s']:>10.2f} "
              f"{item['passes_while_starting']:>7} {item['adopted_s']:>10.2f} "
              f"{item['same_pids']!s:>10} {item['all_removed_s']:>10.2f}")  # fmt: skip
        if item["changed_pids"]:
            print(f"  new PIDs after the restart: {', '.join(item['changed_pids'])}")
    idle = results["idle"]
    print(f"\n3. idle quayd with {idle['containers']} containers over {idle['seconds']:.0f} s")
    print(f"  cpu {idle['cpu_s']:.3f} s ({idle['cpu_percent']:.2f} %), "
          f"rss {idle['rss_mib']:.1f} MiB, {idle['wakeups_per_s']:.1f} wake-ups/s, "
          f"{idle['threads']} threads")  # fmt: skip
    print(f"  passes in that time: {idle['passes']}")
    for thread, rate in idle["wakeups_per_s_by_thread"].items():
        print(f"    thread {thread}: {rate:.1f} wake-ups/s")
    if "profile" in results:
        print("\n4. quay's start, profiled (medians; seconds after the unit file's rename)")
        print(f"{'piece':<34} {'began at':>9} {'took':>8}")
        for label, item in results["profile"].items():
            print(f"{label:<34} {item['at_s']:>9.4f} {item['took_s']:>8.4f}")
