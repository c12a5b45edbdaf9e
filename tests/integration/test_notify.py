"""sd_notify from a container to quay's NotifySocket, with crun and runc, in the systemd test host.

The root is busybox-static plus the static ``sd_notify`` helper (tests/support/sd_notify.c,
compiled by a fixture; it sends its first argument to ``$NOTIFY_SOCKET`` and execs the rest), the
spec is :func:`build_spec`'s with ``notify_socket_dir`` set (a bind mount of the socket's host
directory at ``/run/quay-notify`` and ``NOTIFY_SOCKET`` in the *container's* environment; the
runtime's own environment has none, so neither runtime proxies or waits).

One ``host.call`` step binds the socket, creates and starts the container (timed: no waiting for
READY), reads the messages until the expected ones came, looks at the senders while they still
run (``NSpid`` in ``/proc/PID/status``), then deletes the container and closes the socket. The
test then checks from outside that nothing is left: no runtime state, no mount, no scope, no
socket file.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation.notify import NotifySocket
from quayd.isolation.rootfs import mounts_below
from quayd.isolation.runtime import OciRuntime, Stdio, open_log_file
from quayd.isolation.seccomp import load_default_profile
from quayd.isolation.spec import (
    EtcFiles,
    ImageDefaults,
    SpecInputs,
    build_spec,
    seccomp_for,
    user_spec,
)
from quayd.isolation.users import resolve_user
from quayd.units.model import Unit
from tests.support.systemd_host import (
    BUSYBOX,
    CONTAINER_TEST_MARKS,
    RUNTIMES,
    SystemdHost,
    systemd_host,
)

pytestmark = CONTAINER_TEST_MARKS

RUN_DIR = Path("/run/quay")  # inside the host: its private /run
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\n"
QUICK = 5.0
"""Seconds within which create and start return: crun's own NOTIFY_SOCKET proxy would block
create until READY (30 s when nobody answers); quay's socket must not."""


@pytest.fixture(scope="module")
def host() -> Iterator[SystemdHost]:
    with systemd_host() as booted:
        yield booted


def write_bundle(
    host: SystemdHost, sd_notify: Path, *, name: str, command: list[str], user: str | None
) -> Path:
    """A bundle of busybox + sd_notify, with build_spec's config.json and a notify directory."""
    bundle = host.state_dir / name
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sh")
    shutil.copy(sd_notify, rootfs / "bin" / "sd_notify")
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)
    (bundle / "hostname").write_text(f"{name}\n")
    (bundle / "hosts").write_text("127.0.0.1 localhost\n")
    (bundle / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    container: dict[str, Any] = {"image": "busybox", "command": command}
    if user is not None:
        container["user"] = user
    unit = Unit.model_validate({"container": container, "network": {"mode": "none"}})
    image = ImageDefaults()
    profile = load_default_profile()
    spec = build_spec(
        SpecInputs(
            name=name,
            unit=unit,
            image=image,
            rootfs=rootfs,
            netns=None,
            user=resolve_user(user_spec(unit, image), rootfs, image="busybox"),
            env_files={},
            etc_files=EtcFiles(bundle / "hostname", bundle / "hosts", bundle / "resolv.conf"),
            volumes_dir=bundle / "volumes",
            notify_socket_dir=bundle / "notify",
            cgroup_driver="systemd",
            seccomp=seccomp_for(unit, profile),
            # This machine's root lacks CAP_SYS_RESOURCE: limits cannot go above quayd's own.
            nofile_ceiling=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        )
    )
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    return bundle


# --- run inside the host (module-level: host.call imports them by name) --------------------------


def _nspid(pid: int) -> list[int]:
    """The pid in each nested pid namespace, outermost first (``NSpid``), [] when it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return []
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return [int(word) for word in line.split()[1:]]
    return []


def inside_notify(*, runtime: str, name: str, bundle: str, expect: list[str]) -> dict[str, Any]:
    """Bind the socket, create and start, collect messages until every key in ``expect`` came
    (20 s at most), look at the senders, then delete the container and close the socket."""
    directory = Path(bundle)
    driver = OciRuntime(runtime, run_dir=RUN_DIR, systemd_cgroup=True)
    result: dict[str, Any] = {}
    with NotifySocket(directory / "notify") as notify:
        result["socket_mode"] = oct(notify.path.stat().st_mode & 0o777)
        out = open_log_file(directory / "console.log")
        try:
            started = time.monotonic()
            pid = driver.create(
                name, directory, pid_file=directory / "init.pid", stdio=Stdio(out, out)
            )
            created = time.monotonic()
            driver.start(name)
            running = time.monotonic()
        finally:
            os.close(out)
        try:
            messages: list[dict[str, Any]] = []
            deadline = running + 20
            with selectors.DefaultSelector() as selector:
                selector.register(notify, selectors.EVENT_READ)
                while time.monotonic() < deadline and not all(
                    any(key in m["fields"] for m in messages) for key in expect
                ):
                    if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                        for message in notify.receive():
                            messages.append(
                                {
                                    "fields": message.fields,
                                    "pid": message.pid,
                                    "uid": message.uid,
                                    "gid": message.gid,
                                    "problems": list(message.problems),
                                    "after": time.monotonic() - running,
                                    "nspid": _nspid(message.pid) if message.pid else [],
                                }
                            )
            result.update(
                pid=pid,
                nspid=_nspid(pid),
                create_seconds=created - started,
                start_seconds=running - created,
                messages=messages,
            )
        finally:
            driver.delete(name, force=True)
    result["socket_left"] = (directory / "notify" / "notify.sock").exists()
    result["console"] = (directory / "console.log").read_text(errors="replace")
    return result


def inside_leftovers(*, runtime: str, bundle: str) -> dict[str, Any]:
    return {
        "mounts": [str(point) for point in mounts_below(Path(bundle))],
        "runtime_ids": OciRuntime(runtime, run_dir=RUN_DIR).list_ids(),
    }


# --- the tests -----------------------------------------------------------------------------------


def check_nothing_left(host: SystemdHost, runtime: str, name: str, bundle: Path) -> None:
    left = host.call(inside_leftovers, runtime=runtime, bundle=str(bundle))
    assert left == {"mounts": [], "runtime_ids": []}
    deadline = time.monotonic() + 10
    while True:
        shown = host.systemctl("show", "-p", "LoadState", f"quay-{name}.scope", check=False)
        if shown.stdout.strip() == "LoadState=not-found" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert shown.stdout.strip() == "LoadState=not-found"
    assert not (bundle / "notify" / "notify.sock").exists()
    shutil.rmtree(bundle)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ready_status_and_watchdog_reach_quay(
    host: SystemdHost, sd_notify: Path, runtime: str
) -> None:
    name = f"notify-{runtime}"
    # The init sends, execs the helper again, sends, execs sleep: both from the container's PID 1.
    command = [
        "/bin/sd_notify", "READY=1\nSTATUS=warming up",
        "/bin/sd_notify", "WATCHDOG=1",
        "/bin/busybox", "sleep", "1000",
    ]  # fmt: skip
    bundle = write_bundle(host, sd_notify, name=name, command=command, user=None)
    got = host.call(
        inside_notify, runtime=runtime, name=name, bundle=str(bundle), expect=["READY", "WATCHDOG"]
    )
    messages = got["messages"]
    assert [m["fields"] for m in messages] == [
        {"READY": "1", "STATUS": "warming up"},
        {"WATCHDOG": "1"},
    ], got["console"]
    assert got["nspid"][-1] == 1  # the init, PID 1 of its namespace
    for message in messages:
        # The sender as the host sees it: the container's init, whose pid create returned.
        assert message["pid"] == got["pid"]
        assert message["nspid"] == got["nspid"]
        assert (message["uid"], message["gid"]) == (0, 0)
        assert message["problems"] == []
    assert got["create_seconds"] < QUICK
    assert got["start_seconds"] < QUICK
    assert messages[-1]["after"] < QUICK
    assert got["socket_mode"] == "0o777"
    assert got["socket_left"] is False
    check_nothing_left(host, runtime, name, bundle)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_non_root_child_process_can_send(
    host: SystemdHost, sd_notify: Path, runtime: str
) -> None:
    name = f"notify-app-{runtime}"
    script = "sd_notify \"$(printf 'READY=1\\nSTATUS=as app')\"; exec sleep 1000"
    bundle = write_bundle(host, sd_notify, name=name, command=["/bin/sh", "-c", script], user="app")
    got = host.call(inside_notify, runtime=runtime, name=name, bundle=str(bundle), expect=["READY"])
    [message] = got["messages"]
    assert message["fields"] == {"READY": "1", "STATUS": "as app"}, got["console"]
    assert (message["uid"], message["gid"]) == (1000, 1000)
    # A child of the init: another process of the container, in the host's pid numbering.
    assert message["pid"] is not None
    assert message["pid"] != got["pid"]
    assert got["nspid"][-1] == 1
    assert message["problems"] == []
    assert got["create_seconds"] < QUICK
    assert got["start_seconds"] < QUICK
    check_nothing_left(host, runtime, name, bundle)
