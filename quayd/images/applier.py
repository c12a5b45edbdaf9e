"""Applying layer entries into a directory, fd-relative, never following a symlink.

Every path is walked from a directory fd, one component at a time, with
``O_DIRECTORY|O_NOFOLLOW`` and ``dir_fd=``; every final operation (create, link, chown, chmod,
utime, mknod, unlink) is fd-relative and does not follow symlinks, and metadata of files, FIFOs
and directories is set through an fd opened with ``O_NOFOLLOW``. The rules themselves (what is
refused, how duplicates and whiteouts behave) are listed in ``quayd.images.unpack``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from quayd.images.entries import archive_xattrs, entry_owner, entry_times_ns, split_entry_name
from quayd.images.errors import HostileLayerError, UnpackError
from quayd.images.layerdirs import DIR_FLAGS, OPAQUE_XATTR, DirAttrs, lower_dir, read_dir_attrs
from quayd.images.tarstream import (
    BLKTYPE,
    CHRTYPE,
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    TarHeader,
    TarReader,
)

__all__ = ["Applier"]

_FD_CACHE = 128  # open directory fds kept for reuse
_LOOKBACK = 8  # cached ancestors tried before walking from the root
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_META_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"


class _PathError(Exception):
    def __init__(self, parts: tuple[str, ...]) -> None:
        super().__init__("/".join(parts))
        self.parts = parts


class _MissingError(_PathError):
    pass


class _NotADirectoryError(_PathError):
    pass


class _SymlinkInPathError(_PathError):
    pass


class Applier:
    """Applies entries into ``target``; every path is resolved from directory fds."""

    def __init__(self, target: Path, parents: Sequence[Path]) -> None:
        self._root = os.open(target, DIR_FLAGS)
        self._parents: list[int] = []
        self._fds: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._retired: list[int] = []
        self._times: dict[tuple[str, ...], tuple[int, int]] = {}
        self._opaque: set[tuple[str, ...]] = set()
        self._whiteouts: dict[tuple[str, ...], list[str]] = {}
        self._no_lower: set[tuple[str, ...]] = set()
        try:
            if os.listdir(self._root):
                raise UnpackError(f"cannot unpack a layer into {target}: it is not empty")
            for parent in parents:
                self._parents.append(os.open(parent, DIR_FLAGS))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._close_retired()
        for fd in [*self._fds.values(), *self._parents, self._root]:
            os.close(fd)
        self._fds.clear()
        self._parents.clear()

    # -- directory fds --

    def _close_retired(self) -> None:
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def _remember(self, parts: tuple[str, ...], fd: int) -> None:
        self._fds[parts] = fd
        if len(self._fds) > _FD_CACHE:
            # Closed at the start of the next entry: fds handed out for this one stay valid.
            self._retired.append(self._fds.popitem(last=False)[1])

    def _forget(self, prefix: tuple[str, ...]) -> None:
        for key in [k for k in self._fds if k[: len(prefix)] == prefix]:
            self._retired.append(self._fds.pop(key))

    def _dir(self, parts: tuple[str, ...], *, create: bool) -> int:
        """An fd of directory ``parts``, walked component by component without following.

        The fd and those of its nearest ancestors are cached; higher levels of a deep walk are
        closed as soon as the next level is open, so no path can exhaust the fd limit.
        """
        if not parts:
            return self._root
        fd = self._fds.get(parts)
        if fd is not None:
            self._fds.move_to_end(parts)
            return fd
        start, cur = 0, self._root
        for n in range(len(parts) - 1, max(0, len(parts) - _LOOKBACK), -1):
            hit = self._fds.get(parts[:n])
            if hit is not None:
                start, cur = n, hit
                break
        transient: int | None = None
        try:
            for n in range(start + 1, len(parts) + 1):
                cur = self._open_dir(cur, parts[:n], create=create)
                if transient is not None:
                    os.close(transient)
                    transient = None
                if n > len(parts) - _LOOKBACK:
                    self._remember(parts[:n], cur)
                else:
                    transient = cur
        except BaseException:
            if transient is not None:
                os.close(transient)
            raise
        return cur

    def _open_dir(self, parent: int, parts: tuple[str, ...], *, create: bool) -> int:
        """Open (or, with ``create``, make as an implied directory) one level below ``parent``."""
        name = parts[-1]
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise _MissingError(parts) from None
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise _SymlinkInPathError(parts) from None
            raise _NotADirectoryError(parts) from None
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            self._new_dir(parts)
            self._set_dir_attrs(fd, parts, self._implied_attrs(parts))
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- directory bookkeeping --

    def _new_dir(self, parts: tuple[str, ...]) -> None:
        """A directory was (re)created at ``parts``: forget what was known of an earlier one."""
        self._opaque.discard(parts)
        self._whiteouts.pop(parts, None)
        self._times.pop(parts, None)

    def _implied_attrs(self, parts: tuple[str, ...]) -> DirAttrs | None:
        """Attributes of the top-most lower layer's directory at ``parts`` (containerd mkparent)."""
        if not self._parents or parts[:-1] in self._no_lower:
            self._no_lower.add(parts)  # no lower layer has the parent, so none has this one
            return None
        for root in self._parents:
            found = lower_dir(root, parts)
            if found == "hidden":
                break
            if found != "absent":
                return found
        self._no_lower.add(parts)
        return None

    def _set_dir_attrs(self, fd: int, parts: tuple[str, ...], attrs: DirAttrs | None) -> None:
        if attrs is None:  # no lower layer has it: root-owned 0755, mtime "now"
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o755)
            return
        os.fchown(fd, attrs.uid, attrs.gid)
        for name, value in attrs.xattrs:
            os.setxattr(fd, name, value)
        os.fchmod(fd, attrs.mode)
        self._times[parts] = (attrs.atime_ns, attrs.mtime_ns)

    def prepare_root(self) -> None:
        """The root takes its attributes from the top-most parent, unless the layer lists ``./``."""
        self._set_dir_attrs(
            self._root, (), read_dir_attrs(self._parents[0]) if self._parents else None
        )

    def finish(self) -> None:
        """Set directory times last: creating entries inside a directory changes its mtime."""
        for parts in sorted(self._times):
            self._close_retired()
            try:
                fd = self._dir(parts, create=False)
            except _PathError:  # replaced by a non-directory later in the layer
                continue
            os.utime(fd, ns=self._times[parts])

    # -- replacing --

    def _clear(self, parent: int, parts: tuple[str, ...], *, keep_dir: bool) -> bool:
        """Remove the entry at ``parts`` (never following it); True if it is a directory kept."""
        name = parts[-1]
        if name in ("", ".", "..") or "/" in name:  # split_entry_name makes this impossible
            raise HostileLayerError(f"refusing to remove {name!r}")
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._forget(parts)
            shutil.rmtree(name, dir_fd=parent)  # the fd-based, symlink-safe implementation
        else:
            os.unlink(name, dir_fd=parent)
        return False

    # -- metadata --

    def _setxattr(
        self, target: int | str, name: str, value: bytes, entry: str, *, special: bool
    ) -> None:
        try:
            os.setxattr(target, name, value, follow_symlinks=isinstance(target, int))
        except OSError as e:
            if e.errno == errno.EPERM and special and name.startswith("user."):
                return  # Linux keeps user.* only on regular files and directories
            raise UnpackError(f"layer entry {entry!r}: cannot set xattr {name!r}: {e}") from e

    def _meta(
        self,
        fd: int,
        info: TarHeader,
        xattrs: list[tuple[str, bytes]],
        entry: str,
        *,
        special: bool = False,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """Owner, then xattrs (chown drops security.capability), then mode (chown drops setuid).

        ``owner`` is the current one, if known: chown is skipped when it would not change it,
        because on Linux any chown of a non-directory drops its capabilities -- a hardlink
        entry must not strip those its first name got.
        """
        uid, gid = entry_owner(info, entry)
        if owner != (uid, gid):
            os.fchown(fd, uid, gid)
        for name, value in xattrs:
            self._setxattr(fd, name, value, entry, special=special)
        os.fchmod(fd, info.mode & 0o7777)

    # -- entries --

    def apply(self, archive: TarReader, info: TarHeader) -> None:
        """Apply one entry; its data, if any and wanted, is read from ``archive``."""
        self._close_retired()
        entry = info.name
        parts = split_entry_name(entry)
        try:
            self._dispatch(archive, info, entry, parts)
        except _SymlinkInPathError as e:
            raise HostileLayerError(
                f"layer entry {entry!r}: path component {str(e)!r} is a symlink; refusing to "
                "walk through it (CVE-2014-6407 class write-through-symlink)"
            ) from None
        except _NotADirectoryError as e:
            raise UnpackError(
                f"layer entry {entry!r}: path component {str(e)!r} is not a directory"
            ) from None
        except _MissingError as e:
            raise UnpackError(f"layer entry {entry!r}: {str(e)!r} does not exist") from None

    def _dispatch(
        self, archive: TarReader, info: TarHeader, entry: str, parts: tuple[str, ...]
    ) -> None:
        if parts and parts[-1].startswith(_WHITEOUT_PREFIX):
            self._whiteout(info, entry, parts)
            return
        if not parts:
            if info.type != DIRTYPE:
                raise HostileLayerError(
                    f"layer entry {entry!r} resolves to the layer root but is not a directory; "
                    "refusing to replace the root (CVE-2021-29136)"
                )
            self._meta(self._root, info, archive_xattrs(info.pax, entry), entry)
            self._times[()] = entry_times_ns(info)
            return
        kind = info.type
        if kind == REGTYPE:
            self._file(archive, info, entry, parts)
        elif kind == DIRTYPE:
            self._mkdir(info, entry, parts)
        elif kind == SYMTYPE:
            self._symlink(info, entry, parts)
        elif kind == LNKTYPE:
            self._hardlink(info, entry, parts)
        elif kind == FIFOTYPE:
            self._fifo(info, entry, parts)
        elif kind in (CHRTYPE, BLKTYPE):
            device = "character" if kind == CHRTYPE else "block"
            raise HostileLayerError(
                f"layer entry {entry!r} is a {device} device {info.devmajor}:{info.devminor}; "
                "device nodes from images are refused"
            )
        else:
            raise UnpackError(f"layer entry {entry!r}: unsupported tar entry type {kind!r}")

    def _mkdir(self, info: TarHeader, entry: str, parts: tuple[str, ...]) -> None:
        xattrs = archive_xattrs(info.pax, entry)
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            if not self._clear(parent, parts, keep_dir=True):
                os.mkdir(name, 0o700, dir_fd=parent)
                self._new_dir(parts)
        else:
            self._new_dir(parts)
        fd = self._dir(parts, create=False)
        self._meta(fd, info, xattrs, entry)
        self._times[parts] = entry_times_ns(info)

    def _file(
        self, archive: TarReader, info: TarHeader, entry: str, parts: tuple[str, ...]
    ) -> None:
        xattrs = archive_xattrs(info.pax, entry)
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, parts, keep_dir=False)
            fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            archive.copy_data(fd)
            self._meta(fd, info, xattrs, entry)
            os.utime(fd, ns=entry_times_ns(info))
        finally:
            os.close(fd)

    def _symlink(self, info: TarHeader, entry: str, parts: tuple[str, ...]) -> None:
        xattrs = archive_xattrs(info.pax, entry)
        uid, gid = entry_owner(info, entry)
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            os.symlink(info.linkname, name, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, parts, keep_dir=False)
            os.symlink(info.linkname, name, dir_fd=parent)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        # os.setxattr has no dir_fd: go through the parent's fd (lsetxattr on the last component).
        for xname, value in xattrs:
            self._setxattr(f"/proc/self/fd/{parent}/{name}", xname, value, entry, special=True)
        os.utime(name, ns=entry_times_ns(info), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, info: TarHeader, entry: str, parts: tuple[str, ...]) -> None:
        xattrs = archive_xattrs(info.pax, entry)
        link = info.linkname
        source = split_entry_name(link)
        if not source:
            raise HostileLayerError(f"layer entry {entry!r}: hardlink to the layer root")
        try:
            source_dir = self._dir(source[:-1], create=False)
            st = os.stat(source[-1], dir_fd=source_dir, follow_symlinks=False)
        except (_MissingError, FileNotFoundError):
            raise UnpackError(
                f"layer entry {entry!r}: hardlink target {link!r} is not in this layer"
            ) from None
        except _SymlinkInPathError as e:
            raise HostileLayerError(
                f"layer entry {entry!r}: hardlink target {link!r} goes through the symlink "
                f"{str(e)!r}; refusing to follow it"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            raise HostileLayerError(
                f"layer entry {entry!r}: hardlink to the symlink {link!r}; refused, as metadata "
                "applied to it would follow the symlink (CVE-2021-32760)"
            )
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise UnpackError(
                f"layer entry {entry!r}: hardlink target {link!r} is not a regular file or FIFO"
            )
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        if source != parts:
            try:
                os.link(
                    source[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent,
                    follow_symlinks=False,
                )  # fmt: skip
            except FileExistsError:
                self._clear(parent, parts, keep_dir=False)
                os.link(
                    source[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent,
                    follow_symlinks=False,
                )  # fmt: skip
        self._meta_by_name(parent, name, info, xattrs, entry)

    def _fifo(self, info: TarHeader, entry: str, parts: tuple[str, ...]) -> None:
        xattrs = archive_xattrs(info.pax, entry)
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            os.mkfifo(name, 0o600, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, parts, keep_dir=False)
            os.mkfifo(name, 0o600, dir_fd=parent)
        self._meta_by_name(parent, name, info, xattrs, entry)

    def _meta_by_name(
        self,
        parent: int,
        name: str,
        info: TarHeader,
        xattrs: list[tuple[str, bytes]],
        entry: str,
    ) -> None:
        """Metadata of a FIFO or (hardlinked) regular file, through an O_NOFOLLOW fd."""
        fd = os.open(name, _META_FLAGS, dir_fd=parent)
        try:
            st = os.fstat(fd)
            special = not stat.S_ISREG(st.st_mode)
            self._meta(fd, info, xattrs, entry, special=special, owner=(st.st_uid, st.st_gid))
            os.utime(fd, ns=entry_times_ns(info))
        finally:
            os.close(fd)

    def _whiteout(self, info: TarHeader, entry: str, parts: tuple[str, ...]) -> None:
        base, dir_parts = parts[-1], parts[:-1]
        if base == _OPAQUE_MARKER:
            try:
                fd = self._dir(dir_parts, create=True)
            except _NotADirectoryError:
                raise UnpackError(
                    f"layer entry {entry!r}: opaque marker inside a non-directory"
                ) from None
            os.setxattr(fd, OPAQUE_XATTR, b"y")
            self._opaque.add(dir_parts)
            # Whiteouts made earlier in this directory hide nothing now; drop them.
            for name in self._whiteouts.pop(dir_parts, []):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    os.unlink(name, dir_fd=fd)
            return
        if base.startswith(_WHITEOUT_PREFIX * 2):
            return  # other .wh..wh.* names are aufs bookkeeping: ignored
        name = base[len(_WHITEOUT_PREFIX) :]
        if not name:
            raise UnpackError(f"layer entry {entry!r}: whiteout without a name ('.wh.')")
        if name in (".", ".."):
            raise HostileLayerError(f"layer entry {entry!r}: whiteout of {name!r}")
        uid, gid = entry_owner(info, entry)
        try:
            parent = self._dir(dir_parts, create=True)
        except _NotADirectoryError:
            return  # below a whiteout or file of this layer: nothing down there to hide
        if self._opaque and any(dir_parts[:n] in self._opaque for n in range(len(dir_parts) + 1)):
            return  # an opaque directory of this layer already hides everything below
        device = stat.S_IFCHR
        try:
            os.mknod(name, device, os.makedev(0, 0), dir_fd=parent)
        except FileExistsError:
            self._clear(parent, (*dir_parts, name), keep_dir=False)
            os.mknod(name, device, os.makedev(0, 0), dir_fd=parent)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        self._whiteouts.setdefault(dir_parts, []).append(name)
