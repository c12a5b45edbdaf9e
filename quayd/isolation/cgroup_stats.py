"""A container's resource figures for the metrics endpoint, read from its scope's cgroup.

The same files as :func:`quayd.isolation.cgroups.usage` (what ``quayctl show`` prints: memory,
CPU time, pids) plus the memory high-water mark and the OOM kills, on each layout:

* v2: ``memory.current``, ``memory.peak`` (Linux 5.19 and later; absent before: unknown),
  ``memory.events`` (``oom_kill``), ``cpu.stat`` (``usage_usec``), ``pids.current``;
* v1: ``memory.usage_in_bytes``, ``memory.max_usage_in_bytes``, ``memory.oom_control``
  (``oom_kill``, Linux 4.13 and later; the scope's and its children's), ``cpuacct.usage``,
  ``pids.current``.

Read at the scope (:func:`~quayd.isolation.cgroups.scope_path`), which counts crun's
``container`` child below it. A scrape reads five files for each of 100 containers, so they are
read with one ``open``/``read``/``close`` each on a path string, and the layout is looked at once
per :class:`CgroupReader` (pathlib and the stat of ``usage`` cost 3 times as much: 25 ms of a
scrape's CPU for 100 containers, against a 20 ms goal for the whole scrape). Every figure is
None when its file is missing or unreadable: a container may end between two reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from quayd.isolation.cgroups import CGROUP_ROOT, cgroup_version, keyed_field, scope_path

CRUN_CHILD = "container"
"""The cgroup crun makes below the scope under the systemd driver on v1."""


@dataclass(frozen=True)
class CgroupStats:
    cpu_seconds: float | None
    memory_bytes: int | None
    memory_peak_bytes: int | None
    oom_kills: int | None
    pids: int | None


class CgroupReader:
    """Reads :class:`CgroupStats` of containers on this host's layout (found once)."""

    def __init__(self, cgroup_root: Path = CGROUP_ROOT) -> None:
        self.root = str(cgroup_root)
        self.version = cgroup_version(cgroup_root)

    def __call__(self, name: str) -> CgroupStats | None:
        """The figures of ``name``'s scope; None when the scope is gone."""
        scope = scope_path(name)
        if self.version == 2:
            top = f"{self.root}/{scope}"
            memory = _number(f"{top}/memory.current")
            if memory is None and not os.path.isdir(top):
                return None
            usec = _keyed(f"{top}/cpu.stat", "usage_usec")
            return CgroupStats(
                cpu_seconds=usec / 1e6 if usec is not None else None,
                memory_bytes=memory,
                memory_peak_bytes=_number(f"{top}/memory.peak"),
                oom_kills=_keyed(f"{top}/memory.events", "oom_kill"),
                pids=_number(f"{top}/pids.current"),
            )
        memory_dir = f"{self.root}/memory/{scope}"
        memory = _number(f"{memory_dir}/memory.usage_in_bytes")
        if memory is None and not os.path.isdir(memory_dir):
            return None
        nanoseconds = _number(f"{self.root}/cpuacct/{scope}/cpuacct.usage")
        return CgroupStats(
            cpu_seconds=nanoseconds / 1e9 if nanoseconds is not None else None,
            memory_bytes=memory,
            memory_peak_bytes=_number(f"{memory_dir}/memory.max_usage_in_bytes"),
            oom_kills=_v1_oom_kills(memory_dir),
            pids=_number(f"{self.root}/pids/{scope}/pids.current"),
        )


def cgroup_stats(name: str, *, cgroup_root: Path = CGROUP_ROOT) -> CgroupStats | None:
    """The figures of ``name``'s scope now; None when the scope is gone."""
    return CgroupReader(cgroup_root)(name)


def _v1_oom_kills(memory_dir: str) -> int | None:
    """A v1 memory cgroup counts only its own kills, and under the systemd driver crun puts the
    container (and its limit) in a ``container`` child of the scope: the scope's count plus that
    child's. Only that child is read (:func:`quayd.isolation.oom.oom_kills` walks the tree; a
    scandir of the scope's 30 files cost 4 ms a scrape for 100 containers), and the container
    cannot make cgroups of its own below (/sys/fs/cgroup is read-only in it)."""
    total = _keyed(f"{memory_dir}/memory.oom_control", "oom_kill")
    if total is None:
        return None
    return total + (_keyed(f"{memory_dir}/{CRUN_CHILD}/memory.oom_control", "oom_kill") or 0)


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:  # removed while reading (ENODEV)
        return None
    finally:
        os.close(fd)


def _number(path: str) -> int | None:
    data = _read(path)
    try:
        return int(data.split()[0]) if data else None
    except ValueError:
        return None


def _keyed(path: str, key: str) -> int | None:
    data = _read(path)
    return keyed_field(data.decode(errors="replace"), key) if data else None
