"""Overlay roots and the crun/runc driver, for real, inside a throwaway systemd host.

Each test drives the host from here (``systemctl``, ``cat`` of cgroup files) and runs quay's code
inside it with ``host.call(function, **kwargs)``: a fresh Python process per call, in the host's
namespaces, that runs one of the ``inside_*`` functions below and exits. So every container here
is created by a process that is gone by the time the next step looks at it, which is the point:
containers must outlive the process that made them.

``hand_written_spec`` is a minimal hand-written OCI config; ``quayd.isolation.spec`` replaces it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation.rootfs import (
    ROOTFS,
    mount_rootfs,
    mounts_below,
    overlay_options,
    parse_mountinfo,
    stale_mounts,
    unmount_rootfs,
)
from quayd.isolation.runtime import (
    ContainerNotFoundError,
    ExitWatcher,
    OciRuntime,
    RuntimeCommandError,
    Stdio,
    become_subreaper,
    journald_stream,
    open_log_file,
)
from tests.support.systemd_host import (
    BUSYBOX,
    CONTAINER_TEST_MARKS,
    RUNTIMES,
    SystemdHost,
    systemd_host,
)

RUN_DIR = Path("/run/quay")  # inside the host: its private /run
MEMORY_MAX = 96 * 1024 * 1024
TASKS_MAX = 64


pytestmark = CONTAINER_TEST_MARKS


# --- the test's own spec builder (quayd.isolation.spec replaces it) ------------------------------

DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip


def hand_written_spec(
    name: str, args: list[str], *, readonly: bool = False, env: list[str] | None = None
) -> dict[str, Any]:
    """A minimal OCI config both crun and runc accept: namespaces, /proc, /dev, /sys, limits."""
    caps = list(DEFAULT_CAPS)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", *(env or [])],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": ROOTFS, "readonly": readonly},
        "hostname": name,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "annotations": {
            "org.systemd.property.MemoryMax": f"uint64 {MEMORY_MAX}",
            "org.systemd.property.TasksMax": f"uint64 {TASKS_MAX}",
        },
        "linux": {
            "cgroupsPath": f"quay.slice:quay:{name}",
            "resources": {
                "memory": {"limit": MEMORY_MAX},
                "pids": {"limit": TASKS_MAX},
                "devices": [{"allow": False, "access": "rwm"}],
            },
            "namespaces": [
                {"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup")
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
        },
    }


# --- run inside the host (module-level: host.call imports them by name) --------------------------


def _runtime(name: str) -> OciRuntime:
    return OciRuntime(name, run_dir=RUN_DIR, systemd_cgroup=True)


def inside_start(
    *,
    runtime: str,
    name: str,
    container_dir: str,
    layers: list[str],
    args: list[str],
    log: str = "file",
    subreaper: bool = False,
) -> dict[str, Any]:
    """Mount the root, write the bundle, create and start; return the init's pid and state."""
    if subreaper:
        become_subreaper()
    directory = Path(container_dir)
    mount_rootfs([Path(layer) for layer in layers], directory)
    (directory / "config.json").write_text(json.dumps(hand_written_spec(name, args)))
    out = (
        journald_stream(f"quay-{name}")
        if log == "journald"
        else open_log_file(directory / "console.log")
    )
    driver = _runtime(runtime)
    try:
        pid = driver.create(
            name, directory, pid_file=directory / "init.pid", stdio=Stdio(stdout=out, stderr=out)
        )
    finally:
        os.close(out)
    driver.start(name)
    state = driver.state(name)
    assert state is not None
    return {"pid": pid, "status": str(state.status), "state_pid": state.pid}


def inside_state(runtime: str, name: str) -> dict[str, Any] | None:
    state = _runtime(runtime).state(name)
    if state is None:
        return None
    return {"status": str(state.status), "pid": state.pid, "bundle": str(state.bundle)}


def inside_exec(runtime: str, name: str, argv: list[str]) -> dict[str, Any]:
    done = _runtime(runtime).exec(name, argv, env={"GREETING": "hi"}, timeout=30)
    return {"code": done.returncode, "stdout": done.stdout.decode(), "stderr": done.stderr.decode()}


def inside_exec_timeout(runtime: str, name: str) -> dict[str, Any]:
    """An exec that outlives its timeout is killed, not merely abandoned."""
    driver = _runtime(runtime)
    try:
        driver.exec(name, ["/bin/sh", "-c", "exec sleep 300"], timeout=1)
        error = ""
    except RuntimeCommandError as raised:
        error = str(raised)
    time.sleep(0.2)
    left = driver.exec(name, ["/bin/sh", "-c", "ps -o args"], timeout=30).stdout.decode()
    return {"error": error, "processes": left}


def inside_stop(
    *, runtime: str, name: str, container_dir: str, pid: int, grace: float = 10.0
) -> dict[str, Any]:
    """SIGTERM, wait through a pidfd, SIGKILL after ``grace``; delete; unmount."""
    driver = _runtime(runtime)
    started = time.monotonic()
    with ExitWatcher() as watcher:
        watcher.watch(pid)
        driver.kill(name, signal.SIGTERM)
        ended = watcher.wait_for(pid, grace)
        killed = False
        if ended is None:
            killed = True
            driver.kill(name, signal.SIGKILL)
            ended = watcher.wait_for(pid, 10)
    assert ended is not None, "the container did not end after SIGKILL"
    waited = time.monotonic() - started
    driver.delete(name)
    unmounted = unmount_rootfs(Path(container_dir))
    return {
        "waited": waited,
        "killed": killed,
        "known": ended.known,
        "code": ended.code,
        "signal": ended.signal,
        "unmounted": unmounted,
    }


def inside_leftovers(runtime: str, name: str, container_dir: str) -> dict[str, Any]:
    """What of a container remains: mounts, runtime state."""
    return {
        "mounts": [str(point) for point in mounts_below(Path(container_dir))],
        "runtime_ids": _runtime(runtime).list_ids(),
        "state": inside_state(runtime, name),
    }


def inside_lifecycle_in_one_process(
    *, runtime: str, name: str, container_dir: str, layers: list[str], args: list[str], grace: float
) -> dict[str, Any]:
    """Create, start and stop from one subreaper process, which then knows the exit status."""
    started = inside_start(
        runtime=runtime,
        name=name,
        container_dir=container_dir,
        layers=layers,
        args=args,
        subreaper=True,
    )
    time.sleep(0.2)  # let the shell install its trap
    return {
        "start": started,
        "stop": inside_stop(
            runtime=runtime, name=name, container_dir=container_dir, pid=started["pid"], grace=grace
        ),
    }


def inside_errors(
    *, runtime: str, name: str, container_dir: str, layers: list[str]
) -> dict[str, Any]:
    """What the driver raises for a missing executable and for unknown containers."""
    seen: dict[str, Any] = {}
    try:
        inside_start(
            runtime=runtime, name=name, container_dir=container_dir, layers=layers,
            args=["/bin/no-such-program"],
        )  # fmt: skip
    except RuntimeCommandError as error:
        seen["create"] = str(error)
    driver = _runtime(runtime)
    if driver.state(name) is not None:  # runc creates, then fails at start
        driver.delete(name, force=True)
    unmount_rootfs(Path(container_dir))
    seen["state_unknown"] = driver.state("no-such-container")
    try:
        driver.delete("no-such-container")
    except ContainerNotFoundError as error:
        seen["delete_unknown"] = str(error)
    try:
        driver.kill("--all", signal.SIGKILL)
    except RuntimeCommandError as error:
        seen["bad_id"] = str(error)
    # What a runtime killed mid-create leaves: its state directory without the state in it.
    # The agent's adoption reads it as an error, and a forced delete clears it.
    (driver.root / "half-made").mkdir(parents=True)
    try:
        driver.state("half-made")
    except RuntimeCommandError as error:
        seen["half_made_state"] = str(error)
    driver.delete("half-made", force=True)
    seen["half_made_after_delete"] = "half-made" in driver.list_ids()
    return seen


def inside_many_layers(container_dir: str, layers: list[str]) -> dict[str, Any]:
    directory = Path(container_dir)
    rootfs = mount_rootfs([Path(layer) for layer in layers], directory)
    seen = {
        "options_bytes": len(overlay_options(len(layers))),
        "top": (rootfs / "which").read_text(),
        "files": sorted(entry.name for entry in rootfs.iterdir()),
    }
    (rootfs / "written").write_text("by the container")
    seen["upper"] = sorted(entry.name for entry in (directory / "upper").iterdir())
    seen["remount_refused"] = False
    try:
        mount_rootfs([Path(layer) for layer in layers], directory)
    except Exception:
        seen["remount_refused"] = True
    assert unmount_rootfs(directory)
    assert not unmount_rootfs(directory)
    rootfs = mount_rootfs([Path(layer) for layer in layers[:2]], directory)  # re-created
    seen["after_recreate"] = sorted(entry.name for entry in rootfs.iterdir())
    seen["upper_after_recreate"] = sorted(e.name for e in (directory / "upper").iterdir())
    other = directory.parent / "other"
    mount_rootfs([Path(layers[0])], other)
    state_root = directory.parent
    seen["stale_kept"] = [str(p) for p in stale_mounts(state_root, in_use=[other])]
    seen["stale_all"] = [str(p) for p in stale_mounts(state_root)]
    seen["left"] = [str(p) for p in mounts_below(state_root)]
    return seen


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def host() -> Iterator[SystemdHost]:
    with systemd_host() as booted:
        yield booted


@pytest.fixture(scope="session")
def layers(host: SystemdHost) -> list[str]:
    """Two layer dirs: busybox-static with a few applet links, then a file of the image's own."""
    base = host.state_dir / "images" / "layers"
    bottom = base / "busybox" / "root"
    (bottom / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, bottom / "bin" / "busybox")
    for applet in ("sh", "sleep", "cat", "echo", "env", "hostname", "id"):
        (bottom / "bin" / applet).symlink_to("busybox")
    for directory in ("etc", "proc", "sys", "dev", "tmp"):
        (bottom / directory).mkdir()
    top = base / "app" / "root"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "quay-test").write_text("from the top layer\n")
    return [str(bottom), str(top)]


_counter = iter(range(1, 1_000_000))


def container(host: SystemdHost, runtime: str, purpose: str) -> tuple[str, Path]:
    """A fresh container name and directory below the host's state dir."""
    name = f"t{next(_counter)}-{runtime}-{purpose}"
    return name, host.state_dir / "containers" / name


def scope(host: SystemdHost, name: str) -> dict[str, str]:
    shown = host.systemctl(
        "show", f"quay-{name}.scope",
        "-p", "LoadState", "-p", "ActiveState", "-p", "Slice", "-p", "ControlGroup",
        "-p", "MemoryMax", "-p", "TasksMax",
    ).stdout  # fmt: skip
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def cgroup_file(host: SystemdHost, pid: int, controller: str, filename: str) -> str:
    """A cgroup v1 file of the process, as the host sees it."""
    lines = host.run(["cat", f"/proc/{pid}/cgroup"]).stdout.splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return host.run(["cat", f"/sys/fs/cgroup/{controller}{path}/{filename}"]).stdout.strip()
    raise AssertionError(f"no {controller} cgroup in {lines}")


# --- tests ---------------------------------------------------------------------------------------


def test_the_host_is_systemd_in_its_own_namespaces(host: SystemdHost) -> None:
    assert host.state in ("running", "degraded"), host.failed_units
    assert host.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    # its own cgroup namespace: systemd sees itself at the root of the hierarchy
    assert "0::/init.scope" in host.run(["cat", "/proc/1/cgroup"]).stdout


def test_overlay_root_of_200_layers(host: SystemdHost) -> None:
    base = host.state_dir / "many"
    layers: list[str] = []
    for index in range(200):
        layer = base / "layers" / f"{index:064x}" / "root"
        layer.mkdir(parents=True)
        (layer / f"f{index}").write_text(str(index))
        (layer / "which").write_text(str(index))
        layers.append(str(layer))

    seen = host.call(inside_many_layers, container_dir=str(base / "c" / "one"), layers=layers)

    assert seen["options_bytes"] < 4096
    assert seen["top"] == "199"  # the last layer is the top one
    assert len(seen["files"]) == 201
    assert "f0" in seen["files"]
    assert "f199" in seen["files"]
    assert seen["upper"] == ["written"]
    assert seen["remount_refused"]
    assert seen["after_recreate"] == ["f0", "f1", "which"]  # the old upper was discarded
    assert seen["upper_after_recreate"] == []
    assert seen["stale_kept"] == [str(base / "c" / "one" / "rootfs")]
    assert seen["stale_all"] == [str(base / "c" / "other" / "rootfs")]
    assert seen["left"] == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_container_in_its_scope_outlives_its_creator(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    name, directory = container(host, runtime, "life")
    args = ["/bin/sh", "-c", "echo hello from $(hostname); trap 'exit 143' TERM; sleep 600 & wait"]

    started = host.call(
        inside_start, runtime=runtime, name=name, container_dir=directory, layers=layers, args=args
    )
    pid = started["pid"]
    assert started["status"] == "running"
    assert started["state_pid"] == pid

    # The process that created it has exited; a new one finds the container running.
    assert host.call(inside_state, runtime=runtime, name=name) == {
        "status": "running",
        "pid": pid,
        "bundle": str(directory),
    }
    assert host.run(["cat", f"/proc/{pid}/comm"]).stdout.strip() == "sh"

    shown = scope(host, name)
    assert shown["LoadState"] == "loaded"
    assert shown["ActiveState"] == "active"
    assert shown["Slice"] == "quay.slice"
    assert shown["ControlGroup"] == f"/quay.slice/quay-{name}.scope"
    assert shown["MemoryMax"] == str(MEMORY_MAX)
    assert shown["TasksMax"] == str(TASKS_MAX)
    assert cgroup_file(host, pid, "memory", "memory.limit_in_bytes") == str(MEMORY_MAX)
    assert cgroup_file(host, pid, "pids", "pids.max") == str(TASKS_MAX)
    cgroups = host.run(["cat", f"/proc/{pid}/cgroup"]).stdout.splitlines()
    assert f"name=systemd:/quay.slice/quay-{name}.scope" in [c.split(":", 1)[1] for c in cgroups]

    ran = host.call(inside_exec, runtime=runtime, name=name, argv=["/bin/sh", "-c",
                    "cat /etc/quay-test; echo $GREETING; cat /proc/1/comm; hostname"])  # fmt: skip
    assert ran["code"] == 0, ran
    assert ran["stdout"].split("\n")[:4] == ["from the top layer", "hi", "sh", name]
    timed_out = host.call(inside_exec_timeout, runtime=runtime, name=name)
    assert "took over 1 s (killed)" in timed_out["error"]
    assert "sleep 300" not in timed_out["processes"]
    assert "sleep 600" in timed_out["processes"]

    stopped = host.call(inside_stop, runtime=runtime, name=name, container_dir=directory, pid=pid)
    assert not stopped["killed"]
    assert stopped["waited"] < 5
    assert not stopped["known"]  # its creator is gone: only PID 1 learnt the status
    assert stopped["unmounted"]
    assert (directory / "console.log").read_text() == f"hello from {name}\n"

    left = host.call(inside_leftovers, runtime=runtime, name=name, container_dir=directory)
    assert left == {"mounts": [], "runtime_ids": [], "state": None}
    assert scope(host, name)["LoadState"] == "not-found"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exit_status_known_to_the_subreaper_and_sigkill_after_grace(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    name, directory = container(host, runtime, "term")
    done = host.call(
        inside_lifecycle_in_one_process,
        runtime=runtime,
        name=name,
        container_dir=directory,
        layers=layers,
        args=["/bin/sh", "-c", "trap 'exit 143' TERM; sleep 600 & wait"],
        grace=10.0,
    )
    assert done["stop"]["code"] == 143, done
    assert not done["stop"]["killed"]

    # `sleep` as PID 1 of its namespace has no SIGTERM handler: the kernel drops the signal.
    name, directory = container(host, runtime, "kill")
    done = host.call(
        inside_lifecycle_in_one_process,
        runtime=runtime,
        name=name,
        container_dir=directory,
        layers=layers,
        args=["/bin/sleep", "600"],
        grace=0.5,
    )
    assert done["stop"]["killed"], done
    assert done["stop"]["signal"] == signal.SIGKILL
    assert 0.5 <= done["stop"]["waited"] < 5
    left = host.call(inside_leftovers, runtime=runtime, name=name, container_dir=directory)
    assert left == {"mounts": [], "runtime_ids": [], "state": None}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_container_survives_its_creator_being_killed(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    name, directory = container(host, runtime, "crash")
    args = ["/bin/sh", "-c", "trap 'exit 143' TERM; sleep 600 & wait"]
    code = (
        "import json, os, signal, sys\n"
        "from tests.integration.test_runtime import inside_start\n"
        "started = inside_start(**json.loads(sys.argv[1]), subreaper=True)\n"
        "print(started['pid'], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    arguments = {
        "runtime": runtime, "name": name, "container_dir": str(directory), "layers": layers,
        "args": args,
    }  # fmt: skip
    crashed = host.python(code, json.dumps(arguments), check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    pid = int(crashed.stdout.split()[0])

    assert host.call(inside_state, runtime=runtime, name=name)["status"] == "running"
    stopped = host.call(inside_stop, runtime=runtime, name=name, container_dir=directory, pid=pid)
    assert not stopped["killed"]
    assert not stopped["known"]
    left = host.call(inside_leftovers, runtime=runtime, name=name, container_dir=directory)
    assert left == {"mounts": [], "runtime_ids": [], "state": None}


def test_logs_to_journald_under_the_container_identifier(
    host: SystemdHost, layers: list[str]
) -> None:
    name, directory = container(host, "crun", "journal")
    started = host.call(
        inside_start,
        runtime="crun",
        name=name,
        container_dir=directory,
        layers=layers,
        args=["/bin/sh", "-c", "echo to the journal; echo and stderr >&2; exec sleep 600"],
        log="journald",
    )
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = host.run(["journalctl", "-t", f"quay-{name}", "-o", "cat"]).stdout.splitlines()
        if len(lines) >= 2:
            break
        time.sleep(0.1)
    assert lines == ["to the journal", "and stderr"]
    stopped = host.call(
        inside_stop, runtime="crun", name=name, container_dir=directory, pid=started["pid"],
        grace=0.2,
    )  # fmt: skip
    assert stopped["killed"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_errors_carry_the_runtimes_message(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    name, directory = container(host, runtime, "error")
    seen = host.call(
        inside_errors, runtime=runtime, name=name, container_dir=directory, layers=layers
    )
    assert "no-such-program" in seen["create"], seen
    assert seen["state_unknown"] is None
    assert "no-such-container" in seen["delete_unknown"]
    assert "is not a container id" in seen["bad_id"]
    assert "half-made" in seen["half_made_state"]
    assert seen["half_made_after_delete"] is False
    left = host.call(inside_leftovers, runtime=runtime, name=name, container_dir=directory)
    assert left == {"mounts": [], "runtime_ids": [], "state": None}


def test_mountinfo_paths_are_unescaped_and_odd_lines_skipped() -> None:
    text = (
        "36 35 98:0 / /var/lib/quay/a\\040b/rootfs rw,noatime master:1 - overlay overlay rw,x\n"
        "not a mountinfo line\n"
    )
    (mount,) = parse_mountinfo(text)
    assert mount.mount_point == Path("/var/lib/quay/a b/rootfs")
    assert (mount.fs_type, mount.super_options) == ("overlay", "rw,x")


def test_the_exit_watcher_signals_only_the_process_it_watches() -> None:
    """send_signal goes through the pidfd: the watched process, never one that reused its pid."""
    child = subprocess.Popen(["sleep", "100"])
    other = subprocess.Popen(["sleep", "100"])
    try:
        with ExitWatcher() as watcher:
            watcher.watch(child.pid)
            assert not watcher.send_signal(other.pid, signal.SIGKILL)  # not watched
            assert watcher.send_signal(child.pid, signal.SIGKILL)
            ended = watcher.wait_for(child.pid, 10)
            assert ended is not None
            assert ended.signal == signal.SIGKILL
            assert other.poll() is None
    finally:
        for process in (child, other):
            process.kill()
            process.wait()
