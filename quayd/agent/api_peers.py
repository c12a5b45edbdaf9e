"""Who calls the API: the credentials the kernel recorded for a unix socket's peer when it
connected (``SO_PEERCRED``) and its supplementary groups."""

from __future__ import annotations

import errno
import grp
import socket
import struct
from dataclasses import dataclass
from typing import Any

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python names it from 3.?
_MAX_PEER_GROUPS = 256


@dataclass(frozen=True)
class Peer:
    """Who called, as the kernel recorded it when the client connected."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def peer_of(sock: Any) -> Peer | None:
    """The calling process's credentials, from its connection's socket; None if unknown."""
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid, uid, gid = _PEERCRED.unpack(creds)
    return Peer(pid=pid, uid=uid, gid=gid, groups=peer_groups(sock, pid))


def peer_groups(sock: Any, pid: int) -> frozenset[int]:
    """Supplementary groups: ``SO_PEERGROUPS`` (as at connect()), else ``/proc/PID/status``."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * _MAX_PEER_GROUPS)
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError as error:
        if error.errno not in (errno.ERANGE, errno.ENOPROTOOPT, errno.EINVAL):
            return frozenset()
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()
