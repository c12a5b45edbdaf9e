"""The precompiled seccomp filter (quayd.isolation.seccomp_bpf) for real.

The cache with the machine's libseccomp: compiled once, kept in memory and on disk, refusals
and a missing library falling back to None. Then crun in the systemd host: the same container
prepared and started through ``container.prepare``/``start`` with the JSON filter and with the
precompiled one, a static probe (tests/support/syscall_probe.c) reporting what a few raw
system calls return inside. Both paths must agree call for call, and crun must have loaded
exactly the program crun itself compiles from the JSON.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from quayd.isolation.container import ContainerConfig, prepare, remove, start, stop
from quayd.isolation.runtime import ExitWatcher, OciRuntime, become_subreaper, open_log_file
from quayd.isolation.seccomp import DEFAULT_PROFILE_PATH, load_default_profile
from quayd.isolation.seccomp_bpf import ANNOTATION, BpfCache, CompileError, Libseccomp, plan
from quayd.isolation.spec import EtcFiles, ImageDefaults, seccomp_for
from quayd.units.model import Unit
from tests.support.systemd_host import BUSYBOX, CONTAINER_TEST_MARKS, SystemdHost, systemd_host

PROBE_SOURCE = Path(__file__).parents[1] / "support" / "syscall_probe.c"
RUN_DIR = Path("/run/quay")  # inside the host: its private /run
EPERM, EINVAL, ENOSYS = "1", "22", "38"
PROBE = "grep '^Seccomp:' /proc/self/status; /probe"
DONE = "@@probed@@"

needs_profile = pytest.mark.skipif(
    not DEFAULT_PROFILE_PATH.is_file(),
    reason=f"no {DEFAULT_PROFILE_PATH} (apt-get install golang-github-containers-common)",
)


def _libseccomp_missing() -> str | None:
    try:
        Libseccomp()
    except CompileError as error:
        return str(error)
    return None


needs_libseccomp = pytest.mark.skipif(
    _libseccomp_missing() is not None, reason=f"libseccomp: {_libseccomp_missing()}"
)


def default_filter(**container: Any) -> dict[str, Any]:
    unit = Unit.model_validate({"container": {"image": "busybox", **container}})
    seccomp = seccomp_for(unit, load_default_profile())
    assert seccomp is not None
    return seccomp


# --- the cache, with the machine's libseccomp ----------------------------------------------------


@pytest.mark.integration
@needs_libseccomp
@needs_profile
def test_compiled_once_then_from_memory_then_from_disk(tmp_path: Path) -> None:
    seccomp = default_filter()
    cache = BpfCache(tmp_path / "seccomp")
    program = cache.program(seccomp)
    assert program is not None
    assert len(program) % 8 == 0
    assert len(program) > 400 * 8  # hundreds of syscalls, one or more instructions each
    (file,) = (tmp_path / "seccomp").iterdir()
    assert file.name.endswith(".bpf")
    assert file.read_bytes() == program
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "seccomp").stat().st_mode) == 0o700

    # The same filter again: from memory, whatever happened to the file.
    file.unlink()
    began = time.perf_counter()
    assert cache.program(json.loads(json.dumps(seccomp))) == program
    assert time.perf_counter() - began < 0.01
    assert not file.exists()

    # A new process (a new cache) reads the file: what is there is what it gives.
    file.write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")  # one instruction: RET ALLOW
    assert BpfCache(tmp_path / "seccomp").program(seccomp) == file.read_bytes()
    # ... unless it is not a program: then it compiles again.
    file.write_bytes(b"garbage")
    assert BpfCache(tmp_path / "seccomp").program(seccomp) == program

    # Another filter, another entry.
    other = cache.program(default_filter(cap_add=["SYS_PTRACE"]))
    assert other is not None
    assert other != program
    assert len(list((tmp_path / "seccomp").glob("*.bpf"))) == 2


@pytest.mark.integration
@needs_libseccomp
def test_what_cannot_be_precompiled_gives_none_and_is_logged_once(tmp_path: Path) -> None:
    cache = BpfCache(tmp_path / "seccomp")
    notify = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}],
    }
    with structlog.testing.capture_logs() as logs:
        assert cache.program(notify) is None
        assert cache.program(notify) is None
    assert [entry["event"] for entry in logs] == ["this seccomp filter is compiled by the runtime"]
    assert "NOTIFY" in logs[0]["reason"]
    assert not (tmp_path / "seccomp").exists()


@pytest.mark.integration
def test_without_libseccomp_every_start_takes_the_json_path(tmp_path: Path) -> None:
    cache = BpfCache(tmp_path / "seccomp", library="libseccomp-not-here.so.9")
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    with structlog.testing.capture_logs() as logs:
        assert cache.program(seccomp) is None
        assert cache.program(seccomp) is None
    assert len(logs) == 1
    assert logs[0]["log_level"] == "warning"
    assert "libseccomp-not-here" in logs[0]["reason"]


@pytest.mark.integration
@needs_libseccomp
def test_unknown_syscall_names_are_skipped_as_crun_does(tmp_path: Path) -> None:
    seccomp = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["getpid", "no_such_call_at_all"], "action": "SCMP_ACT_ALLOW"}],
    }
    program, unknown = Libseccomp().compile(plan(seccomp))
    assert unknown == ["no_such_call_at_all"]
    known, _ = Libseccomp().compile(
        plan({**seccomp, "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]})
    )
    assert program == known
    assert BpfCache(tmp_path).program(seccomp) == program


# --- crun, in the systemd host -------------------------------------------------------------------


def inside_run(*, state_dir: str, name: str, cap_add: list[str], precompiled: bool) -> Any:
    """prepare + start under crun (systemd driver); the probe runs as the container's process,
    then again through ``crun exec`` (health checks, ``quayctl exec``), then the container is
    stopped. Returns both outputs, config.json and the program crun loaded."""
    become_subreaper()
    base = Path(state_dir)
    unit = Unit.model_validate(
        {
            "container": {
                "image": "test/probe",
                "command": ["/bin/sh", "-c", f"{PROBE}; echo {DONE}; exec sleep 60"],
                "cap_add": cap_add,
            },
            "network": {"mode": "none"},
        }
    )
    etc = base / "etc"
    config = ContainerConfig(
        unit=unit,
        image=ImageDefaults(),
        etc_files=EtcFiles(etc / "hostname", etc / "hosts", etc / "resolv.conf"),
        volumes_dir=base / "volumes",
        cgroup_driver="systemd",
        seccomp=seccomp_for(unit, load_default_profile()),
        seccomp_cache_dir=base / "seccomp" if precompiled else None,
        nofile_ceiling=1024,
        swap_limit=False,
    )
    runtime = OciRuntime("crun", run_dir=RUN_DIR, systemd_cgroup=True)
    bundle = prepare(name, [base / "layer"], config, base / "containers" / name)
    log = base / f"{name}.log"
    out = open_log_file(log)
    try:
        started = start(bundle, runtime, out)
    finally:
        os.close(out)
    loaded = (runtime.root / name / "seccomp.bpf").read_bytes()  # until delete
    deadline = time.monotonic() + 30
    while DONE not in log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.02)
    executed = runtime.exec(name, ["/bin/sh", "-c", PROBE], timeout=30)
    with ExitWatcher() as watcher:
        stop(
            name,
            signal_name="SIGKILL",
            timeout=10,
            runtime=runtime,
            watcher=watcher,
            pid=started.pid,
            oom_events=started.oom_events,
        )
    if started.oom_events is not None:
        started.oom_events.close()
    spec = json.loads(bundle.config.read_text())
    remove(bundle, runtime)
    return {
        "log": log.read_text(errors="replace"),
        "exec": executed.stdout.decode(errors="replace"),
        "annotations": spec["annotations"],
        "has_json_filter": "seccomp" in spec["linux"],
        "loaded": base64.b64encode(loaded).decode(),
    }


@pytest.fixture(scope="module")
def host() -> Iterator[SystemdHost]:
    with systemd_host() as booted:
        yield booted


@pytest.fixture(scope="module")
def layer(host: SystemdHost) -> Path:
    """One image layer: busybox, the probe, a passwd; and the /etc files the spec binds."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build tests/support/syscall_probe.c")
    layer = host.state_dir / "layer"
    (layer / "bin").mkdir(parents=True)
    (layer / "etc").mkdir()
    shutil.copy(BUSYBOX, layer / "bin" / "busybox")
    os.symlink("busybox", layer / "bin" / "sh")
    (layer / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(layer / "probe"), str(PROBE_SOURCE)],
        check=True,
        capture_output=True,
    )
    etc = host.state_dir / "etc"
    etc.mkdir()
    for file in ("hostname", "hosts", "resolv.conf"):
        (etc / file).write_text("\n")
    return layer


def probe(host: SystemdHost, name: str, *, precompiled: bool, cap_add: list[str]) -> Any:
    return host.call(
        inside_run,
        state_dir=str(host.state_dir),
        name=name,
        cap_add=cap_add,
        precompiled=precompiled,
        timeout=120,
    )


def results(log: str) -> dict[str, str]:
    found = {}
    for line in log.splitlines():
        key, sep, value = line.replace(":\t", "=").partition("=")
        if sep:
            found[key] = value.strip()
    return found


integration, runs_containers = CONTAINER_TEST_MARKS


@integration
@runs_containers
@needs_libseccomp
@needs_profile
@pytest.mark.skipif(shutil.which("crun") is None, reason="no crun")
@pytest.mark.parametrize("cap_add", [[], ["AUDIT_WRITE"]], ids=["default-caps", "audit-write"])
@pytest.mark.usefixtures("layer")
def test_crun_runs_the_precompiled_filter_as_it_runs_its_own(
    host: SystemdHost, cap_add: list[str]
) -> None:
    suffix = "-".join(cap_add).lower() or "default"
    with_json = probe(host, f"json-{suffix}", precompiled=False, cap_add=cap_add)
    with_bpf = probe(host, f"bpf-{suffix}", precompiled=True, cap_add=cap_add)

    # The annotation is there only when asked for; the JSON filter always (flags, runc).
    assert ANNOTATION not in with_json["annotations"]
    assert with_bpf["annotations"][ANNOTATION] == with_bpf["loaded"]
    assert with_json["has_json_filter"]
    assert with_bpf["has_json_filter"]
    # crun loaded exactly the program it compiles itself from the JSON filter.
    assert with_bpf["loaded"] == with_json["loaded"]
    assert (host.state_dir / "seccomp").is_dir()

    seen_json, seen_bpf = results(with_json["log"]), results(with_bpf["log"])
    assert seen_bpf == seen_json  # call for call
    # crun exec applies the same program (it reads it back from its state).
    assert results(with_bpf["exec"]) == results(with_json["exec"]) == seen_bpf
    assert seen_bpf["Seccomp"] == "2"
    assert seen_bpf["getpid"] == "ok"
    assert seen_bpf["vmsplice"] == EPERM  # the kernel would say EBADF
    assert seen_bpf["add_key"] == ENOSYS  # not in the allow list: the default action
    assert seen_bpf["personality_query"] == seen_bpf["personality_linux"] == "ok"
    assert seen_bpf["personality_no_randomize"] == ENOSYS  # an argument not allowed
    assert seen_bpf["socket_inet"] == seen_bpf["socket_netlink_route"] == "ok"
    # Two comparisons in one rule: AF_NETLINK and NETLINK_AUDIT, refused unless cap_add gives
    # CAP_AUDIT_WRITE (not a default).
    assert seen_bpf["socket_netlink_audit"] == ("ok" if cap_add else EINVAL)
