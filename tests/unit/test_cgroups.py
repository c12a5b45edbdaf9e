"""The host's cgroup facts, the default driver, usage figures and block devices, on small trees
shaped like /sys/fs/cgroup and /sys/dev/block (and the machine's own /dev)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quayd.isolation.cgroups import (
    HostCgroups,
    Usage,
    block_devices,
    cgroup_version,
    default_driver,
    host_cgroups,
    usage,
)
from quayd.isolation.errors import DeviceError


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_unified_hierarchy(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "cpuset cpu io memory pids\n")
    assert cgroup_version(tmp_path) == 2
    assert host_cgroups(tmp_path) == HostCgroups(version=2, io_weight=False)
    write(tmp_path / "io.cost.qos", "")
    assert host_cgroups(tmp_path) == HostCgroups(version=2, io_weight=True)


def test_hybrid_hierarchy(tmp_path: Path) -> None:
    for controller in ("memory", "pids", "blkio", "unified"):
        (tmp_path / controller).mkdir()
    write(tmp_path / "unified" / "cgroup.controllers", "")
    assert cgroup_version(tmp_path) == 1
    assert host_cgroups(tmp_path) == HostCgroups(version=1, io_weight=False)
    write(tmp_path / "blkio" / "blkio.weight", "500\n")
    assert host_cgroups(tmp_path).io_weight


def test_default_driver_follows_systemd(tmp_path: Path) -> None:
    assert default_driver(tmp_path / "missing") == "cgroupfs"
    assert default_driver(tmp_path) == "systemd"


def test_usage_v2_reads_the_scope(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "")
    scope = tmp_path / "quay.slice" / "quay-web.scope"
    write(scope / "memory.current", "1048576\n")
    write(scope / "cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    write(scope / "pids.current", "3\n")
    assert usage("web", cgroup_root=tmp_path) == Usage(1 << 20, 2.5, 3)
    assert usage("gone", cgroup_root=tmp_path) is None


def test_usage_v1_reads_each_controller(tmp_path: Path) -> None:
    scope = "quay.slice/quay-web.scope"
    write(tmp_path / "memory" / scope / "memory.usage_in_bytes", "2048\n")
    write(tmp_path / "cpuacct" / scope / "cpuacct.usage", "1500000000\n")
    write(tmp_path / "pids" / scope / "pids.current", "7\n")
    assert usage("web", cgroup_root=tmp_path) == Usage(2048, 1.5, 7)
    assert usage("gone", cgroup_root=tmp_path) is None


def a_block_device() -> str:
    """A block device of this machine (its disk, or a loop device)."""
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        if stat.S_ISBLK(os.lstat(path).st_mode):
            return path
    pytest.fail("no block device in /dev: the machine these tests run on has one (its disk)")


def test_block_devices_resolves_numbers(tmp_path: Path) -> None:
    path = a_block_device()
    rdev = os.stat(path).st_rdev
    assert block_devices({path}, sys_dev_block=tmp_path) == {path: (os.major(rdev), os.minor(rdev))}


def test_block_devices_refuses_a_partition_and_names_its_disk(tmp_path: Path) -> None:
    path = a_block_device()
    rdev = os.stat(path).st_rdev
    disk = tmp_path / "devices" / "virtual" / "block" / "vdz"
    write(disk / "vdz1" / "partition", "1\n")
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / f"{os.major(rdev)}:{os.minor(rdev)}").symlink_to(disk / "vdz1")
    with pytest.raises(DeviceError, match=r"is a partition.*name its disk, /dev/vdz"):
        block_devices({path}, sys_dev_block=tmp_path / "block")


def test_block_devices_refuses_what_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="/dev/null is not a block device"):
        block_devices({"/dev/null"}, sys_dev_block=tmp_path)
    with pytest.raises(DeviceError, match="/dev/quay-missing: no such block device"):
        block_devices({"/dev/quay-missing"}, sys_dev_block=tmp_path)
