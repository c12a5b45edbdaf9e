"""A throwaway systemd "host" for tests: systemd as PID 1 of new namespaces (DEVELOPERS.md).

:func:`systemd_host` boots ``/lib/systemd/systemd --system --unit=basic.target`` in new pid, mount,
uts, net and **cgroup** namespaces, with private tmpfs on ``/run``, ``/tmp`` and ``/var/tmp``
(systemd-tmpfiles empties ``/tmp`` at boot), waits until ``systemctl is-system-running`` says
``running`` (or ``degraded``: the failed units are kept in ``failed_units``), and yields a
:class:`SystemdHost` to run commands inside with nsenter. On exit it SIGKILLs the inner systemd —
PID 1 of its pid namespace, so the kernel kills everything inside — reaps the ``unshare`` process,
checks that no process is left in the host's namespaces and no mount below its state dir, removes
the host's cgroups, then its state dir.

**Why a cgroup namespace** (beyond DEVELOPERS.md's command): without one, the inner systemd takes
the root of the machine's cgroup hierarchies as its own and creates ``init.scope``,
``system.slice``, ``quay.slice`` … there, outside the cgroup the tests run in; they outlive the
host, and two hosts at once (two developers' test runs) would share them. So the boot script
first makes a cgroup ``quay-test-XXXX`` below its own in every hierarchy, moves itself there, and
enters a new cgroup namespace rooted at it, with the hierarchies mounted again inside (the same
layout as outside: on this kind of machine ``cpu`` and ``cpuacct`` are separate v1 hierarchies,
which systemd would not mount itself). Teardown removes that subtree, which the inner systemd
filled.
Commands inside therefore run with ``nsenter -C`` too: a runtime outside the cgroup namespace would
compute cgroup paths that do not match the mounts it sees.

The host shares the machine's filesystem, but ``/run``, ``/tmp``, ``/var/tmp`` and
``/var/log/journal`` (so its journal is volatile and its own) are private tmpfs:
keep state meant to be seen from both sides in :attr:`SystemdHost.state_dir`
(``/var/lib/quay-test-XXXX``, removed at the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SYSTEMD = Path("/lib/systemd/systemd")
REPO = Path(__file__).resolve().parents[2]
STATE_PARENT = Path(os.environ.get("QUAY_TEST_STATE_PARENT", "/var/lib"))
"""Where host state dirs go: the machine's filesystem, or the tmpfs ``dev`` mounts where that
cannot hold overlay upper dirs (``QUAY_TEST_STATE_PARENT``)."""
BOOT_TIMEOUT = 60.0
RESULT_MARK = "@@quay-host-result@@ "


def unavailable_reason() -> str | None:
    """Why a systemd host cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root: namespaces, mounts and a systemd of its own"
    if not SYSTEMD.is_file():
        return f"{SYSTEMD} is missing (apt-get install systemd)"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (util-linux)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup"
    return None


class HostCallError(AssertionError):
    """A command or Python call inside the host failed; the message has its output."""


def run_command(
    argv: Sequence[str],
    *,
    where: str,
    prefix: Sequence[str] = (),
    check: bool = True,
    timeout: float = 60.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``prefix + argv`` as a test host runs its commands: output captured as text, stdin
    closed unless ``input`` is given, ``env`` added to this process's; with ``check``, a failure
    raises HostCallError naming ``where`` and ``argv`` (without the prefix) and both outputs."""
    done = subprocess.run(
        [*prefix, *argv],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
        check=False,
    )
    if check and done.returncode != 0:
        raise HostCallError(
            f"{where}, {shlex.join(argv)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    return done


@dataclass
class SystemdHost:
    pid: int
    """The inner systemd (PID 1 inside), as the machine sees it: what nsenter targets."""
    state_dir: Path
    boot_seconds: float
    state: str
    """``running`` or ``degraded``."""
    failed_units: list[str] = field(default_factory=list)

    def nsenter(self, *, cwd: Path | None = None) -> list[str]:
        return [
            "nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "-C",
            # -r: the host's root directory, not its mount namespace's (in a chroot they differ)
            "-r", f"--wd={cwd or REPO}",
        ]  # fmt: skip

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the host (its mount, pid, net, uts and cgroup namespaces)."""
        return run_command(
            argv,
            prefix=self.nsenter(cwd=cwd),
            where="inside the systemd host",
            check=check,
            timeout=timeout,
            input=input,
            env=env,
        )

    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the venv's Python inside the host: ``python -c CODE ARGS…`` in the repository."""
        return self.run(
            [sys.executable, "-c", code, *args],
            check=check,
            timeout=timeout,
            env={"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
        )

    def call(self, function: Callable[..., Any], /, *, timeout: float = 60.0, **kwargs: Any) -> Any:
        """Call a module-level ``function`` in a fresh Python process inside the host.

        Keyword arguments and the result travel as JSON (Paths as strings). The process ends when
        the function returns: what it started must not depend on it (which is the point for
        containers).
        """
        return call_function(self.python, function, timeout, kwargs)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check)


def call_function(
    python: Callable[..., subprocess.CompletedProcess[str]],
    function: Callable[..., Any],
    timeout: float,
    kwargs: Mapping[str, Any],
) -> Any:
    """``function(**kwargs)`` in a fresh Python started by ``python(code, *args, timeout=…)`` (a
    host's :meth:`python`): its module imported by name, arguments and result as JSON."""
    module, name = function.__module__, function.__qualname__
    code = (
        "import json, sys, importlib\n"
        f"fn = getattr(importlib.import_module({module!r}), {name!r})\n"
        "result = fn(**json.loads(sys.argv[1]))\n"
        f"print({RESULT_MARK!r} + json.dumps(result, default=str), flush=True)\n"
    )
    done = python(code, json.dumps(kwargs, default=str), timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise HostCallError(f"{module}.{name} printed no result:\n{done.stdout}\n{done.stderr}")


# --- cgroups -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hierarchy:
    mount_point: Path
    fs_type: str
    options: str
    """Mount options that select the hierarchy (``cpu``, ``name=systemd``, …), for ``-o``."""


_NOT_SELECTORS = {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec"}


def _hierarchies() -> list[_Hierarchy]:
    """The cgroup hierarchies mounted below /sys/fs/cgroup here, in mount order."""
    found: list[_Hierarchy] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        separator = fields.index("-", 6)
        fs_type, super_options = fields[separator + 1], fields[separator + 3]
        point = Path(fields[4])
        if fs_type not in ("cgroup", "cgroup2") or not point.is_relative_to("/sys/fs/cgroup"):
            continue
        selectors = [o for o in super_options.split(",") if o not in _NOT_SELECTORS]
        found.append(_Hierarchy(point, fs_type, ",".join(selectors)))
    return found


def _pivot_script(mount_point: Path) -> list[str]:
    """Make this root the root of the new mount namespace (pivot_root(2)'s "." "." recipe).

    In a chroot the mount namespace's root stays the machine's: whatever later joins one of the
    host's namespaces by setns (``crun exec``, ``nsenter``) would land at the machine's ``/``
    and see its files and its /proc. After the pivot the chroot is the namespace's root. Done
    on every boot, chroot or not (a sandbox may not let us look at PID 1's root to tell): one
    path, the same everywhere."""
    point = shlex.quote(str(mount_point))
    return [
        f"mkdir -p {point}",
        f"mount --rbind / {point}",
        f"cd {point}",
        "pivot_root . .",
        "umount -l .",
        "cd /",
    ]


def _boot_script(group: str, hierarchies: Sequence[_Hierarchy], *, pivot_at: Path) -> str:
    """Shell run by ``unshare --mount``: own cgroups, then the namespaces, then the root made
    the namespace's own (mounted at ``pivot_at``, :func:`_pivot_script`), then systemd."""
    remount = [
        "umount -R /sys/fs/cgroup",
        "mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup",
    ]
    for hierarchy in hierarchies:
        point = shlex.quote(str(hierarchy.mount_point))
        options = f"-o {shlex.quote(hierarchy.options)} " if hierarchy.options else ""
        remount.append(f"mkdir -p {point}")
        remount.append(f"mount -t {hierarchy.fs_type} {options}cgroup {point}")
    inner = "\n".join(
        [
            "set -e",
            *_pivot_script(pivot_at),
            *remount,
            "for d in /run /tmp /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs $d; done",
            "chmod 755 /run",
            # the machine's persistent journal is not the host's to write
            "if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi",
            f"exec {SYSTEMD} --system --unit=basic.target",
        ]
    )
    return f"""set -e
G={shlex.quote(group)}
T=$(mktemp -d /run/quay-test-cg.XXXXXX)
while IFS=: read -r id ctrl path; do
  d=$T/h$id; mkdir -p "$d"
  if [ "$id" = 0 ]; then mount -t cgroup2 cgroup2 "$d"
  else case $ctrl in name=*) o=none,$ctrl;; *) o=$ctrl;; esac; mount -t cgroup -o "$o" cgroup "$d"
  fi
  mkdir -p "$d$path/$G"
  if [ "$ctrl" = cpuset ]; then
    cat "$d$path/cpuset.cpus" > "$d$path/$G/cpuset.cpus"
    cat "$d$path/cpuset.mems" > "$d$path/$G/cpuset.mems"
  fi
  echo $$ > "$d$path/$G/cgroup.procs"
done < /proc/self/cgroup
for d in "$T"/h*; do umount "$d"; rmdir "$d"; done; rmdir "$T"
exec unshare --cgroup --pid --fork --mount-proc --mount --uts --net --propagation private \\
  sh -c {shlex.quote(inner)}
"""


def _cleanup_script(group: str) -> str:
    """Shell run by ``unshare --mount``: remove the host's cgroup subtree in every hierarchy."""
    return f"""G={shlex.quote(group)}
T=$(mktemp -d /run/quay-test-cg.XXXXXX)
left=0
while IFS=: read -r id ctrl path; do
  d=$T/h$id; mkdir -p "$d"
  if [ "$id" = 0 ]; then mount -t cgroup2 cgroup2 "$d"
  else case $ctrl in name=*) o=none,$ctrl;; *) o=$ctrl;; esac; mount -t cgroup -o "$o" cgroup "$d"
  fi
  if [ -d "$d$path/$G" ]; then
    find "$d$path/$G" -depth -type d -exec rmdir {{}} + 2>/dev/null || true
    [ -d "$d$path/$G" ] && {{ echo "left: $ctrl:$path/$G"; left=1; }}
  fi
  umount "$d"; rmdir "$d"
done < /proc/self/cgroup
rmdir "$T"
exit $left
"""


def _remove_cgroups(group: str) -> None:
    """Remove the host's cgroups; they empty a moment after the kill, so retry briefly."""
    deadline = time.monotonic() + 10
    while True:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _cleanup_script(group)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the systemd host's cgroups remain:\n{done.stdout}{done.stderr}")
        time.sleep(0.1)


# --- processes and namespaces --------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _namespaces(pid: int) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for kind in ("mnt", "pid", "net", "uts", "cgroup"):
        info = os.stat(f"/proc/{pid}/ns/{kind}")
        found[kind] = (info.st_dev, info.st_ino)
    return found


def _processes_in(namespaces: Mapping[str, tuple[int, int]]) -> list[int]:
    """Live processes in any of ``namespaces``."""
    wanted = set(namespaces.items())
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for kind in namespaces:
            try:
                info = os.stat(entry / "ns" / kind)
            except OSError:
                break
            if (kind, (info.st_dev, info.st_ino)) in wanted:
                found.append(int(entry.name))
                break
    return found


def _mounts_below(directory: Path) -> list[str]:
    found: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4]
        if Path(point).is_relative_to(directory):
            found.append(point)
    return found


# --- boot and teardown ---------------------------------------------------------------------------


@contextlib.contextmanager
def systemd_host() -> Iterator[SystemdHost]:
    """Boot a systemd host, yield it, tear it down by PID and check nothing is left."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot boot a systemd host: {reason}")
    token = secrets.token_hex(4)
    group = f"quay-test-{token}"
    state_dir = STATE_PARENT / group
    state_dir.mkdir(mode=0o755)
    log_path = state_dir / "boot.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private",
             "sh", "-c", _boot_script(group, _hierarchies(), pivot_at=state_dir / "root")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,
        )  # fmt: skip
    inner: int | None = None
    namespaces: dict[str, tuple[int, int]] = {}
    try:
        inner = _find_inner_systemd(process, log_path)
        namespaces = _namespaces(inner)
        host = SystemdHost(pid=inner, state_dir=state_dir, boot_seconds=0.0, state="")
        host.state = _wait_running(host, process, log_path)
        host.boot_seconds = time.monotonic() - started
        if host.state == "degraded":
            failed = host.systemctl("--failed", "--no-legend", "--plain", check=False).stdout
            host.failed_units = [line.split()[0] for line in failed.splitlines() if line.strip()]
        yield host
    finally:
        _teardown(process, inner, namespaces, group, state_dir)


def _find_inner_systemd(process: subprocess.Popen[bytes], log_path: Path) -> int:
    """The systemd process: the child of ``unshare --fork`` once it has exec'd systemd."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the systemd host did not boot:\n{log_path.read_text()}")
        if _comm(process.pid) == "unshare":
            for child in _children(process.pid):
                if _comm(child) == "systemd":
                    return child
        time.sleep(0.01)
    raise RuntimeError(f"no systemd process after {BOOT_TIMEOUT} s:\n{log_path.read_text()}")


def _wait_running(host: SystemdHost, process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the systemd host died while booting:\n{log_path.read_text()}")
        state = host.systemctl("is-system-running", check=False).stdout.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(0.02)
    raise RuntimeError(f"the systemd host is {state!r} after {BOOT_TIMEOUT} s")


def _teardown(
    process: subprocess.Popen[bytes],
    inner: int | None,
    namespaces: Mapping[str, tuple[int, int]],
    group: str,
    state_dir: Path,
) -> None:
    # The inner systemd is unshare's child and unshare is not reaped yet, so the pid is ours.
    if inner is not None and process.poll() is None and inner in _children(process.pid):
        os.kill(inner, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: start_new_session
        process.wait(timeout=10)
    problems: list[str] = []
    if namespaces:
        deadline = time.monotonic() + 10
        while (left := _processes_in(namespaces)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            problems.append(f"processes left in the host's namespaces: {left}")
    if mounts := _mounts_below(state_dir):
        problems.append(f"mounts left below {state_dir}: {mounts}")
    try:
        _remove_cgroups(group)
    except AssertionError as error:
        problems.append(str(error))
    if not _mounts_below(state_dir):  # never delete through a mount
        shutil.rmtree(state_dir, ignore_errors=True)
    if problems:
        raise AssertionError("the systemd host left things behind:\n" + "\n".join(problems))


# --- what tests that run containers in the host need ---------------------------------------------

BUSYBOX = Path("/bin/busybox")
"""Debian's busybox-static: the one binary test root filesystems are made of."""


def container_tests_unavailable() -> str | None:
    """Why containers cannot be run in a test host here, or None."""
    reason = unavailable_reason()
    if reason is None and not BUSYBOX.is_file():
        reason = f"{BUSYBOX} is missing (apt-get install busybox-static)"
    return reason


CONTAINER_TEST_MARKS = [
    pytest.mark.integration,
    pytest.mark.skipif(
        container_tests_unavailable() is not None, reason=container_tests_unavailable() or ""
    ),
]
"""``pytestmark`` for a module whose tests run containers in the systemd test host."""

RUNTIMES = [
    pytest.param(name, marks=pytest.mark.skipif(shutil.which(name) is None, reason=f"no {name}"))
    for name in ("crun", "runc")
]
"""Parametrize a test over both OCI runtimes quay drives."""


# --- as a command: run something in a throwaway host (`./dev run` where systemd is not PID 1) --


def main(argv: Sequence[str]) -> int:
    """``python -m tests.support.systemd_host COMMAND…``: boot a host, run COMMAND inside it in
    the foreground (``QUAY_HOST_STATE`` names the host's state dir), tear it all down when the
    command ends or on Ctrl-C / SIGTERM."""
    if not argv:
        print("usage: python -m tests.support.systemd_host COMMAND [ARG...]", file=sys.stderr)
        return 2
    with systemd_host() as host:
        command = [*host.nsenter(), "env", f"QUAY_HOST_STATE={host.state_dir}", *argv]
        process = subprocess.Popen(command)
        signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
