"""What this host's cgroups are and can do, what a container uses now, and its block devices.

The I/O edge of the cgroup work: :func:`host_cgroups` looks at ``/sys/fs/cgroup`` once and gives
the facts :func:`spec.build_spec` renders from (it never looks itself), :func:`default_driver`
picks the runtime's cgroup driver for this host, :func:`usage` reads a running container's
figures and :func:`block_devices` resolves the device paths of ``[resources]`` I/O limits to the
major:minor numbers the kernel wants.

Layouts (``docs/isolation.md``):

* **v2, unified**: one cgroup2 hierarchy at ``/sys/fs/cgroup`` (Debian 12, Ubuntu 22.04, Fedora
  and every current distribution by default). ``/sys/fs/cgroup/cgroup.controllers`` exists.
* **v1, hybrid or legacy**: one hierarchy per controller (``/sys/fs/cgroup/memory`` …), with
  systemd's own in ``/sys/fs/cgroup/unified`` (hybrid) or ``/sys/fs/cgroup/systemd`` (legacy).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quayd.isolation.errors import DeviceError

CGROUP_ROOT = Path("/sys/fs/cgroup")
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")
"""Exists exactly when systemd is this host's init (``sd_booted(3)`` checks the same)."""
SYS_DEV_BLOCK = Path("/sys/dev/block")

Driver = Literal["systemd", "cgroupfs"]
Version = Literal[1, 2]


@dataclass(frozen=True)
class HostCgroups:
    """The cgroup facts the spec depends on (:attr:`spec.SpecInputs.cgroups`)."""

    version: Version = 1
    """2 on the unified hierarchy, 1 on a hybrid or legacy (per-controller) one."""
    io_weight: bool = True
    """Whether the kernel has a proportional I/O weight for cgroups that the runtimes write:
    v1 ``blkio.weight`` (CFQ's, gone since Linux 5.0; BFQ's ``blkio.bfq.weight`` is not
    written by crun or runc), v2 ``io.weight`` (the io.cost controller, built into Debian's
    kernel)."""


def cgroup_version(cgroup_root: Path = CGROUP_ROOT) -> Version:
    """2 when ``cgroup_root`` is a cgroup2 mount (its root has ``cgroup.controllers``)."""
    return 2 if (cgroup_root / "cgroup.controllers").is_file() else 1


def host_cgroups(cgroup_root: Path = CGROUP_ROOT) -> HostCgroups:
    """This host's :class:`HostCgroups`, from two stat calls (cheap enough for every start)."""
    if cgroup_version(cgroup_root) == 1:
        return HostCgroups(version=1, io_weight=(cgroup_root / "blkio" / "blkio.weight").exists())
    # io.weight exists in every non-root cgroup when io.cost is built in; the root cgroup shows
    # that by its io.cost.qos.
    return HostCgroups(version=2, io_weight=(cgroup_root / "io.cost.qos").exists())


def default_driver(systemd_runtime_dir: Path = SYSTEMD_RUNTIME_DIR) -> Driver:
    """The cgroup driver for ``cgroup_driver = "auto"``: systemd's when systemd runs this host.

    Where systemd is init it owns the cgroup tree, on v1 and v2 alike: a process may write only
    the subtrees systemd delegated, so the container's cgroup must be a unit of its own, a
    transient scope the runtime asks systemd for (``Delegate=yes``, which crun and runc set).
    Without systemd (a container, a minimal init) nobody owns the tree and the runtime creates
    the cgroup directly; on v2 it enables the controllers on the way down itself.
    """
    return "systemd" if systemd_runtime_dir.is_dir() else "cgroupfs"


# --- usage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """What a running container uses now, from its cgroup (``quayctl show``)."""

    memory_bytes: int | None
    cpu_seconds: float | None
    pids: int | None


def scope_path(name: str) -> str:
    """The container's cgroup below the root, the same under both drivers."""
    return f"quay.slice/quay-{name}.scope"


def usage(name: str, *, cgroup_root: Path = CGROUP_ROOT) -> Usage | None:
    """Memory, CPU time and process count of the container's scope; None when it is gone.

    Read at the scope, which counts the cgroups below it (crun's ``container`` child).
    """
    scope = scope_path(name)
    memory = cgroup_root / "memory"
    if not memory.is_dir():  # v2: one hierarchy
        top = cgroup_root / scope
        if not top.is_dir():
            return None
        usec = stat_field(top / "cpu.stat", "usage_usec")
        return Usage(
            memory_bytes=int_file(top / "memory.current"),
            cpu_seconds=usec / 1e6 if usec is not None else None,
            pids=int_file(top / "pids.current"),
        )
    if not (memory / scope).is_dir():
        return None
    nanoseconds = int_file(cgroup_root / "cpuacct" / scope / "cpuacct.usage")
    return Usage(
        memory_bytes=int_file(memory / scope / "memory.usage_in_bytes"),
        cpu_seconds=nanoseconds / 1e9 if nanoseconds is not None else None,
        pids=int_file(cgroup_root / "pids" / scope / "pids.current"),
    )


def int_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stat_field(path: Path, key: str) -> int | None:
    """The value of ``key`` in a flat keyed file (``cpu.stat``, ``memory.events``)."""
    try:
        text = path.read_text()
    except OSError:  # gone (ENOENT), or removed while reading (ENODEV)
        return None
    return keyed_field(text, key)


def keyed_field(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


# --- block devices -------------------------------------------------------------------------------


def block_devices(
    paths: set[str] | frozenset[str], *, sys_dev_block: Path = SYS_DEV_BLOCK
) -> dict[str, tuple[int, int]]:
    """``{path: (major, minor)}`` of each device path (symlinks such as ``/dev/disk/by-id/…``
    followed). The kernel limits I/O per whole disk and refuses a partition's numbers, so a
    partition is an error that names its disk; so is a path that is not a block device."""
    found: dict[str, tuple[int, int]] = {}
    for path in sorted(paths):
        try:
            info = os.stat(path)
        except OSError as error:
            raise DeviceError(
                f"{path}: no such block device on this host ({error.strerror}); "
                "name a disk that exists here, e.g. one lsblk lists as TYPE disk"
            ) from None
        if not stat.S_ISBLK(info.st_mode):
            raise DeviceError(f"{path} is not a block device; name a disk such as /dev/sda")
        numbers = os.major(info.st_rdev), os.minor(info.st_rdev)
        entry = sys_dev_block / f"{numbers[0]}:{numbers[1]}"
        if (entry / "partition").exists():
            disk = entry.resolve().parent
            raise DeviceError(
                f"{path} is a partition; the kernel limits I/O per whole disk: "
                f"name its disk, /dev/{disk.name}"
            )
        found[path] = numbers
    return found
