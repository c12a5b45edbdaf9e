"""quayd.isolation.container for real: a pulled image run under crun and runc in the systemd host.

The image is pulled here, in the test process (the registry listens on this machine's 127.0.0.1,
which the host's own network namespace cannot reach), into a store under the host's shared state
dir. Each ``inside_*`` function runs in a fresh Python process inside the host (``host.call``):
:func:`inside_run` prepares, starts, looks at the running container and stops it (or waits for it
to end) as one subreaper process, so the exit status is known; :func:`inside_remove` removes it
and reports what is left.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from quayd.isolation.container import (
    Bundle,
    ContainerConfig,
    ContainerError,
    StopResult,
    oom_kills,
    prepare,
    remove,
    signal_number,
    start,
    stop,
    wait_exit,
    write_atomically,
)
from quayd.isolation.rootfs import mounts_below
from quayd.isolation.runtime import ExitWatcher, OciRuntime, become_subreaper, open_log_file
from quayd.isolation.seccomp import load_default_profile
from quayd.isolation.spec import EtcFiles, ImageDefaults, seccomp_for
from quayd.units.model import Unit
from tests.support.pulled import pulled_busybox_layers
from tests.support.systemd_host import CONTAINER_TEST_MARKS, RUNTIMES, SystemdHost, systemd_host

pytestmark = CONTAINER_TEST_MARKS

Driver = Literal["systemd", "cgroupfs"]
RUN_DIR = "/run/quay"  # inside the host: its private /run
CGROUP = Path("/sys/fs/cgroup")
READY = "@@ready@@"
DOCKER_CAPEFF = "00000000a80425fb"

# The container reports what it sees, says it is ready, then idles until stopped.
PROBE = (
    'echo "pid=$$"; echo "hostname=$(hostname)"; '
    "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/1/status | sed -E 's/:[[:space:]]+/=/'; "
    f"echo {READY}; "
)
ON_TERM_EXIT = "trap 'exit 143' TERM; while :; do sleep 0.1; done"
IGNORE_TERM = 'trap "" TERM; while :; do sleep 0.1; done'
# The shell itself holds 200 MiB read from the pipe: PID 1 is over the limit and OOM-killed.
ALLOCATE = "x=$(head -c 200m /dev/zero | tr '\\0' x); echo survived ${#x}"


# --- inside the host (module-level: host.call imports them by name) -----------------------------


def _runtime(name: str, driver: Driver) -> OciRuntime:
    return OciRuntime(name, run_dir=Path(RUN_DIR), systemd_cgroup=driver == "systemd")


def _config(
    state_dir: Path, name: str, driver: Driver, resources: dict[str, Any], script: str
) -> ContainerConfig:
    unit = Unit.model_validate(
        {
            "container": {
                "image": "test/busybox:1",
                "command": ["/bin/sh", "-c", script],
                "hostname": f"h-{name}"[:63],
                "stop_timeout": "2s",
            },
            "resources": resources,
            "network": {"mode": "none"},
        }
    )
    etc = state_dir / "etc" / name
    etc.mkdir(parents=True, exist_ok=True)
    for file, text in (("hostname", f"h-{name}\n"), ("hosts", "127.0.0.1 localhost\n")):
        (etc / file).write_text(text)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    profile = load_default_profile()
    memory = CGROUP / "memory"
    return ContainerConfig(
        unit=unit,
        image=ImageDefaults(),
        etc_files=EtcFiles(etc / "hostname", etc / "hosts", etc / "resolv.conf"),
        volumes_dir=state_dir / "volumes",
        cgroup_driver=driver,
        seccomp=seccomp_for(unit, profile),
        nofile_ceiling=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        swap_limit=not memory.is_dir() or (memory / "memory.memsw.limit_in_bytes").exists(),
    )


def _scope(name: str) -> dict[str, str]:
    properties = "Slice,MemoryMax,TasksMax,CPUQuotaPerSecUSec,CPUWeight,LoadState,ActiveState"
    shown = subprocess.run(
        ["systemctl", "show", f"quay-{name}.scope", "-p", properties],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def _cgroup_files(name: str) -> dict[str, str]:
    found: dict[str, str] = {}
    scope = f"quay.slice/quay-{name}.scope"
    for controller, filename in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
        path = CGROUP / controller / scope / filename
        found[filename] = path.read_text().strip() if path.exists() else "<missing>"
    return found


def _wait_for_log(log: Path, marker: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text:
            return text
        time.sleep(0.02)
    raise AssertionError(f"no {marker!r} in {log} after {timeout} s:\n{text}")


def _result(result: StopResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "code": result.code,
        "signal": result.signal,
        "killed": result.killed,
        "oom": result.oom,
    }


def inside_run(
    *,
    runtime: str,
    driver: Driver,
    name: str,
    state_dir: str,
    layers: list[str],
    script: str,
    resources: dict[str, Any],
    action: Literal["stop", "wait"],
    ready: bool = True,
) -> dict[str, Any]:
    """Prepare, start, look at it while it runs, then stop it or wait for its end."""
    become_subreaper()
    base = Path(state_dir)
    config = _config(base, name, driver, resources, script)
    directory = base / "containers" / name
    log = base / "logs" / f"{name}.log"
    log.unlink(missing_ok=True)
    driver_runtime = _runtime(runtime, driver)
    bundle = prepare(name, [Path(layer) for layer in layers], config, directory)
    out = open_log_file(log)
    try:
        started = start(bundle, driver_runtime, out)
    finally:
        os.close(out)
    seen: dict[str, Any] = {"pid": started.pid, "bundle": str(bundle.directory)}
    with ExitWatcher() as watcher:
        watcher.watch(started.pid)
        if ready:
            seen["log"] = _wait_for_log(log, READY)
            seen["scope"] = _scope(name)
            seen["cgroup"] = _cgroup_files(name)
            seen["oom_kills_running"] = oom_kills(name, driver)
        began = time.monotonic()
        result: StopResult | None
        if action == "stop":
            result = stop(
                name,
                signal_name=bundle.stop_signal,
                timeout=bundle.stop_timeout,
                runtime=driver_runtime,
                watcher=watcher,
                pid=started.pid,
                oom_events=started.oom_events,
            )
        else:
            result = wait_exit(started, timeout=60, runtime=driver_runtime, watcher=watcher)
        seen["stop_seconds"] = time.monotonic() - began
        seen["oom_events"] = started.oom_events is not None
        if started.oom_events is not None:
            started.oom_events.close()
    seen["result"] = _result(result)
    seen["log"] = log.read_text(errors="replace")
    return seen


def inside_remove(*, runtime: str, driver: Driver, name: str, state_dir: str) -> dict[str, Any]:
    """remove() the container, then report what is left of it."""
    base = Path(state_dir)
    directory = base / "containers" / name
    driver_runtime = _runtime(runtime, driver)
    remove(Bundle(name, directory, "SIGTERM", 10.0, driver), driver_runtime)
    scope = f"quay.slice/quay-{name}.scope"
    return {
        "mounts": [str(point) for point in mounts_below(base)],
        "runtime_ids": driver_runtime.list_ids(),
        "container_dir": directory.exists(),
        "scope": _scope(name),
        "cgroups": [
            str(path)
            for path in (CGROUP / "memory" / scope, CGROUP / "pids" / scope, CGROUP / scope)
            if path.exists()
        ],
    }


def inside_cycles(
    *, runtime: str, name: str, state_dir: str, layers: list[str], count: int
) -> list[float]:
    """prepare + start + stop + remove, ``count`` times: seconds of each."""
    become_subreaper()
    base = Path(state_dir)
    config = _config(base, name, "systemd", {"memory": "64M", "pids": 64}, ON_TERM_EXIT)
    driver_runtime = _runtime(runtime, "systemd")
    times: list[float] = []
    with ExitWatcher() as watcher:
        for _ in range(count):
            began = time.monotonic()
            bundle = prepare(name, [Path(x) for x in layers], config, base / "containers" / name)
            out = os.open(os.devnull, os.O_WRONLY)
            try:
                started = start(bundle, driver_runtime, out)
            finally:
                os.close(out)
            stop(
                name,
                signal_name="SIGKILL",
                timeout=5,
                runtime=driver_runtime,
                watcher=watcher,
                pid=started.pid,
                oom_events=started.oom_events,
            )
            if started.oom_events is not None:
                started.oom_events.close()
            remove(bundle, driver_runtime)
            times.append(time.monotonic() - began)
    return times


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host() -> Iterator[SystemdHost]:
    with systemd_host() as booted:
        yield booted


@pytest.fixture(scope="module")
def layers(host: SystemdHost, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """busybox pushed to a real registry and pulled, here, into a store in the host's state dir."""
    return pulled_busybox_layers(host.state_dir, tmp_path_factory.mktemp("container-registry"))


def run(host: SystemdHost, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = host.call(
        inside_run, state_dir=str(host.state_dir), timeout=120, **kwargs
    )
    return result


def removed(host: SystemdHost, runtime: str, driver: Driver, name: str) -> dict[str, Any]:
    left: dict[str, Any] = host.call(
        inside_remove, runtime=runtime, driver=driver, name=name, state_dir=str(host.state_dir)
    )
    return left


def assert_nothing_left(host: SystemdHost, left: dict[str, Any], name: str) -> None:
    assert left["mounts"] == []
    assert left["runtime_ids"] == []
    assert left["container_dir"] is False
    assert left["scope"].get("LoadState") == "not-found" or left["scope"].get("ActiveState") in (
        "inactive",
        None,
    ), left["scope"]
    assert left["cgroups"] == []
    # No process of the container anywhere in the host.
    processes = host.run(["ps", "-eo", "args"]).stdout
    assert "sleep 0.1" not in processes


def report(log: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in log.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key, value)
    return found


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pulled_busybox_in_its_scope_stops_cleanly_and_leaves_nothing(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    name = f"accept-{runtime}"
    seen = run(
        host,
        runtime=runtime,
        driver="systemd",
        name=name,
        layers=layers,
        script=PROBE + ON_TERM_EXIT,
        resources={"memory": "64M", "pids": 64, "cpus": 0.5},
        action="stop",
    )
    scope = seen["scope"]
    assert scope["Slice"] == "quay.slice"
    assert scope["MemoryMax"] == str(64 << 20)
    assert scope["TasksMax"] == "64"
    assert scope["CPUQuotaPerSecUSec"] == "500ms"
    assert scope["ActiveState"] == "active"
    inside = report(seen["log"])
    assert inside["pid"] == "1"
    assert inside["hostname"] == f"h-{name}"
    assert inside["CapEff"] == DOCKER_CAPEFF
    assert inside["NoNewPrivs"] == "1"
    assert seen["oom_kills_running"] == 0
    assert seen["result"] == {"code": 143, "signal": None, "killed": False, "oom": False}

    assert_nothing_left(host, removed(host, runtime, "systemd", name), name)


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_over_its_memory_limit_is_oom_killed_and_reported(
    host: SystemdHost, layers: list[str], runtime: str, driver: Driver
) -> None:
    name = f"oom-{runtime}-{driver}"
    seen = run(
        host,
        runtime=runtime,
        driver=driver,
        name=name,
        layers=layers,
        script=ALLOCATE,
        resources={"memory": "64M", "pids": 64},
        action="wait",
        ready=False,
    )
    assert "survived" not in seen["log"]
    assert seen["result"] == {"code": None, "signal": "SIGKILL", "killed": False, "oom": True}
    assert_nothing_left(host, removed(host, runtime, driver, name), name)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sigterm_ignored_is_killed_after_stop_timeout(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    name = f"ignore-{runtime}"
    seen = run(
        host,
        runtime=runtime,
        driver="systemd",
        name=name,
        layers=layers,
        script=PROBE + IGNORE_TERM,
        resources={"pids": 64},
        action="stop",
    )
    result = seen["result"]
    # No memory limit: whether the scope has a memory cgroup to count in depends on the runtime
    # (runc joins every controller, crun only those with limits), so "no" or "unknown".
    assert result.pop("oom") in (False, None)
    assert result == {"code": None, "signal": "SIGKILL", "killed": True}
    assert 2.0 <= seen["stop_seconds"] < 10.0
    assert_nothing_left(host, removed(host, runtime, "systemd", name), name)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cgroupfs_driver_limits_in_the_scope_path_and_cleaned_up(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    name = f"cgfs-{runtime}"
    seen = run(
        host,
        runtime=runtime,
        driver="cgroupfs",
        name=name,
        layers=layers,
        script=PROBE + ON_TERM_EXIT,
        resources={"memory": "64M", "pids": 64},
        action="stop",
    )
    assert seen["cgroup"] == {"memory.limit_in_bytes": str(64 << 20), "pids.max": "64"}
    assert seen["scope"].get("LoadState") == "not-found"  # no systemd unit under cgroupfs
    assert report(seen["log"])["pid"] == "1"
    assert seen["result"] == {"code": 143, "signal": None, "killed": False, "oom": False}
    assert_nothing_left(host, removed(host, runtime, "cgroupfs", name), name)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_timing_of_one_container(host: SystemdHost, layers: list[str], runtime: str) -> None:
    times = host.call(
        inside_cycles,
        runtime=runtime,
        name=f"timing-{runtime}",
        state_dir=str(host.state_dir),
        layers=layers,
        count=5,
        timeout=120,
    )
    median = statistics.median(times)
    print(f"\n{runtime}: prepare+start+stop+remove median of 5: {median * 1000:.0f} ms")
    print(json.dumps([round(t * 1000) for t in times]))
    assert median < 10
    assert_nothing_left(host, removed(host, runtime, "systemd", f"timing-{runtime}"), "")


# --- the pure parts, without a host --------------------------------------------------------------


def test_oom_kills_v1_adds_up_the_scope_and_the_cgroups_below(tmp_path: Path) -> None:
    scope = tmp_path / "memory" / "quay.slice" / "quay-web.scope"
    (scope / "container").mkdir(parents=True)
    (scope / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (scope / "container" / "memory.oom_control").write_text("oom_kill_disable 0\noom_kill 2\n")
    assert oom_kills("web", "systemd", cgroup_root=tmp_path) == 2
    assert oom_kills("gone", "systemd", cgroup_root=tmp_path) is None


def test_oom_kills_v2_reads_memory_events(tmp_path: Path) -> None:
    scope = tmp_path / "quay.slice" / "quay-web.scope"
    scope.mkdir(parents=True)
    (scope / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    assert oom_kills("web", "cgroupfs", cgroup_root=tmp_path) == 1
    assert oom_kills("other", "cgroupfs", cgroup_root=tmp_path) is None


def test_signal_numbers() -> None:
    assert signal_number("SIGTERM") == signal.SIGTERM
    assert signal_number("SIGRTMIN+3") == signal.SIGRTMIN + 3
    with pytest.raises(ContainerError, match="not a signal"):
        signal_number("SIGNOPE")


def test_write_atomically_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    target.write_text("old")
    write_atomically(target, b"x" * 200_000)
    assert target.read_bytes() == b"x" * 200_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
