"""[resources] as cgroup limits: linux.resources and the scope's properties, per cgroup layout."""

from __future__ import annotations

from typing import Any

import pytest

from quayd.isolation.cgroups import Driver, HostCgroups, Version
from quayd.isolation.errors import SpecError
from quayd.isolation.resources import (
    blkio_weight,
    device_paths,
    linux_resources,
    systemd_properties,
)
from quayd.units.model import Unit

V1 = HostCgroups(version=1, io_weight=True)
V2 = HostCgroups(version=2, io_weight=True)
DENY_ALL = [{"allow": False, "access": "rwm"}]
VDA = (254, 0)
LIMITS = {"memory": "64M", "cpus": 0.5, "cpu_weight": 200, "pids": 64, "io_weight": 300}


def make_unit(**resources: Any) -> Unit:
    return Unit.model_validate({"container": {"image": "busybox"}, "resources": resources})


def resources_of(
    unit: Unit,
    *,
    driver: Driver = "systemd",
    cgroups: HostCgroups = V2,
    swap_limit: bool = True,
    devices: dict[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    found = linux_resources(
        unit,
        driver=driver,
        cgroups=cgroups,
        swap_limit=swap_limit,
        devices=devices if devices is not None else {},
    )
    assert found.pop("devices") == DENY_ALL
    return found


# --- memory: where the limit sits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "cgroups"), [("systemd", V1), ("cgroupfs", V1), ("cgroupfs", V2)]
)
def test_memory_limit_is_the_runtimes_to_write(driver: Driver, cgroups: HostCgroups) -> None:
    found = resources_of(make_unit(memory="256M"), driver=driver, cgroups=cgroups)
    assert found == {"memory": {"limit": 256 << 20, "swap": 256 << 20}}


def test_memory_limit_is_the_scopes_alone_under_systemd_on_v2() -> None:
    # So crun's "container" child, which holds the processes, counts nothing but OOM kills.
    unit = make_unit(memory="256M")
    assert resources_of(unit, driver="systemd", cgroups=V2) == {}
    assert systemd_properties(unit, cgroups=V2) == {
        "org.systemd.property.MemoryMax": f"uint64 {256 << 20}",
        "org.systemd.property.MemorySwapMax": "uint64 0",
    }


def test_no_swap_property_without_swap_accounting_or_on_v1() -> None:
    unit = make_unit(memory="1G")
    expected = {"org.systemd.property.MemoryMax": f"uint64 {1 << 30}"}
    assert systemd_properties(unit, cgroups=V2, swap_limit=False) == expected
    assert systemd_properties(unit, cgroups=V1) == expected


# --- weights -------------------------------------------------------------------------------------


def test_io_weight_on_v2_is_written_exactly_through_the_unified_map() -> None:
    assert resources_of(make_unit(io_weight=300), cgroups=V2) == {
        "unified": {"io.weight": "default 300"}
    }


def test_io_weight_on_v1_is_blkio_weight_on_systemds_scale() -> None:
    assert resources_of(make_unit(io_weight=300), cgroups=V1) == {"blockIO": {"weight": 1000}}
    assert resources_of(make_unit(io_weight=100), cgroups=V1) == {"blockIO": {"weight": 500}}


@pytest.mark.parametrize("version", [1, 2])
def test_io_weight_left_out_where_the_kernel_has_none(version: Version) -> None:
    host = HostCgroups(version=version, io_weight=False)
    unit = make_unit(io_weight=300)
    assert resources_of(unit, cgroups=host) == {}
    assert systemd_properties(unit, cgroups=host) == {}


@pytest.mark.parametrize(
    ("weight", "blkio"), [(1, 10), (2, 10), (50, 250), (100, 500), (200, 1000), (10000, 1000)]
)
def test_blkio_weight(weight: int, blkio: int) -> None:
    assert blkio_weight(weight) == blkio


@pytest.mark.parametrize("weight", [0, 10001])
def test_blkio_weight_out_of_range(weight: int) -> None:
    with pytest.raises(SpecError, match="outside 1 to 10000"):
        blkio_weight(weight)


def test_every_limit_as_a_scope_property() -> None:
    assert systemd_properties(make_unit(**LIMITS), cgroups=V2) == {
        "org.systemd.property.MemoryMax": f"uint64 {64 << 20}",
        "org.systemd.property.MemorySwapMax": "uint64 0",
        "org.systemd.property.TasksMax": "uint64 64",
        "org.systemd.property.CPUQuotaPerSecUSec": "uint64 500000",
        "org.systemd.property.CPUWeight": "uint64 200",
        "org.systemd.property.IOWeight": "uint64 300",
    }


def test_every_limit_in_linux_resources_on_v2_under_cgroupfs() -> None:
    found = resources_of(
        make_unit(**LIMITS, device_read_bps={"/dev/vda": "10M"}),
        driver="cgroupfs",
        devices={"/dev/vda": VDA},
    )
    assert found == {
        "memory": {"limit": 64 << 20, "swap": 64 << 20},
        "cpu": {"quota": 50000, "period": 100000, "shares": 5220},
        "pids": {"limit": 64},
        "blockIO": {"throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 10 << 20}]},
        "unified": {"io.weight": "default 300"},
    }


# --- device limits -------------------------------------------------------------------------------


def test_device_limits_per_device_sorted_by_number() -> None:
    unit = make_unit(
        device_read_bps={"/dev/vdb": "1M", "/dev/vda": "10M"},
        device_write_bps={"/dev/vda": 1048576},
        device_read_iops={"/dev/vda": 100},
        device_write_iops={"/dev/disk/by-id/virtio-b": 50},
    )
    devices = {"/dev/vda": VDA, "/dev/vdb": (254, 16), "/dev/disk/by-id/virtio-b": (254, 16)}
    assert device_paths(unit) == set(devices)
    for cgroups in (V1, V2):
        assert resources_of(unit, cgroups=cgroups, devices=devices)["blockIO"] == {
            "throttleReadBpsDevice": [
                {"major": 254, "minor": 0, "rate": 10 << 20},
                {"major": 254, "minor": 16, "rate": 1 << 20},
            ],
            "throttleWriteBpsDevice": [{"major": 254, "minor": 0, "rate": 1 << 20}],
            "throttleReadIOPSDevice": [{"major": 254, "minor": 0, "rate": 100}],
            "throttleWriteIOPSDevice": [{"major": 254, "minor": 16, "rate": 50}],
        }


def test_two_names_of_one_device_in_one_limit_are_refused() -> None:
    unit = make_unit(device_read_bps={"/dev/vda": "1M", "/dev/disk/by-path/x": "2M"})
    devices = {"/dev/vda": VDA, "/dev/disk/by-path/x": VDA}
    with pytest.raises(SpecError, match=r"same device \(254:0\)"):
        resources_of(unit, devices=devices)


def test_an_unresolved_device_is_an_error_not_a_silent_gap() -> None:
    with pytest.raises(SpecError, match="/dev/vda has no device number"):
        resources_of(make_unit(device_write_iops={"/dev/vda": 10}))


def test_device_limits_are_no_scope_properties() -> None:
    # crun 1.8 cannot pass a(st) properties (IOReadBandwidthMax …); the runtime's io.max holds them.
    assert systemd_properties(make_unit(device_read_bps={"/dev/vda": "1M"}), cgroups=V2) == {}
