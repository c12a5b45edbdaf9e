"""Container output to journald, for real: which fields the entries carry in the systemd host.

A pulled busybox runs through :mod:`quayd.isolation.container` (systemd cgroup driver, so in
``quay-NAME.scope``) with its stdout and stderr on :func:`journald_stream` connections made by the
process that starts it — as quayd does. The entries are then read back inside the host with
``journalctl -o json``. What these tests pin down (journald 252 here):

* each line is attributed to the process that wrote it (journald reads the stream with
  ``SO_PASSCRED``), so a running container's lines carry ``_SYSTEMD_UNIT=quay-NAME.scope`` and
  its slice and cgroup, although the connecting process is in no unit at all;
* a line whose writer was gone before journald read it gets ``_SYSTEMD_UNIT`` from the stream
  header's unit id, and none without it (journald is held with SIGSTOP to make that happen).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation.container import ContainerConfig, prepare, remove, start, stop, wait_exit
from quayd.isolation.runtime import (
    ExitWatcher,
    OciRuntime,
    Stdio,
    become_subreaper,
    journald_stream,
)
from quayd.isolation.seccomp import load_default_profile
from quayd.isolation.spec import EtcFiles, ImageDefaults, seccomp_for
from quayd.units.model import Unit
from tests.support.pulled import pulled_busybox_layers
from tests.support.systemd_host import CONTAINER_TEST_MARKS, RUNTIMES, SystemdHost, systemd_host

pytestmark = CONTAINER_TEST_MARKS

RUN_DIR = Path("/run/quay")  # inside the host: its private /run
READY = "@@ready@@"


# --- inside the host (module-level: host.call imports them by name) -----------------------------


def _config(state_dir: Path, name: str, script: str) -> ContainerConfig:
    unit = Unit.model_validate(
        {
            "container": {
                "image": "test/busybox:1",
                "command": ["/bin/sh", "-c", script],
                "stop_timeout": "2s",
            },
            "resources": {"memory": "64M", "pids": 64},
            "network": {"mode": "none"},
        }
    )
    etc = state_dir / "etc" / name
    etc.mkdir(parents=True, exist_ok=True)
    for file, text in (("hostname", f"{name}\n"), ("hosts", "127.0.0.1 localhost\n")):
        (etc / file).write_text(text)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    return ContainerConfig(
        unit=unit,
        image=ImageDefaults(),
        etc_files=EtcFiles(etc / "hostname", etc / "hosts", etc / "resolv.conf"),
        volumes_dir=state_dir / "volumes",
        cgroup_driver="systemd",
        seccomp=seccomp_for(unit, load_default_profile()),
        nofile_ceiling=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        swap_limit=Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        or not Path("/sys/fs/cgroup/memory").is_dir(),
    )


def _entries(identifier: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The journal's entries under ``identifier`` once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        shown = subprocess.run(
            ["journalctl", "-t", identifier, "-o", "json", "--no-pager"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        entries = [json.loads(line) for line in shown.splitlines()]
        if len(entries) >= count:
            return entries
        time.sleep(0.05)
    raise AssertionError(f"{len(entries)} of {count} entries for {identifier}: {entries}")


def _by_unit(unit: str) -> list[str]:
    """``journalctl -u unit``'s stream entries (systemd's own about the scope left out)."""
    shown = subprocess.run(
        ["journalctl", "-u", unit, "-o", "json", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries = [json.loads(line) for line in shown.splitlines()]
    return [entry["MESSAGE"] for entry in entries if entry.get("_TRANSPORT") == "stdout"]


def _journald_pid() -> int:
    shown = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", "systemd-journald.service"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(shown.stdout)


def inside_running(*, runtime: str, name: str, state_dir: str, layers: list[str]) -> dict[str, Any]:
    """A container that writes to both streams and idles: its entries while it runs."""
    become_subreaper()
    base = Path(state_dir)
    script = f"echo to stdout; echo to stderr >&2; echo {READY}; exec sleep 600"
    bundle = prepare(name, [Path(x) for x in layers], _config(base, name, script), base / name)
    driver = OciRuntime(runtime, run_dir=RUN_DIR, systemd_cgroup=True)
    out = journald_stream(f"quay-{name}", unit_name=f"quay-{name}.scope")
    try:
        started = start(bundle, driver, out)
    finally:
        os.close(out)
    entries = _entries(f"quay-{name}", 3)
    by_unit = _by_unit(f"quay-{name}.scope")
    with ExitWatcher() as watcher:
        stop(
            name,
            signal_name="SIGKILL",
            timeout=5,
            runtime=driver,
            watcher=watcher,
            pid=started.pid,
            oom_events=started.oom_events,
        )
    if started.oom_events is not None:
        started.oom_events.close()
    remove(bundle, driver)
    return {
        "pid": started.pid,
        "my_cgroup": Path("/proc/self/cgroup").read_text(),
        "entries": entries,
        "by_unit": by_unit,
    }


def inside_gone_before_read(*, name: str, state_dir: str, layers: list[str]) -> dict[str, Any]:
    """journald stopped while a container writes a line to each stream and ends; then resumed.

    stdout's stream names the unit in its header, stderr's does not. Another process writes to
    stderr: journald caches what it learns per pid, so one writer on both would show the unit on
    both.
    """
    become_subreaper()
    base = Path(state_dir)
    script = (
        "echo from a process long gone; sh -c 'echo from another process long gone >&2'; exit 0"
    )
    bundle = prepare(name, [Path(x) for x in layers], _config(base, name, script), base / name)
    driver = OciRuntime("crun", run_dir=RUN_DIR, systemd_cgroup=True)
    journald = _journald_pid()
    os.kill(journald, signal.SIGSTOP)
    try:
        out = journald_stream(f"quay-{name}", unit_name=f"quay-{name}.scope")
        err = journald_stream(f"quay-{name}-bare")
        try:
            started = start(bundle, driver, Stdio(stdout=out, stderr=err))
        finally:
            os.close(out)
            os.close(err)
        with ExitWatcher() as watcher:
            ended = wait_exit(started, timeout=30, runtime=driver, watcher=watcher)
        if started.oom_events is not None:
            started.oom_events.close()
        # Reaped: the writer's /proc/PID is gone before journald reads a byte.
        reaped = not Path(f"/proc/{started.pid}").exists()
    finally:
        os.kill(journald, signal.SIGCONT)
    remove(bundle, driver)
    return {
        "code": None if ended is None else ended.code,
        "reaped": reaped,
        "pid": started.pid,
        "named": _entries(f"quay-{name}", 1),
        "bare": _entries(f"quay-{name}-bare", 1),
        "by_unit": _by_unit(f"quay-{name}.scope"),
    }


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host() -> Iterator[SystemdHost]:
    with systemd_host() as booted:
        yield booted


@pytest.fixture(scope="module")
def layers(host: SystemdHost, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """busybox pushed to a real registry and pulled, here, into a store in the host's state dir."""
    return pulled_busybox_layers(host.state_dir, tmp_path_factory.mktemp("journald-registry"))


_counter = iter(range(1, 1_000_000))


def unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_running_containers_lines_carry_its_scope_unit_slice_and_pid(
    host: SystemdHost, layers: list[str], runtime: str
) -> None:
    name = unique(f"journal-{runtime}-")
    seen = host.call(
        inside_running, runtime=runtime, name=name, state_dir=host.state_dir, layers=layers,
        timeout=120,
    )  # fmt: skip
    assert "quay.slice" not in seen["my_cgroup"]  # the connecting process is in no quay unit
    entries = seen["entries"]
    assert [entry["MESSAGE"] for entry in entries] == ["to stdout", "to stderr", READY]
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"] == f"quay-{name}"
        assert entry["_TRANSPORT"] == "stdout"
        assert entry["PRIORITY"] == "6"
        assert entry["_SYSTEMD_UNIT"] == f"quay-{name}.scope"
        assert entry["_SYSTEMD_SLICE"] == "quay.slice"
        # crun on cgroup v1: the scope's ``container`` child cgroup
        assert entry["_SYSTEMD_CGROUP"].startswith(f"/quay.slice/quay-{name}.scope")
        assert entry["_PID"] == str(seen["pid"])  # the container's shell wrote it (echo: builtin)
        assert "_SYSTEMD_INVOCATION_ID" in entry
    assert seen["by_unit"] == ["to stdout", "to stderr", READY]


def test_lines_of_a_writer_gone_before_journald_read_them_get_the_header_unit(
    host: SystemdHost, layers: list[str]
) -> None:
    name = unique("journal-gone-")
    seen = host.call(
        inside_gone_before_read, name=name, state_dir=host.state_dir, layers=layers, timeout=120
    )
    assert seen["code"] == 0
    assert seen["reaped"]
    (named,) = seen["named"]
    assert named["MESSAGE"] == "from a process long gone"
    assert named["_SYSTEMD_UNIT"] == f"quay-{name}.scope"
    assert named["_PID"] == str(seen["pid"])
    assert "_SYSTEMD_CGROUP" not in named  # the unit id stood in: the cgroup was unreadable
    (bare,) = seen["bare"]
    assert bare["MESSAGE"] == "from another process long gone"
    assert bare["_PID"] != named["_PID"]
    assert "_SYSTEMD_UNIT" not in bare
    assert seen["by_unit"] == ["from a process long gone"]
