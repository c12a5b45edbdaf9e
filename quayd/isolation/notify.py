"""quay's sd_notify receiver: one datagram socket per container, bound into it.

A container that wants to tell quay it is ready (or alive, or stopping) gets ``NOTIFY_SOCKET`` in
its environment pointing at ``/run/quay-notify/notify.sock``; that directory is a bind mount of
the host directory holding a :class:`NotifySocket` (``SpecInputs.notify_socket_dir``). The
messages are systemd's (``sd_notify(3)``): one datagram of newline-separated ``KEY=VALUE``
lines, such as ``READY=1\\nSTATUS=warming up`` or ``WATCHDOG=1``.

Why quay's own socket and not the runtime's ``NOTIFY_SOCKET`` handling: crun's proxy forwards only
``READY=1`` (no STATUS, no WATCHDOG), adds a ``BARRIER=1`` datagram with a file descriptor, and
makes ``create`` block until the container is ready (30 s when nobody answers); runc's is similar
in spirit. A plain bound socket delivers every message whole, with the sender's credentials, and
``create`` returns at once.

**Permissions.** The directory is made ``0o755`` and the socket ``0o777``. A container's
processes may run as any uid (the image's user, one a ``USER`` switch or ``su`` picks, an
``exec`` health check's), and sending needs write permission on the socket file and search
permission on the directory; chowning to "the container's uid" would break as soon as a second
uid sends. Widening is safe because the directory is *per container*: the only processes that
can reach the socket are that container's (through its bind mount, which bypasses the host path's
parents) and host root, provided the host directory sits below one other host users cannot
traverse (quay's run dir, ``0o700``; a caller's choice, not checked here). Who sent what is
not taken from the path but from the kernel's ``SCM_CREDENTIALS`` (``SO_PASSCRED``): each
:class:`NotifyMessage` carries the sender's pid, uid and gid, translated into quayd's pid
namespace, so the caller can accept only the container's main process (systemd's
``NotifyAccess=main``) or any of its processes (``all``).

**What is not supported.** File descriptors sent with a message (``FDSTORE=1``, or crun-style
``BARRIER=1``) are closed on receipt; the message says so in :attr:`NotifyMessage.problems`. A
datagram over :data:`MAX_DATAGRAM` bytes (systemd's own limit) is not parsed, nor one with a NUL
byte; both are reported, not raised. Messages sent while no socket is bound (quayd restarting)
are lost: the sender gets ``ECONNREFUSED``. A new :class:`NotifySocket` on the same directory
replaces the stale socket file, and the container sees the new one through its directory mount.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from quayd.isolation.errors import IsolationError

SOCKET_NAME = "notify.sock"
"""The socket's file name in its directory (``spec.NOTIFY_SOCKET_NAME``)."""
DIR_MODE = 0o755
SOCKET_MODE = 0o777
MAX_DATAGRAM = 4096
"""Larger datagrams are dropped unparsed, as systemd does (its ``NOTIFY_BUFFER_MAX``)."""
MAX_FDS = 253
"""The kernel's ``SCM_MAX_FD``: room for every descriptor one message can carry, to close them."""
MAX_PATH = 107
"""``sun_path`` holds 108 bytes with the terminating NUL."""

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid
_FD = array.array("i").itemsize
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(MAX_FDS * _FD)


class NotifySocketError(IsolationError):
    """The notify socket cannot be created (a path too long, a directory that cannot be made)."""


def parse_notify(data: bytes) -> dict[str, str]:
    """The ``KEY=VALUE`` fields of one sd_notify datagram.

    Lines are separated by ``\\n``; a line without ``=`` or with an empty key is ignored, as are
    empty lines. A key given twice keeps its *first* value (systemd looks up the first match).
    Values are kept verbatim (``=`` in a value stays); bytes that are not UTF-8 become U+FFFD.
    A datagram holding a NUL byte is malformed as a whole: no fields (systemd ignores it too).
    """
    if b"\0" in data:
        return {}
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if not sep or not key:
            continue
        fields.setdefault(key, value)
    return fields


def _int_field(fields: Mapping[str, str], key: str) -> int | None:
    try:
        return int(fields[key])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class NotifyMessage:
    """One datagram received from a container."""

    fields: dict[str, str]
    """Every ``KEY=VALUE`` of the message (:func:`parse_notify`), unknown keys included."""
    pid: int | None
    """The sender's pid as quayd's pid namespace sees it (None: no credentials, or the sender is
    in no namespace quayd can see — the kernel then reports 0)."""
    uid: int | None
    gid: int | None
    size: int
    """The datagram's length in bytes (at most :data:`MAX_DATAGRAM` + 1 is known when larger)."""
    problems: tuple[str, ...] = field(default=())
    """What was wrong with it, one log-ready sentence each (closed fds, too large, NUL byte)."""

    @property
    def ready(self) -> bool:
        return self.fields.get("READY") == "1"

    @property
    def watchdog(self) -> bool:
        return self.fields.get("WATCHDOG") == "1"

    @property
    def stopping(self) -> bool:
        return self.fields.get("STOPPING") == "1"

    @property
    def reloading(self) -> bool:
        return self.fields.get("RELOADING") == "1"

    @property
    def status(self) -> str | None:
        return self.fields.get("STATUS")

    @property
    def main_pid(self) -> int | None:
        """``MAINPID=`` as a number (inside the container's pid namespace), None when absent/bad."""
        return _int_field(self.fields, "MAINPID")

    @property
    def errno(self) -> int | None:
        return _int_field(self.fields, "ERRNO")

    @property
    def extend_timeout_usec(self) -> int | None:
        return _int_field(self.fields, "EXTEND_TIMEOUT_USEC")


class NotifySocket:
    """An ``AF_UNIX`` datagram socket at ``directory/notify.sock``: non-blocking, ``SO_PASSCRED``.

    Creates ``directory`` (mode 0o755) if needed, replaces a stale socket file, and binds. Poll
    :meth:`fileno` (selectors, asyncio ``add_reader``) and call :meth:`receive` when readable.
    :meth:`close` removes the socket file; the directory is the caller's.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SOCKET_NAME
        if len(os.fsencode(self.path)) > MAX_PATH:
            raise NotifySocketError(
                f"notify socket path {self.path} is longer than {MAX_PATH} bytes; "
                "use a shorter run directory"
            )
        try:
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(directory, DIR_MODE)
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISSOCK(self.path.lstat().st_mode):
                    raise NotifySocketError(f"{self.path} exists and is not a socket; remove it")
                self.path.unlink()
        except OSError as error:
            raise NotifySocketError(
                f"cannot prepare {directory} for the notify socket: {error}"
            ) from error
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setblocking(False)
            sock.bind(os.fspath(self.path))
            # bind() applies the umask; the mode is chmod's (the container is not running yet).
            os.chmod(self.path, SOCKET_MODE)
        except OSError as error:
            sock.close()
            raise NotifySocketError(
                f"cannot bind the notify socket {self.path}: {error}"
            ) from error
        self._socket: socket.socket | None = sock

    def __repr__(self) -> str:
        return f"NotifySocket({str(self.path)!r})"

    def fileno(self) -> int:
        if self._socket is None:
            raise ValueError(f"{self!r} is closed")
        return self._socket.fileno()

    @property
    def closed(self) -> bool:
        return self._socket is None

    def receive(self) -> list[NotifyMessage]:
        """Every message queued now, in order; an empty list when none (never blocks)."""
        if self._socket is None:
            raise ValueError(f"{self!r} is closed")
        messages: list[NotifyMessage] = []
        while True:
            try:
                data, ancillary, flags, _ = self._socket.recvmsg(MAX_DATAGRAM + 1, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return messages
            messages.append(_message(data, ancillary, flags))

    def close(self) -> None:
        """Close the socket and remove its file. Safe to call twice."""
        if self._socket is None:
            return
        self._socket.close()
        self._socket = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _message(data: bytes, ancillary: list[tuple[int, int, bytes]], flags: int) -> NotifyMessage:
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    closed = 0
    for level, kind, payload in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % _FD])
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
                closed += 1
        elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
            pid, uid, gid = _UCRED.unpack(payload[: _UCRED.size])
    problems: list[str] = []
    if closed:
        problems.append(
            f"closed {closed} file descriptor{'s' if closed != 1 else ''} sent with the message: "
            "quay does not keep them (FDSTORE is not supported)"
        )
    if flags & socket.MSG_CTRUNC:
        problems.append("more file descriptors than one message can carry: the kernel closed them")
    fields: dict[str, str] = {}
    if len(data) > MAX_DATAGRAM or flags & socket.MSG_TRUNC:
        problems.append(f"message larger than {MAX_DATAGRAM} bytes: ignored")
    elif b"\0" in data:
        problems.append("message contains a NUL byte: ignored")
    else:
        fields = parse_notify(data)
    return NotifyMessage(
        fields=fields,
        pid=pid or None,
        uid=uid,
        gid=gid,
        size=len(data),
        problems=tuple(problems),
    )
