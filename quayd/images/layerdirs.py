"""What the lower layers of an image say about a directory: for the ones a layer implies.

A layer that writes ``a/b/f`` without listing ``a`` or ``a/b`` gets those directories with the
attributes the merged view below it has (containerd's mkparent): the top-most lower layer that
has the directory, unless a whiteout, an opaque directory or a non-directory hides it there.
Lower layers are only read, walked from directory fds without following symlinks.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Literal

__all__ = ["DIR_FLAGS", "OPAQUE_XATTR", "DirAttrs", "lower_dir", "read_dir_attrs"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPAQUE_XATTR = "trusted.overlay.opaque"


@dataclass(frozen=True)
class DirAttrs:
    """A directory's owner, mode, times and xattrs (overlayfs' own and SELinux' left out)."""

    uid: int
    gid: int
    mode: int
    atime_ns: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]


def read_dir_attrs(fd: int) -> DirAttrs:
    """The attributes of the directory open at ``fd``."""
    st = os.fstat(fd)
    xattrs = tuple(
        (name, os.getxattr(fd, name))
        for name in os.listxattr(fd)
        if not name.startswith("trusted.overlay.") and name != "security.selinux"
    )
    return DirAttrs(
        st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns, xattrs
    )


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def lower_dir(root: int, parts: tuple[str, ...]) -> DirAttrs | Literal["absent", "hidden"]:
    """What an (already unpacked, read-only) lower layer says about directory ``parts``.

    ``absent``: look further down. ``hidden``: the merged view has no such directory below
    this layer (a whiteout, a non-directory, a symlink -- not followed -- or an opaque parent).
    """
    cur, owned, opaque_above = root, False, False
    try:
        for i, name in enumerate(parts):
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=cur)
            except FileNotFoundError:
                return "hidden" if opaque_above else "absent"
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    return "hidden"
                raise
            if owned:
                os.close(cur)
            cur, owned = child, True
            if i < len(parts) - 1 and _is_opaque(cur):
                opaque_above = True
        return read_dir_attrs(cur)
    finally:
        if owned:
            os.close(cur)
