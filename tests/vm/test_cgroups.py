"""cgroup v2 in a real Debian 12 guest: quayd installed as the packaged service runs each container
in quay-NAME.scope under quay.slice, with its limits where the kernel applies them.

One guest for the module (booting and installing is most of the time). Each test writes its units
to /etc/quay.d, looks at the scope's cgroup files, at ``systemctl`` and at ``quayctl``, and
removes its units again. What each limit should look like is in docs/isolation.md ("Where the
limits land"): under the systemd driver crun puts the processes in a ``container`` child of the
scope and writes ``linux.resources`` there; systemd writes the scope's properties into the scope.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.agent import wait_until
from tests.support.vm_host import (
    GUEST_PYTHON,
    GUEST_TESTS,
    VmHost,
    installed_vm,
    unavailable_reason,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or ""),
]

IMAGE = "localhost/busybox:1"
CGROUP = "/sys/fs/cgroup"
SLICE = f"{CGROUP}/quay.slice"
TIMEOUT = 120.0
"""Generous: the guest may run under TCG on a loaded 2-core machine."""

# Builds the busybox image as an OCI layout in the guest, from the tests' own image code.
BUILD_IMAGE = f"""
import sys
from pathlib import Path
sys.path.insert(0, {GUEST_TESTS!r})
from quayd.images.model import Platform
from tests.support.images import Layer, OciLayout, busybox_entries
layout = OciLayout(Path(sys.argv[1]))
descriptor, _ = layout.image([Layer.of(busybox_entries())], Platform.host())
layout.tag(descriptor, "1")
"""
# The shell itself holds 200 MiB read from the pipe: PID 1 is over a 64M limit and OOM-killed.
ALLOCATE = "x=$(head -c 200m /dev/zero | tr '\\0' x); echo survived ${#x}"
IDLE = 'trap "exit 0" TERM; while :; do sleep 1; done'


def unit(command: str, resources: str, *, policy: str = "always") -> str:
    return (
        f'[container]\nimage = "{IMAGE}"\ncommand = ["sh", "-c", {json.dumps(command)}]\n'
        f'stop_timeout = "2s"\n\n[restart]\npolicy = "{policy}"\n\n'
        f'[network]\nmode = "none"\n\n[resources]\n{resources}'
    )


@pytest.fixture(scope="module")
def guest() -> Iterator[VmHost]:
    with installed_vm() as host:
        layout = "/var/lib/quay-test/busybox-layout"
        host.run([GUEST_PYTHON, "-c", BUILD_IMAGE, layout])
        host.run(["quayctl", "image", "load", "--reference", IMAGE, layout], timeout=TIMEOUT)
        yield host


class Units:
    """Unit files a test writes into the guest's /etc/quay.d (``units["web"] = TEXT``)."""

    def __init__(self, host: VmHost) -> None:
        self.host = host
        self.names: list[str] = []

    def __setitem__(self, name: str, text: str) -> None:
        self.host.write_file(f"/etc/quay.d/{name}.toml", text)
        self.names.append(name)

    def remove_all(self) -> None:
        """Delete the files and wait until quayd has stopped their containers."""
        self.host.run(["rm", "-f", *(f"/etc/quay.d/{name}.toml" for name in self.names)])
        for name in self.names:
            wait_until(f"{name} to go", functools.partial(gone, self.host, name), TIMEOUT)


@pytest.fixture
def units(guest: VmHost) -> Iterator[Units]:
    written = Units(guest)
    try:
        yield written
    finally:
        written.remove_all()


# --- what the guest says ------------------------------------------------------------------------


def show(host: VmHost, name: str) -> dict[str, Any]:
    """``quayctl show --json NAME`` ({} while quayd does not know the unit yet)."""
    done = host.run(["quayctl", "show", "--json", name], check=False)
    found: dict[str, Any] = json.loads(done.stdout) if done.returncode == 0 else {}
    return found


def shown(
    host: VmHost, name: str, what: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The unit's ``show`` once ``predicate`` holds for it."""

    def check() -> dict[str, Any] | None:
        found = show(host, name)
        return found if found and predicate(found) else None

    return wait_until(f"{name} {what}", check, TIMEOUT)


def running(host: VmHost, name: str) -> dict[str, Any]:
    """The unit's ``show`` once its container runs and is ready."""
    return shown(host, name, "to run", lambda f: f.get("state") == "running" and f["ready"])


def exited(host: VmHost, name: str) -> dict[str, Any]:
    return shown(host, name, "to exit", lambda f: f.get("state") == "exited")


def scope_active(host: VmHost, name: str) -> bool:
    done = host.systemctl("is-active", f"quay-{name}.scope", check=False)
    return done.stdout.strip() in ("active", "activating", "deactivating")


def gone(host: VmHost, name: str) -> bool:
    """Whether nothing of the container is left: no scope, no cgroup (cgroupfs)."""
    return not scope_active(host, name) and not host.exists(f"{SLICE}/quay-{name}.scope")


def cgroup_files(host: VmHost, path: str, names: list[str]) -> dict[str, str]:
    """Each file's text, one line (missing: None)."""
    script = 'for f in "$@"; do printf "%s=" "$f"; tr "\\n" " " < "$0/$f" 2>/dev/null; echo; done'
    done = host.run(["sh", "-c", script, path, *names])
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        found[key] = value.strip()
    return found


def keyed(text: str) -> dict[str, int]:
    """``pids.events`` / ``memory.events`` as numbers (one line from :func:`cgroup_files`)."""
    words = text.split()
    return {key: int(value) for key, value in zip(words[::2], words[1::2], strict=True)}


def systemd_show(host: VmHost, unit_name: str, *properties: str) -> dict[str, str]:
    done = host.systemctl("show", unit_name, *(f"--property={p}" for p in properties))
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def exec_in(host: VmHost, name: str, script: str, timeout: float = TIMEOUT) -> str:
    done = host.run(["quayctl", "exec", name, "--", "sh", "-c", script], timeout=timeout)
    return done.stdout + done.stderr


def seconds(busybox_time: str) -> float:
    """The ``real`` figure of busybox's ``time`` ("real\t0m 3.10s")."""
    match = re.search(r"real\s+(\d+)m\s*([\d.]+)s", busybox_time)
    assert match, busybox_time
    return int(match.group(1)) * 60 + float(match.group(2))


# --- the tests ----------------------------------------------------------------------------------


def test_the_guest_is_unified_and_quay_chooses_systemds_driver(guest: VmHost) -> None:
    code = (
        "from quayd.isolation.cgroups import default_driver, host_cgroups\n"
        "print(host_cgroups().version, host_cgroups().io_weight, default_driver())"
    )
    assert guest.python(code).stdout.split() == ["2", "True", "systemd"]
    mounts = guest.run(["findmnt", "-n", "-o", "FSTYPE", CGROUP]).stdout.strip()
    assert mounts == "cgroup2"


def test_every_limit_in_the_scope_and_its_container_cgroup(guest: VmHost, units: Units) -> None:
    units["web"] = unit(
        IDLE,
        'memory = "64M"\ncpus = 0.5\ncpu_weight = 200\npids = 32\nio_weight = 300\n'
        'device_read_bps = { "/dev/vda" = "10M" }\ndevice_write_iops = { "/dev/vda" = 100 }\n',
    )
    found = running(guest, "web")
    scope = f"{SLICE}/quay-web.scope"
    names = ["memory.max", "memory.swap.max", "pids.max", "cpu.max", "cpu.weight", "io.weight"]
    assert cgroup_files(guest, scope, names) == {
        "memory.max": str(64 << 20),
        "memory.swap.max": "0",
        "pids.max": "32",
        "cpu.max": "50000 100000",
        "cpu.weight": "200",
        "io.weight": "default 300",
    }
    # The processes are in crun's child, which has no memory limit of its own (see oom.py) but
    # the runtime's pids, cpu and io limits, device limits included.
    assert guest.run(["cat", f"/proc/{found['pid']}/cgroup"]).stdout.strip() == (
        "0::/quay.slice/quay-web.scope/container"
    )
    assert cgroup_files(guest, f"{scope}/container", [*names, "io.max"]) == {
        "memory.max": "max",
        "memory.swap.max": "max",
        "pids.max": "32",
        "cpu.max": "50000 100000",
        "cpu.weight": "200",
        "io.weight": "default 300",
        "io.max": "254:0 rbps=10485760 wbps=max riops=max wiops=100",
    }
    assert systemd_show(
        guest, "quay-web.scope", "Slice", "Delegate", "MemoryMax", "MemorySwapMax", "TasksMax",
        "CPUQuotaPerSecUSec", "CPUWeight", "IOWeight",
    ) == {
        "Slice": "quay.slice",
        "Delegate": "yes",
        "MemoryMax": str(64 << 20),
        "MemorySwapMax": "0",
        "TasksMax": "32",
        "CPUQuotaPerSecUSec": "500ms",
        "CPUWeight": "200",
        "IOWeight": "300",
    }  # fmt: skip


def test_systemctl_status_shows_the_container_in_its_scope(guest: VmHost, units: Units) -> None:
    units["web"] = unit(IDLE, 'memory = "64M"\npids = 32\n')
    pid = running(guest, "web")["pid"]
    status = guest.systemctl("status", "--no-pager", "--lines=0", "quay-web.scope").stdout
    assert "Active: active (running)" in status
    assert "CGroup: /quay.slice/quay-web.scope" in status
    assert "└─container" in status
    # the init (the default) is PID 1, the unit's command its child
    assert re.search(rf"\b{pid} /dev/quay-init -- sh -c ", status), status
    assert re.search(r"\b\d+ sh -c ", status), status
    assert re.search(r"Memory: .*\(max: 64\.0M swap max: 0B", status), status
    assert re.search(r"Tasks: \d+ \(limit: 32\)", status), status


def test_show_reads_usage_on_v2(guest: VmHost, units: Units) -> None:
    units["web"] = unit("head -c 8m /dev/zero > /tmp/fill; " + IDLE, 'memory = "64M"\npids = 32\n')
    running(guest, "web")
    found = shown(
        guest, "web", "to use the file it wrote", lambda f: f["usage"]["memory_bytes"] > 8 << 20
    )
    usage = found["usage"]
    # the init, sh and its sleep (two sleeps while one replaces the other)
    assert usage["pids"] in (3, 4)
    assert usage["cpu_seconds"] > 0
    assert found["limits"] == {"memory": 64 << 20, "cpus": None, "pids": 32}
    scope = cgroup_files(guest, f"{SLICE}/quay-web.scope", ["pids.current"])
    assert int(scope["pids.current"]) in (3, 4)  # one more while a sleep replaces another
    text = guest.run(["quayctl", "show", "web"]).stdout
    assert re.search(r"memory\s+\S+ MiB \(limit 64\.0 MiB\)", text), text
    assert re.search(r"pids\s+\d+ \(limit 32\)", text), text


def test_an_oom_kill_is_reported_as_one(guest: VmHost, units: Units) -> None:
    units["hog"] = unit(ALLOCATE, 'memory = "64M"\n', policy="no")
    found = exited(guest, "hog")
    assert found["last_exit"]["oom"] is True
    # The kernel killed the shell, the init's child; the init exits as a shell reports that,
    # 128 + 9 (docker run --init says 137 too)
    assert (found["last_exit"]["code"], found["last_exit"]["signal"]) == (137, None)
    assert found["detail"] == "OOM-killed; not restarted (policy no)"
    status = guest.run(["quayctl", "status"]).stdout
    # DETAIL is cut to the width (80 columns when not a terminal): its start is what shows
    assert re.search(r"^hog\s+exited .* oom, .* OOM-killed", status, re.MULTILINE), status
    lines = guest.run(["quayctl", "events", "--json"]).stdout.splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    exits = [e for e in events if e["unit"] == "hog" and e["kind"] == "exited"]
    assert exits
    assert exits[-1]["message"] == "OOM-killed"
    # systemd saw it too, and removed the scope before quayd could read its count: what makes
    # the watch on the container child necessary.
    journal = guest.run(["journalctl", "-u", "quay-hog.scope", "--no-pager", "-o", "cat"]).stdout
    assert "killed by the OOM killer" in journal
    assert "survived" not in guest.run(["journalctl", "-t", "quay-hog", "--no-pager"]).stdout


def test_an_oom_kill_after_quayd_restarted_is_reported_as_one(guest: VmHost, units: Units) -> None:
    units["late"] = unit("sleep 20; " + ALLOCATE, 'memory = "64M"\n', policy="no")
    pid = running(guest, "late")["pid"]
    guest.systemctl("restart", "quayd")
    assert running(guest, "late")["pid"] == pid  # adopted, not restarted
    found = exited(guest, "late")
    assert found["last_exit"]["oom"] is True  # the exit status is not known to a new quayd


def test_the_pids_limit_contains_a_fork_loop(guest: VmHost, units: Units) -> None:
    fork_loop = 'sh -c "while :; do sleep 600 & done" 2>/dev/null; echo contained; exec sleep 600'
    units["forker"] = unit(fork_loop, "pids = 16\n")
    found = running(guest, "forker")
    wait_until(
        "the fork loop to end",
        lambda: "contained" in guest.run(["journalctl", "-t", "quay-forker", "-o", "cat"]).stdout,
        TIMEOUT,
    )
    scope = f"{SLICE}/quay-forker.scope"
    files = cgroup_files(guest, scope, ["pids.max", "pids.peak"])
    assert files == {"pids.max": "16", "pids.peak": "16"}
    container = cgroup_files(guest, f"{scope}/container", ["pids.events"])
    assert keyed(container["pids.events"])["max"] >= 1  # forks were refused at the limit
    assert show(guest, "forker")["pid"] == found["pid"]  # PID 1 itself survived it


def test_cpu_max_holds_a_busy_loop_to_its_quota(guest: VmHost, units: Units) -> None:
    units["busy"] = unit("while :; do :; done", "cpus = 0.5\ncpu_weight = 50\n")
    running(guest, "busy")
    stat = f"{SLICE}/quay-busy.scope/cpu.stat"
    script = f'a=$(grep usage_usec {stat}); sleep 5; b=$(grep usage_usec {stat}); echo "$a $b"'
    words = guest.run(["sh", "-c", script]).stdout.split()
    used = (int(words[3]) - int(words[1])) / 1e6
    assert 1.5 < used < 3.0, f"{used:.2f} s of CPU in 5 s at cpus = 0.5"
    assert cgroup_files(guest, f"{SLICE}/quay-busy.scope", ["cpu.max", "cpu.weight"]) == {
        "cpu.max": "50000 100000",
        "cpu.weight": "50",
    }


def test_io_limits_are_applied_and_hold(guest: VmHost, units: Units) -> None:
    units["disk"] = unit(
        IDLE, 'device_read_bps = { "/dev/vda" = "10M" }\ndevice_write_iops = { "/dev/vda" = 100 }\n'
    )
    running(guest, "disk")
    container = f"{SLICE}/quay-disk.scope/container"
    assert cgroup_files(guest, container, ["io.max"]) == {
        "io.max": "254:0 rbps=10485760 wbps=max riops=max wiops=100"
    }
    exec_in(guest, "disk", "head -c 31457280 /dev/zero > /big && sync")
    guest.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
    read = seconds(exec_in(guest, "disk", "busybox time cat /big > /dev/null"))
    assert read > 2.4, f"30 MiB read in {read:.1f} s at 10 MiB/s"
    direct = "busybox time busybox dd if=/dev/zero of=/w bs=4096 count=300 oflag=direct"
    written = seconds(exec_in(guest, "disk", direct))
    assert written > 2.4, f"300 direct writes in {written:.1f} s at 100 a second"


def test_a_device_that_is_no_disk_fails_the_start_with_a_reason(
    guest: VmHost, units: Units
) -> None:
    units["nodisk"] = unit(IDLE, 'device_read_bps = { "/dev/null" = "1M" }\n')
    found = shown(guest, "nodisk", "to fail", lambda f: "block device" in f.get("detail", ""))
    assert "/dev/null is not a block device" in found["detail"]
    assert not scope_active(guest, "nodisk")


def test_the_cgroupfs_driver_on_v2(guest: VmHost, units: Units) -> None:
    """quayd told to use cgroupfs (as where systemd is not init): the same limits, in the same
    path, no systemd unit; the count at exit is still there for the OOM."""
    guest.run(["mkdir", "-p", "/etc/quay"])
    guest.write_file("/etc/quay/quayd.toml", 'cgroup_driver = "cgroupfs"\n')
    try:
        guest.systemctl("restart", "quayd")
        units["hog"] = unit(ALLOCATE, 'memory = "64M"\n', policy="no")
        units["web"] = unit(IDLE, 'memory = "64M"\npids = 32\nio_weight = 300\n')
        running(guest, "web")
        scope = f"{SLICE}/quay-web.scope"
        assert cgroup_files(guest, scope, ["memory.max", "memory.swap.max", "pids.max"]) == {
            "memory.max": str(64 << 20),
            "memory.swap.max": "0",
            "pids.max": "32",
        }
        assert cgroup_files(guest, scope, ["io.weight"]) == {"io.weight": "default 300"}
        pid = show(guest, "web")["pid"]
        cgroup = guest.run(["cat", f"/proc/{pid}/cgroup"]).stdout.strip()
        assert cgroup == "0::/quay.slice/quay-web.scope"
        assert systemd_show(guest, "quay-web.scope", "LoadState") == {"LoadState": "not-found"}
        assert exited(guest, "hog")["last_exit"]["oom"] is True
        units.remove_all()
        assert not guest.exists(scope)
    finally:
        guest.run(["rm", "-f", "/etc/quay/quayd.toml"])
        guest.systemctl("restart", "quayd")
