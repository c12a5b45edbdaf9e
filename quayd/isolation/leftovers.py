"""A container's cgroup that outlived what the runtime knows of it: found and ended before a create.

Why it can happen: the runtime's ``create`` runs as a command, and a create that is killed (it
hung past :data:`runtime.CREATE_TIMEOUT` on a machine slow after a boot, or quayd was killed
with it) leaves the container's init, still waiting for its start, in ``quay-NAME.scope``
while the runtime's root has no state for it: ``crun list`` does not show it and ``crun delete``
cannot name it. systemd keeps a scope as long as it has a process, and every later create of
that name then fails ("Unit quay-NAME.scope was already loaded or has a fragment file") for
good. A power-cut campaign in the cgroup v2 guest found exactly that (issue 19).

So before a create, after one that failed, and for every name at the agent's start
(:func:`end_dead_creates`), :func:`end_leftovers` looks at the name's cgroup
in every hierarchy: processes there, when the runtime knows no container of that name, are a
dead create's; they are SIGKILLed (through a pidfd, after checking the pid is still in that
cgroup, so a reused pid is never hit) and the cgroup is waited for until it is gone: systemd
removes a scope's cgroup once it is empty (the scope is then collected and its name free);
the runtime's own (cgroupfs driver; v1's ``cpuset`` and ``freezer``) are removed here once empty.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

from quayd.isolation.cgroups import CGROUP_ROOT, cgroup_version, scope_path
from quayd.isolation.errors import IsolationError
from quayd.isolation.runtime import Runtime

LEFTOVER_TIMEOUT = 10.0
"""How long a dead create's processes and cgroup may take to go (SIGKILL, then systemd's prune)."""

_POLL = 0.05
_SLICE = Path(scope_path("x")).parent
"""``quay.slice``: every container's cgroup is ``_SLICE/quay-NAME.scope`` in a hierarchy."""

log = structlog.get_logger("quayd.isolation")


class LeftoverScopeError(IsolationError):
    """A container's cgroup from an earlier create does not go away."""


def scope_dirs(name: str, cgroup_root: Path = CGROUP_ROOT) -> list[Path]:
    """The container's cgroup directory in each hierarchy where it exists (v2: one; v1: one per
    controller and systemd's own)."""
    hierarchies = [cgroup_root]
    if cgroup_version(cgroup_root) == 1:
        try:
            hierarchies = [entry for entry in cgroup_root.iterdir() if entry.is_dir()]
        except OSError:
            hierarchies = []
    candidates = [hierarchy / scope_path(name) for hierarchy in hierarchies]
    return [path for path in candidates if path.is_dir()]


def scope_names(cgroup_root: Path = CGROUP_ROOT) -> list[str]:
    """The names of the containers with a cgroup in ``quay.slice`` (in systemd's hierarchy, or
    v2's only one): ``quay-NAME.scope`` gives NAME."""
    roots = [cgroup_root] if cgroup_version(cgroup_root) == 2 else [
        cgroup_root / "unified", cgroup_root / "systemd", cgroup_root / "pids"
    ]  # fmt: skip
    names: set[str] = set()
    for root in roots:
        with contextlib.suppress(OSError):
            for entry in (root / _SLICE).iterdir():
                if (
                    entry.is_dir()
                    and entry.name.startswith("quay-")
                    and entry.name.endswith(".scope")
                ):
                    names.add(entry.name.removeprefix("quay-").removesuffix(".scope"))
    return sorted(names)


def end_dead_creates(runtime: Runtime, cgroup_root: Path = CGROUP_ROOT) -> list[str]:
    """The containers' cgroups the runtime knows nothing of, their processes ended and the
    cgroups gone (for an agent's start: no create runs then); their names.

    Under systemd only: there the scopes' names are the host's own, one agent's. Without it
    another agent (its own run directory) may share the cgroup tree, and only a create of the
    same name clears what it finds.
    """
    if not runtime.systemd_cgroup:
        return []
    known = set(runtime.list_ids())
    ended: list[str] = []
    for name in scope_names(cgroup_root):
        if name in known:
            continue
        try:
            end_leftovers(name, systemd_driver=True, cgroup_root=cgroup_root)
        except LeftoverScopeError as error:  # the unit's next create says it again
            log.error("cannot end what a dead create left", unit=name, error=str(error))
            continue
        ended.append(name)
    return ended


def processes_in(directory: Path) -> list[int]:
    """The pids in ``directory``'s cgroup and every cgroup below it."""
    pids: set[int] = set()
    for procs in _procs_files(directory):
        with contextlib.suppress(OSError):
            pids.update(int(word) for word in procs.read_text().split())
    return sorted(pids)


def _procs_files(directory: Path) -> Iterator[Path]:
    for below, _, files in os.walk(directory):
        if "cgroup.procs" in files:
            yield Path(below) / "cgroup.procs"


def in_cgroup(pid: int, relative: str) -> bool:
    """Whether ``pid`` is in the cgroup ``relative`` (or below it) in any hierarchy."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    wanted = "/" + relative
    for line in lines:
        path = line.split(":", 2)[-1]
        if path == wanted or path.startswith(wanted + "/"):
            return True
    return False


def end_leftovers(
    name: str,
    *,
    systemd_driver: bool,
    cgroup_root: Path = CGROUP_ROOT,
    timeout: float = LEFTOVER_TIMEOUT,
) -> list[int]:
    """End what an earlier create of ``name`` left in its cgroup; the pids SIGKILLed.

    The caller has made sure the runtime knows no container ``name``. Returns once the cgroup
    is gone in every hierarchy; raises :class:`LeftoverScopeError` when it is not after
    ``timeout`` s.
    """
    killed: dict[int, int] = {}  # pid: its pidfd, kept to reap it
    relative = scope_path(name)
    deadline = time.monotonic() + timeout
    try:
        while directories := scope_dirs(name, cgroup_root):
            pids = [pid for directory in directories for pid in processes_in(directory)]
            for pid in sorted(set(pids) - set(killed)):
                pidfd = _kill_if_in(pid, relative)
                if pidfd is not None:
                    killed[pid] = pidfd
            if not pids and not (systemd_driver and _systemds(directories, cgroup_root)):
                _remove_empty(directories)
            if time.monotonic() >= deadline:
                raise LeftoverScopeError(_stuck_message(name, directories, pids, systemd_driver))
            time.sleep(_POLL)
    finally:
        _reap(killed.values())
    if killed:
        log.warning("ended a dead create's processes", unit=name, pids=sorted(killed))
    return sorted(killed)


def _kill_if_in(pid: int, relative: str) -> int | None:
    """SIGKILL ``pid`` through a pidfd, once the pidfd is known to be that cgroup's process;
    the pidfd, or None when the pid was not (or no longer) there."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None  # ended meanwhile
    try:
        if in_cgroup(pid, relative):  # else the pid was reused by a process elsewhere
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            return pidfd
    except OSError:
        pass
    os.close(pidfd)
    return None


def _reap(pidfds: Iterable[int]) -> None:
    """Reap the killed processes that were quayd's children (an orphaned init reparents to
    quayd, its subreaper), so no zombie stays; close the pidfds."""
    for pidfd in pidfds:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        os.close(pidfd)


def _systemds(directories: list[Path], cgroup_root: Path) -> list[Path]:
    """Those of ``directories`` systemd removes itself, once the scope is empty: in its own
    hierarchy (v2's only one; v1's ``unified`` or ``systemd``). Removing them first could keep
    systemd from seeing the scope empty, and the scope would stay loaded."""
    own = {cgroup_root, cgroup_root / "unified", cgroup_root / "systemd"}
    return [path for path in directories if path.parents[len(_SLICE.parts)] in own]


def _remove_empty(directories: list[Path]) -> None:
    """rmdir each empty cgroup, the deepest first: under the cgroupfs driver, and in the v1
    hierarchies systemd does not manage (``cpuset``, ``freezer``: the runtime made them), no one
    else will."""
    for directory in directories:
        for below, _, _ in sorted(os.walk(directory), key=lambda entry: -len(entry[0])):
            with contextlib.suppress(OSError):
                os.rmdir(below)


def _stuck_message(name: str, directories: list[Path], pids: list[int], systemd: bool) -> str:
    where = ", ".join(str(path) for path in directories)
    if pids:
        listed = ", ".join(str(pid) for pid in pids)
        return (
            f"the cgroup of an earlier {name} ({where}) still has processes {listed} after "
            f"SIGKILL: they may be stuck in the kernel (D state; see /proc/PID/stack)"
        )
    if systemd:
        return (
            f"the cgroup of an earlier {name} ({where}) is empty but systemd has not removed it: "
            f"see systemctl status quay-{name}.scope; systemctl stop quay-{name}.scope frees it"
        )
    return f"the empty cgroup of an earlier {name} ({where}) cannot be removed"
