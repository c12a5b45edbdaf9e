"""A container's root filesystem: one overlayfs mount of its image's layers, and its cleanup.

Layout of a container directory (quay's state dir, e.g. ``/var/lib/quay/containers/NAME``)::

    l/0 … l/N-1   symlinks to the layer directories, bottom (0) to top (N-1)
    upper/        the container's writes (overlayfs upperdir)
    work/         overlayfs's scratch dir (workdir), on the same filesystem as upper/
    rootfs/       the mount point: what the OCI bundle's ``root.path`` names

**Many layers.** The legacy mount(2) call copies at most one page (4096 bytes) of options, and
``/var/lib/quay/images/layers/<64 hex>/root`` is 97 bytes: 40 layers would not fit. So lowerdir
names the short symlinks, relative to the container directory (``lowerdir=l/2:l/1:l/0``, six bytes
a layer), and the mount is made with that directory as the working directory. Overlayfs stacks at
most 500 layers; 500 short names take about 3 KB, inside the page. (Kernels >= 6.8 could append
layers one by one with fsconfig ``lowerdir+``; Debian 12's 6.1 cannot, so we don't depend on it.)

**Relative paths without a process-wide chdir.** The working directory is shared by all threads,
and quayd is threaded. The mount is therefore made from a short-lived thread that first calls
``unshare(CLONE_FS)``: that thread gets its own cwd (and root and umask), changes into the container
directory, calls mount(2) and ends; no other thread ever sees the change. This is why the mount is
a direct syscall through ctypes rather than ``/bin/mount``: no fork and exec per container, errors
as errno values instead of parsed text, and no dependency on util-linux's option handling.

**Options.** ``index=off``, ``metacopy=off``, ``redirect_dir=nofollow``: the lower layers come
from registries, and both redirects and metacopy make overlayfs act on ``trusted.overlay.*`` xattrs
found in the layers (the kernel docs: do not use metacopy=on with untrusted layers). The unpacker
already refuses ``trusted.*`` in archives; these options make the kernel ignore such xattrs too,
whatever the kernel's build-time or module defaults are. ``nofollow`` is stricter than ``off``,
which still follows redirects when the module's ``redirect_always_follow`` is on (the default).
The index is only useful to keep hard links unbroken across copy-up and for NFS export; off is
what Docker and Podman use. The upper dir is discarded whenever the root is mounted anew.

**Read-only roots** use the same mount, with upper and work. The OCI runtime creates the mount
points it needs (``/proc``, ``/dev``, ``/etc/hosts`` …, which images often lack) in the root
*before* it remounts the root read-only in the container's own mount namespace
(``root.readonly`` in the spec; Docker's ``--read-only`` works the same way). A lowers-only
overlay would make that first step fail on such images. So read-only is a spec setting, not a
mount setting, and this module takes no such flag.

**After a crash** (of quayd or the machine), :func:`stale_mounts` finds overlay mounts named
``rootfs`` below quay's state dir in ``/proc/self/mountinfo`` and unmounts those no live container
uses; it never touches a mount outside that directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from quayd.isolation.errors import IsolationError

ROOTFS = "rootfs"
UPPER = "upper"
WORK = "work"
LINKS = "l"

# Overlayfs's limit (OVL_MAX_STACK).
MAX_LAYERS = 500
# mount(2) copies one page of options; the kernel truncates (silently!) past it.
MAX_OPTIONS = 4095
OPTIONS = "index=off,metacopy=off,redirect_dir=nofollow"

_CLONE_FS = 0x00000200
_MNT_DETACH = 0x2
_UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p
]  # fmt: skip
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int


class MountError(IsolationError):
    """A root filesystem could not be mounted or unmounted."""


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def overlay_options(layer_count: int) -> str:
    """The mount options for ``layer_count`` lowers, as relative names (top layer first)."""
    lowers = ":".join(f"{LINKS}/{index}" for index in reversed(range(layer_count)))
    return f"lowerdir={lowers},upperdir={UPPER},workdir={WORK},{OPTIONS}"


def mount_rootfs(layers: Sequence[Path], container_dir: Path) -> Path:
    """Mount the container's root at ``container_dir/rootfs`` and return that path.

    ``layers`` are the image's layer directories, bottom to top (``Store.layer_path`` of each
    chain id, in manifest order). Any previous upper dir is discarded: the container starts from
    the image as it is. Raises :class:`MountError` when the root is already mounted, when there
    are no or too many layers, or when the kernel refuses the mount.
    """
    if not layers:
        raise MountError(f"{container_dir}: an image needs at least one layer to make a root")
    if len(layers) > MAX_LAYERS:
        raise MountError(
            f"{container_dir}: the image has {len(layers)} layers; overlayfs stacks at most "
            f"{MAX_LAYERS} (squash the image)"
        )
    container_dir = container_dir.resolve()  # as the mount table will name it
    rootfs = container_dir / ROOTFS
    if _is_mount_point(rootfs):
        raise MountError(f"{rootfs} is already mounted; unmount it before mounting it again")
    for layer in layers:
        if not layer.is_absolute() or not layer.is_dir():
            raise MountError(f"layer directory {layer} is missing (or not an absolute path)")

    container_dir.mkdir(parents=True, exist_ok=True)
    links = container_dir / LINKS
    for stale in (links, container_dir / UPPER, container_dir / WORK):
        _remove(stale)
    links.mkdir()
    for index, layer in enumerate(layers):
        (links / str(index)).symlink_to(layer)
    for fresh in (container_dir / UPPER, container_dir / WORK, rootfs):
        fresh.mkdir(mode=0o755, exist_ok=True)

    options = overlay_options(len(layers))
    if len(options) > MAX_OPTIONS:  # cannot happen below MAX_LAYERS; kept as a guard
        raise MountError(f"{container_dir}: overlay options are {len(options)} bytes")
    _in_private_cwd(container_dir, lambda: _mount_overlay(rootfs, options))
    return rootfs


def unmount_rootfs(container_dir: Path) -> bool:
    """Unmount ``container_dir/rootfs``; False when it was not mounted. Upper and work stay.

    A root still busy in quay's own mount namespace (a shell sitting in it) is detached: it
    disappears from the mount table at once and the kernel frees it when its last user goes.
    """
    return _unmount(container_dir.resolve() / ROOTFS)


def stale_mounts(state_root: Path, *, in_use: Collection[Path] = ()) -> list[Path]:
    """Unmount every quay root filesystem below ``state_root`` except those in ``in_use``.

    For start-up after a crash: ``in_use`` names the container directories (or their
    ``rootfs``) of containers the runtime still runs, whose roots must stay. Only overlay mounts
    named ``rootfs`` strictly below ``state_root`` are considered; others are never touched.
    Returns the mount points that were unmounted.
    """
    root = state_root.resolve()
    keep = {path.resolve() for path in in_use} | {path.resolve() / ROOTFS for path in in_use}
    found = [
        mount.mount_point
        for mount in read_mountinfo()
        if mount.fs_type == "overlay"
        and mount.mount_point.name == ROOTFS
        and mount.mount_point.is_relative_to(root)
        and mount.mount_point != root
        and mount.mount_point not in keep
    ]
    removed: list[Path] = []
    for point in sorted(set(found), key=lambda path: len(path.parts), reverse=True):
        if _unmount(point):
            removed.append(point)
    return removed


# --- /proc/self/mountinfo ------------------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    parent_id: int
    root: str
    mount_point: Path
    fs_type: str
    source: str
    super_options: str


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse ``/proc/PID/mountinfo`` (proc(5)); paths have their octal escapes decoded."""
    mounts: list[MountInfo] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            mounts.append(
                MountInfo(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    root=_unescape(fields[3]),
                    mount_point=Path(_unescape(fields[4])),
                    fs_type=fields[separator + 1],
                    source=_unescape(fields[separator + 2]),
                    super_options=fields[separator + 3] if len(fields) > separator + 3 else "",
                )
            )
        except (ValueError, IndexError):
            continue  # a line we cannot read is not one of ours
    return mounts


def read_mountinfo() -> list[MountInfo]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def mounts_below(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` in this process's mount namespace."""
    below = directory.resolve()
    return [m.mount_point for m in read_mountinfo() if m.mount_point.is_relative_to(below)]


def _unescape(field: str) -> str:
    """Decode the kernel's ``\\NNN`` octal escapes (space, tab, newline, backslash)."""
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")
    index = 0
    while index < len(raw):
        if raw[index] == 0x5C and raw[index + 1 : index + 4].isdigit() and index + 4 <= len(raw):
            out.append(int(raw[index + 1 : index + 4], 8) & 0xFF)
            index += 4
        else:
            out.append(raw[index])
            index += 1
    return out.decode("utf-8", "surrogateescape")


# --- syscalls ------------------------------------------------------------------------------------


def _mount_overlay(target: Path, options: str) -> None:
    result = _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode())
    if result != 0:
        code = ctypes.get_errno()
        raise MountError(
            f"mounting the overlay root at {target} failed: {os.strerror(code)} "
            f"(errno {errno.errorcode.get(code, code)}); options: {options[:200]}"
            + ("…" if len(options) > 200 else "")
        )


def _unmount(target: Path) -> bool:
    path = os.fsencode(target)
    if _libc.umount2(path, _UMOUNT_NOFOLLOW) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):  # not a mount point / no such path
        return False
    if code == errno.EBUSY and _libc.umount2(path, _UMOUNT_NOFOLLOW | _MNT_DETACH) == 0:
        return True
    code = ctypes.get_errno()
    raise MountError(f"unmounting {target} failed: {os.strerror(code)}")


def _in_private_cwd(directory: Path, action: Callable[[], None]) -> None:
    """Run ``action`` in a new thread whose working directory is ``directory`` (and only its)."""
    failure: list[BaseException] = []

    def body() -> None:
        try:
            _check(_libc.unshare(_CLONE_FS), "unshare(CLONE_FS)")
            os.chdir(directory)
            action()
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=body, name="quay-mount", daemon=True)
    thread.start()
    thread.join()
    if failure:
        error = failure[0]
        if isinstance(error, IsolationError):
            raise error
        raise MountError(f"mounting in {directory}: {error}") from error


def _is_mount_point(path: Path) -> bool:
    return any(mount.mount_point == path for mount in read_mountinfo())


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
