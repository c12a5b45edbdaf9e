"""OOM kills of a container, seen on cgroup v1 and v2 without polling.

The kernel counts OOM kills per memory cgroup (v1 ``memory.oom_control``, v2 ``memory.events``,
line ``oom_kill N``). The count lives only as long as the cgroup does, and under the systemd
driver systemd removes the scope's cgroups as soon as the last process is gone, often before the
exit is seen. So a watch is opened on the init's memory cgroup between create and start
(:func:`watch_oom`), and the count at exit (:func:`oom_kills`) is only the first source:

* **v1** (:class:`EventfdOomEvents`): an eventfd registered on ``memory.oom_control`` through
  ``cgroup.event_control``, as containerd does. The kernel signals it at the OOM.
* **v2** (:class:`MemoryEventsWatch`): there is no eventfd; the kernel marks ``memory.events``
  modified (inotify ``IN_MODIFY``) when a count in it changes. Two things make that alone
  unreliable for a cgroup that holds the limit: the kernel sends at most one notification per
  file every 20 ms, holding back the rest on a timer, and drops a held-back one when the cgroup
  is removed; and the limit's ``max`` event always comes just before an OOM. So under the systemd
  driver the limit is set on the scope only (systemd's ``MemoryMax=``, see :mod:`resources`), and
  crun's ``container`` child, where the processes are, holds no limit of its own: its
  ``memory.events`` then changes only for an OOM kill of one of its processes, and that first
  notification is sent at once. A change seen there is an OOM kill even if the cgroup is gone
  before it can be read (:attr:`MemoryEventsWatch.kills_only`).

:attr:`OomEvents.verdict` is None (unknown) when the watch cannot tell, never a guess: on v2 a
cgroup with a limit of its own (runc's scope, which has no child) removed before its count was
read may have taken an OOM notification with it.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import os
import struct
from pathlib import Path

from quayd.isolation.cgroups import CGROUP_ROOT, scope_path, stat_field

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def oom_kills(name: str, *, cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """How many processes the kernel OOM-killed in the container's cgroup; None when it is gone.

    The cgroup is ``/quay.slice/quay-NAME.scope`` under both drivers (systemd names the scope
    so). On cgroup v2 its ``memory.events`` counts the cgroups below it too. On v1 each memory
    cgroup counts only its own kills (``memory.oom_control``), and crun under the systemd driver
    puts the container in a ``container`` child of the scope, where it sets the limit: so the
    counts of the scope and every cgroup below it are added up.
    """
    scope = scope_path(name)
    memory = cgroup_root / "memory"
    if not memory.is_dir():  # v2
        return stat_field(cgroup_root / scope / "memory.events", "oom_kill")
    top = memory / scope
    counts = [stat_field(top / "memory.oom_control", "oom_kill")]
    for directory, children, _ in os.walk(top):
        counts += [
            stat_field(Path(directory, c, "memory.oom_control"), "oom_kill") for c in children
        ]
    if counts[0] is None:
        return None
    return sum(count for count in counts if count is not None)


class OomEvents(abc.ABC):
    """A watch on one container's memory cgroup: ``fileno()`` is readable when something may
    have happened there; :meth:`take` reads it in. Close it when the container has ended."""

    def __init__(self, cgroup: Path) -> None:
        self.cgroup = cgroup
        self.seen = False
        """An OOM kill was seen."""

    @abc.abstractmethod
    def fileno(self) -> int: ...

    @abc.abstractmethod
    def take(self) -> bool:
        """Read pending events; True (and ``seen`` set) once one was an OOM kill."""

    @property
    def verdict(self) -> bool | None:
        """True: an OOM kill was seen; False: none happened while watched; None: unknown."""
        return self.seen

    @abc.abstractmethod
    def close(self) -> None: ...


class EventfdOomEvents(OomEvents):
    """cgroup v1: an eventfd registered on the memory cgroup's ``memory.oom_control``.

    The kernel signals it at the OOM, while the cgroup still exists, and once more when the
    cgroup is removed: an event is taken as an OOM only while the cgroup is still there.
    """

    def __init__(self, cgroup: Path) -> None:
        super().__init__(cgroup)
        control = os.open(cgroup / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            try:
                (cgroup / "cgroup.event_control").write_text(f"{self._eventfd} {control}")
            except BaseException:
                os.close(self._eventfd)
                raise
        finally:
            os.close(control)

    def fileno(self) -> int:
        return self._eventfd

    def take(self) -> bool:
        try:
            count = os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return self.seen
        # Removal signals once; anything else is an OOM. With the cgroup gone, only a count
        # above one proves an OOM (both arrived before this read).
        if (self.cgroup / "memory.oom_control").exists() or count > 1:
            self.seen = True
        return self.seen

    def close(self) -> None:
        if self._eventfd >= 0:
            os.close(self._eventfd)
            self._eventfd = -1


class MemoryEventsWatch(OomEvents):
    """cgroup v2: an inotify watch (``IN_MODIFY``) on the cgroup's ``memory.events``.

    Each notification is checked against the file's ``oom_kill`` count, read when the watch was
    opened; ``max``, ``high`` and ``low`` events change the file too. Where those cannot happen
    (:attr:`kills_only`) a notification is an OOM kill by itself, readable file or not.
    """

    def __init__(self, cgroup: Path, *, cgroup_root: Path = CGROUP_ROOT) -> None:
        super().__init__(cgroup)
        self._events = cgroup / "memory.events"
        baseline = stat_field(self._events, "oom_kill")
        if baseline is None:
            raise FileNotFoundError(errno.ENOENT, "no oom_kill count", str(self._events))
        self._baseline = baseline
        self.kills_only = kills_only(cgroup, cgroup_root)
        """Nothing but an OOM kill can change this cgroup's ``memory.events``: it has no
        ``memory.max`` or ``memory.high`` of its own, and no ``memory.low`` or ``memory.min``
        protection reaches it from an ancestor."""
        self._lost = False
        self._fd = _inotify_watch(self._events)

    def fileno(self) -> int:
        return self._fd

    def take(self) -> bool:
        modified = self._drain()
        if self.seen or (self.kills_only and not modified):
            return self.seen
        count = stat_field(self._events, "oom_kill")
        if count is not None:
            self.seen = count > self._baseline
        elif modified and self.kills_only:
            self.seen = True
        elif not self.kills_only:
            # Removed before it was read: a held-back notification may have gone with it.
            self._lost = True
        return self.seen

    @property
    def verdict(self) -> bool | None:
        if self.seen:
            return True
        return None if self._lost else False

    def _drain(self) -> bool:
        modified = False
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                modified = modified or bool(mask & _IN_MODIFY)
                offset += _EVENT.size + length
        return modified

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def kills_only(cgroup: Path, cgroup_root: Path = CGROUP_ROOT) -> bool:
    """Whether only OOM kills can change ``cgroup``'s ``memory.events`` (v2; see
    :attr:`MemoryEventsWatch.kills_only`): the ``max`` and ``high`` events are counted where the
    limit is crossed and the cgroups above it, ``low`` where protection is in effect, which an
    ancestor's ``memory.low`` or ``memory.min`` can hand down (``memory_recursiveprot``)."""
    for name in ("memory.max", "memory.high"):
        if _text(cgroup / name) != "max":
            return False
    level = cgroup
    while level != cgroup_root and cgroup_root in level.parents:
        if _text(level / "memory.low") != "0" or _text(level / "memory.min") != "0":
            return False
        level = level.parent
    return True


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _inotify_watch(path: Path) -> int:
    """A non-blocking inotify descriptor watching ``path`` for ``IN_MODIFY`` (libc: the
    standard library has no inotify)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"inotify_init1: {os.strerror(code)}")
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise OSError(code, f"inotify_add_watch {path}: {os.strerror(code)}", str(path))
    return fd


def watch_oom(pid: int, *, cgroup_root: Path = CGROUP_ROOT) -> OomEvents | None:
    """A watch on the memory cgroup ``pid`` is in; None where there is none to watch.

    Call it right after the runtime's create (the process is in its cgroup, nothing runs yet) and
    pass the result to :func:`container.stop` or :func:`container.wait_exit` (the caller closes
    it). None when the process or its memory cgroup is gone: the count at exit is then all there
    is.
    """
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1 = (cgroup_root / "memory").is_dir()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        try:
            if v1 and "memory" in controllers.split(","):
                return EventfdOomEvents(cgroup_root / "memory" / path.lstrip("/"))
            if not v1 and controllers == "":
                return MemoryEventsWatch(cgroup_root / path.lstrip("/"), cgroup_root=cgroup_root)
        except OSError:
            return None
    return None


def oom_verdict(count: int | None, events: OomEvents | None) -> bool | None:
    """Whether the container was OOM-killed: the count at exit (None: its cgroup is gone) and
    what the watch saw (None: there was none)."""
    if count is not None and count > 0:
        return True
    if events is not None and events.seen:
        return True
    if count is not None:
        return False
    return events.verdict if events is not None else None
