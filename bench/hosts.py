"""Where ``python -m bench all`` runs: a throwaway systemd host, or this machine's own systemd.

By default the bench boots a systemd host in namespaces (tests/support/systemd_host.py), which
shares this machine's kernel and cgroup layout. On a machine booted with systemd as PID 1 (a
Debian 12 VM guest with cgroup v2, say) a host nested in it would measure the
nesting, so ``--this-host`` uses the machine itself: :class:`LocalHost` has the interface the bench
uses (:class:`BenchHost`), with no nsenter, and :func:`local_host` removes what the bench made
here (its state dir, its /run dirs, the quay scopes, bridge and ruleset it created).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.support.systemd_host import REPO, STATE_PARENT, run_command

RUN_PREFIXES = ("quay-bench", "bench-podman", "bp")
"""Entries of /run the bench makes (its quayd's run dirs, podman's run roots): removed at the
end when they were not there at the start."""
LINK_PREFIXES = ("quay", "podman", "cni-podman")
"""Network links quayd and podman make (their bridges): removed when new."""


class BenchHost(Protocol):
    """What the bench needs of a host: commands in it, and a state dir both sides see."""

    state_dir: Path
    boot_seconds: float
    state: str

    def nsenter(self, *, cwd: Path | None = None) -> list[str]: ...

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]: ...

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...


class LocalHostError(RuntimeError):
    """``--this-host`` cannot run here; the message says why and what to do instead."""


def refusal(
    *, root: bool, pid1: str, booted: bool, quayd_active: bool, run_dir: bool
) -> str | None:
    """Why the bench must not use this machine's systemd, or None when it may."""
    if not root:
        return "--this-host needs root (quayd, podman and crun run as root)"
    if pid1 != "systemd" or not booted:
        return (
            f"--this-host needs systemd as PID 1, and PID 1 here is {pid1!r}"
            + ("" if booted else " (no /run/systemd/system)")
            + ": run `python -m bench all` without it (it boots a throwaway systemd host)"
        )
    if quayd_active:
        return (
            "quayd.service is running here: the bench's quayd would share its bridge and its "
            "nftables ruleset; stop it first (`systemctl stop quayd`)"
        )
    if run_dir:
        return (
            "/run/quay-bench exists: another bench runs here, or one was killed "
            "(stop it, or remove /run/quay-bench)"
        )
    return None


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip()
    except OSError:
        return "?"


def local_refusal() -> str | None:
    """:func:`refusal` for this machine."""
    pid1, booted = _pid1(), Path("/run/systemd/system").is_dir()
    # systemctl only where systemd runs (elsewhere it complains on stderr)
    active = (
        pid1 == "systemd"
        and booted
        and subprocess.run(
            ["systemctl", "is-active", "--quiet", "quayd.service"], check=False
        ).returncode
        == 0
    )
    return refusal(
        root=os.geteuid() == 0,
        pid1=pid1,
        booted=booted,
        quayd_active=active,
        run_dir=Path("/run/quay-bench").exists(),
    )


@dataclass
class LocalHost:
    """This machine as the bench's host: commands run here, directly."""

    state_dir: Path
    boot_seconds: float = 0.0
    """Nothing booted: 0."""
    state: str = ""
    """``systemctl is-system-running`` at the start."""

    def nsenter(self, *, cwd: Path | None = None) -> list[str]:  # noqa: ARG002 (the Protocol's)
        return []  # commands run here as they are

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
        """Run ``argv`` here, in the repository unless ``cwd`` (as SystemdHost.run does)."""
        return run_command(
            argv,
            where="on this host",
            check=check,
            timeout=timeout,
            input=input,
            env=env,
            cwd=cwd or REPO,
        )

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check)


def cgroup_fs(host: BenchHost) -> str:
    """``stat -fc %T /sys/fs/cgroup`` in the host: ``cgroup2fs`` (unified v2) or ``tmpfs``
    (v1 or hybrid: a tmpfs holding one mount per hierarchy)."""
    return host.run(["stat", "-fc", "%T", "/sys/fs/cgroup"]).stdout.strip()


@dataclass(frozen=True)
class _Before:
    run_entries: frozenset[str]
    links: frozenset[str]
    scopes: frozenset[str]
    had_table: bool


def _run_entries() -> frozenset[str]:
    return frozenset(p.name for p in Path("/run").iterdir() if p.name.startswith(RUN_PREFIXES))


def _links() -> frozenset[str]:
    done = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False)
    names = (line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines())
    return frozenset(name for name in names if name.startswith(LINK_PREFIXES))


def _quay_scopes(host: LocalHost) -> frozenset[str]:
    listed = host.systemctl(
        "list-units", "--all", "--type=scope", "--no-legend", "--plain", "quay-*", check=False
    ).stdout
    return frozenset(line.split()[0] for line in listed.splitlines() if line.strip())


def _has_table() -> bool:
    done = subprocess.run(
        ["nft", "list", "table", "inet", "quay"], capture_output=True, check=False
    )
    return done.returncode == 0


def _mounts_below(paths: Sequence[Path]) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4]
        if any(Path(point).is_relative_to(path) for path in paths):
            found.append(point)
    return found


@contextlib.contextmanager
def local_host() -> Iterator[LocalHost]:
    """This machine as the host, refused unless systemd is PID 1 (:func:`refusal`); at the end,
    what the bench made here is removed: new quay scopes stopped, mounts below its dirs
    unmounted, new bridges and quay's ruleset deleted, its state dir and /run dirs removed."""
    reason = local_refusal()
    if reason is not None:
        raise LocalHostError(reason)
    STATE_PARENT.mkdir(parents=True, exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="quay-bench-", dir=STATE_PARENT))
    state_dir.chmod(0o755)
    host = LocalHost(state_dir=state_dir)
    host.state = host.systemctl("is-system-running", check=False).stdout.strip()
    before = _Before(_run_entries(), _links(), _quay_scopes(host), _has_table())
    try:
        yield host
    finally:
        _clean(host, before)


def _clean(host: LocalHost, before: _Before) -> None:
    problems: list[str] = []
    for scope in sorted(_quay_scopes(host) - before.scopes):
        host.systemctl("stop", scope, check=False)
    made = [host.state_dir, *(Path("/run") / name for name in _run_entries() - before.run_entries)]
    # deepest first: a mount inside another goes before it
    for point in sorted(_mounts_below(made), key=lambda p: -p.count("/")):
        host.run(["umount", "-l", point], check=False)
    for link in sorted(_links() - before.links):
        host.run(["ip", "link", "delete", link], check=False)
    if not before.had_table and _has_table():
        host.run(["nft", "delete", "table", "inet", "quay"], check=False)
    if left := _mounts_below(made):
        problems.append(f"mounts left: {left}")
    else:  # never delete through a mount
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
    if problems:
        raise LocalHostError("the bench left things on this host:\n" + "\n".join(problems))
