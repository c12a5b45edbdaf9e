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
from quayd.isolation.exec_io import process_file
from quayd.isolation.init import INIT_PATH, find_init
from quayd.isolation.rootfs import mounts_below
from quayd.isolation.runtime import (
    ExitWatcher,
    OciRuntime,
    RuntimeCommandError,
    become_subreaper,
    open_log_file,
)
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
DEFAULT_CAPEFF = "00000000800405fb"  # podman's 11

# The container reports what it sees, says it is ready, then idles until stopped.
PROBE = (
    'echo "pid=$$"; echo "hostname=$(hostname)"; '
    "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/1/status | sed -E 's/:[[:space:]]+/=/'; "
    f"echo {READY}; "
)
# What a process started by exec reports about itself (health checks and quayctl exec alike).
SELF_STATUS = (
    "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status "
    "| sed -E 's/:[[:space:]]+/=/'; echo uid=$(id -u); echo nofile=$(ulimit -n)"
)
ON_TERM_EXIT = "trap 'exit 143' TERM; while :; do sleep 0.1; done"
IGNORE_TERM = 'trap "" TERM; while :; do sleep 0.1; done'
# The shell itself holds 200 MiB read from the pipe: PID 1 is over the limit and OOM-killed.
ALLOCATE = "x=$(head -c 200m /dev/zero | tr '\\0' x); echo survived ${#x}"


# --- inside the host (module-level: host.call imports them by name) -----------------------------


def _runtime(name: str, driver: Driver) -> OciRuntime:
    return OciRuntime(name, run_dir=Path(RUN_DIR), systemd_cgroup=driver == "systemd")


def _config(
    state_dir: Path,
    name: str,
    driver: Driver,
    resources: dict[str, Any],
    script: str,
    *,
    init: bool | None = None,
) -> ContainerConfig:
    """``init`` None: no init binary given (the unit's default ``init`` then does nothing)."""
    unit = Unit.model_validate(
        {
            "container": {
                "image": "test/busybox:1",
                "command": ["/bin/sh", "-c", script],
                "hostname": f"h-{name}"[:63],
                "stop_timeout": "2s",
                **({"init": init} if init is not None else {}),
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
        init_binary=find_init() if init is not None else None,
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
    exec_script: str | None = None,
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
            seen["oom_kills_running"] = oom_kills(name)
        if exec_script is not None:
            seen["exec"] = _exec_both_ways(driver_runtime, name, exec_script)
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


def _exec_both_ways(runtime: OciRuntime, name: str, script: str) -> dict[str, str]:
    """``script`` run as the agent runs an exec (API, health checks) and as ``quayctl exec -i``
    does (the runtime's command line, its process in an inherited memfd)."""
    done = runtime.exec(name, ["/bin/sh", "-c", script], timeout=20)
    process = runtime.exec_process(name, ["/bin/sh", "-c", script])
    fd = process_file(process)
    try:
        attached = subprocess.run(
            runtime.exec_argv(name, f"/proc/self/fd/{fd}"),
            capture_output=True,
            text=True,
            timeout=20,
            pass_fds=(fd,),
            check=False,
        )
    finally:
        os.close(fd)
    return {
        "api": done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace"),
        "attached": attached.stdout + attached.stderr,
    }


def _pids_current(name: str) -> int:
    for path in (
        CGROUP / "pids" / "quay.slice" / f"quay-{name}.scope" / "pids.current",  # v1
        CGROUP / "quay.slice" / f"quay-{name}.scope" / "pids.current",  # v2
    ):
        if path.exists():
            return int(path.read_text())
    raise AssertionError(f"no pids.current for {name}")


def _ps(runtime: OciRuntime, name: str) -> str:
    """The command lines of the container's processes (the image has no ps)."""
    script = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
    done = runtime.exec(name, ["sh", "-c", script], timeout=10)
    return done.stdout.decode() + done.stderr.decode()


def inside_pid1_and_exec(
    *, runtime: str, name: str, state_dir: str, layers: list[str], init: bool
) -> dict[str, Any]:
    """A long-running container (pids limit 64): who PID 1 is, what an exec leaves behind
    when it ends and when it times out, and a fork loop to the pids limit."""
    become_subreaper()
    base = Path(state_dir)
    config = _config(
        base, name, "systemd", {"pids": 64}, f"echo {READY}; exec sleep 1000", init=init
    )
    log = base / "logs" / f"{name}.log"
    log.unlink(missing_ok=True)
    driver_runtime = _runtime(runtime, "systemd")
    bundle = prepare(name, [Path(x) for x in layers], config, base / "containers" / name)
    out = open_log_file(log)
    try:
        started = start(bundle, driver_runtime, out)
    finally:
        os.close(out)
    seen: dict[str, Any] = {}
    with ExitWatcher() as watcher:
        watcher.watch(started.pid)
        _wait_for_log(log, READY)
        pid1 = "cat /proc/1/cmdline | tr '\\0' ' '; echo; " + SELF_STATUS.replace("self", "1")
        seen["pid1"] = driver_runtime.exec(name, ["sh", "-c", pid1], timeout=10).stdout.decode()
        # An exec that ends leaves a background child: it goes with the exec's group. (The
        # group is learnt while the command runs: one that ends within a few ms keeps them.)
        driver_runtime.exec(name, ["sh", "-c", "sleep 301 & sleep 0.3; echo started"], timeout=10)
        seen["after_end"] = _ps(driver_runtime, name)
        # An exec that times out, with a child of its own.
        try:
            driver_runtime.exec(name, ["sh", "-c", "sleep 302 & sleep 303"], timeout=1)
            seen["timed_out"] = False
        except RuntimeCommandError:
            seen["timed_out"] = True
        seen["after_timeout"] = _ps(driver_runtime, name)
        # A fork loop to the pids limit; its children end with it (orphans, then zombies).
        loop = "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done 2>/dev/null; exit 0"
        driver_runtime.exec(name, ["sh", "-c", loop], timeout=30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _pids_current(name) > 4:
            time.sleep(0.1)
        seen["pids_after_loop"] = _pids_current(name)
        try:
            done = driver_runtime.exec(name, ["echo", "exec-works"], timeout=10)
            seen["exec_after_loop"] = done.stdout.decode().strip() or done.stderr.decode()
        except RuntimeCommandError as error:
            seen["exec_after_loop"] = str(error)
        # A failed exec (crun leaves its helper in the container's namespace to its parent, a
        # zombie that would hold the init's exit past SIGKILL: the stop below would hang).
        seen["not_found"] = driver_runtime.exec(name, ["no-such-command"], timeout=10).returncode
        result = stop(
            name,
            signal_name="SIGTERM",
            timeout=5,
            runtime=driver_runtime,
            watcher=watcher,
            pid=started.pid,
            oom_events=started.oom_events,
        )
        seen["stop"] = _result(result)
        if started.oom_events is not None:
            started.oom_events.close()
    remove(bundle, driver_runtime)
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
        exec_script=SELF_STATUS,
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
    assert inside["CapEff"] == DEFAULT_CAPEFF
    assert inside["NoNewPrivs"] == "1"
    # Every process quay starts in the container has the init's privileges and limits.
    for way in ("api", "attached"):
        execed = report(seen["exec"][way])
        assert execed["CapEff"] == execed["CapBnd"] == DEFAULT_CAPEFF, (way, seen["exec"][way])
        assert (execed["NoNewPrivs"], execed["Seccomp"]) == ("1", "2"), way
        assert (execed["uid"], execed["nofile"]) == ("0", "1024"), way
    assert seen["oom_kills_running"] == 0
    assert seen["result"] == {"code": 143, "signal": None, "killed": False, "oom": False}

    assert_nothing_left(host, removed(host, runtime, "systemd", name), name)


# crun only: runc starts an exec's command in quayd's own process group (no session of its
# own), so there is no group to take, and its exec waits for the command's children.
@pytest.mark.parametrize("runtime", ["crun"])
def test_the_init_is_pid_1_reaps_orphans_and_execs_take_their_group(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    seen = host.call(
        inside_pid1_and_exec,
        runtime=runtime,
        name=f"init-{runtime}",
        state_dir=str(host.state_dir),
        layers=layers,
        init=True,
        timeout=180,
    )
    command_line, *status = seen["pid1"].splitlines()
    assert command_line.strip() == f"{INIT_PATH} -- /bin/sh -c echo {READY}; exec sleep 1000"
    pid1 = report("\n".join(status))
    assert pid1["CapEff"] == pid1["CapBnd"] == DEFAULT_CAPEFF
    assert (pid1["NoNewPrivs"], pid1["Seccomp"]) == ("1", "2")
    assert "sleep 1000" in seen["after_end"]  # ps lists the container's processes
    assert "sleep 301" not in seen["after_end"], seen["after_end"]
    assert seen["timed_out"] is True
    assert "sleep 302" not in seen["after_timeout"], seen["after_timeout"]
    assert "sleep 303" not in seen["after_timeout"], seen["after_timeout"]
    # The zombies were reaped: the counter is back near the init and its command.
    assert seen["pids_after_loop"] <= 4, seen
    assert seen["exec_after_loop"] == "exec-works"
    assert seen["not_found"] != 0
    # sleep has no SIGTERM handler; as the init's child it still ends on the stop signal.
    assert seen["stop"] == {"code": 143, "signal": None, "killed": False, "oom": False}


@pytest.mark.parametrize("runtime", ["crun"])
def test_without_the_init_orphans_stay_zombies_and_hold_the_pids_limit(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    """What init = false gives (and quay gave before): the case the init is for."""
    seen = host.call(
        inside_pid1_and_exec,
        runtime=runtime,
        name=f"noinit-{runtime}",
        state_dir=str(host.state_dir),
        layers=layers,
        init=False,
        timeout=180,
    )
    assert seen["pid1"].split()[:2] == ["sleep", "1000"]
    assert seen["pids_after_loop"] > 50, seen  # zombies: sleep as PID 1 never reaps
    # PID 1 ignores SIGTERM without a handler: killed at the stop timeout.
    assert seen["stop"]["killed"] is True


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
