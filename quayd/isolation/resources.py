"""A unit's ``[resources]`` as cgroup limits: the spec's ``linux.resources`` and, under the
systemd driver, the properties of the container's scope. Pure: the host's facts
(:class:`cgroups.HostCgroups`) and the devices' numbers come resolved.

Where each limit lands (crun 1.8, runc 1.1; ``docs/isolation.md`` has the table):

* The runtime writes ``linux.resources`` into the container's own cgroup: crun under the systemd
  driver into a ``container`` child of the scope (it asks systemd for ``Delegate=yes``), runc and
  both runtimes under cgroupfs into ``quay.slice/quay-NAME.scope`` itself.
* systemd writes the scope's properties (``org.systemd.property.*`` annotations, which both
  runtimes pass to StartTransientUnit) into the scope's cgroup, so ``systemctl show`` and
  ``systemctl status`` show them. Weights only mean something between siblings, and the scopes
  are the siblings in ``quay.slice``: a ``container`` child alone in its scope competes with
  nothing, so ``CPUWeight`` and ``IOWeight`` on the scope are what divide CPU and I/O between
  containers.
* On cgroup v2 under the systemd driver the memory limit is the scope's alone (``MemoryMax``,
  ``MemorySwapMax``), not in ``linux.resources``: the kernel then counts the limit's events
  (``max``) at the scope, and the cgroup holding the processes only counts OOM kills, which is
  what makes them visible after systemd removed the scope (:mod:`oom`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quayd.isolation.cgroups import Driver, HostCgroups
from quayd.isolation.errors import SpecError
from quayd.units.model import ResourcesTable, Unit

CPU_PERIOD = 100_000  # microseconds, as Docker's --cpus
MIN_CPU_QUOTA = 1000  # the kernel refuses a CFS quota under 1 ms
# crun and runc pass ``org.systemd.property.NAME`` annotations to systemd when they start the
# container's scope (``--systemd-cgroup`` only). The value is GVariant text; numbers need their
# type ("uint64 N"), as both runtimes would otherwise send an int32. crun 1.8 parses booleans,
# strings, string arrays and integers only: the per-device properties (IOReadBandwidthMax,
# a(st)) cannot be passed, so device limits are the runtime's ``io.max`` alone.
SYSTEMD_PROPERTY = "org.systemd.property."

# The device limit keys of [resources] and the OCI blockIO lists they fill.
DEVICE_LIMITS = (
    ("device_read_bps", "throttleReadBpsDevice"),
    ("device_write_bps", "throttleWriteBpsDevice"),
    ("device_read_iops", "throttleReadIOPSDevice"),
    ("device_write_iops", "throttleWriteIOPSDevice"),
)


def device_paths(unit: Unit) -> frozenset[str]:
    """Every device path the unit's I/O limits name (the caller resolves them to numbers)."""
    limits = unit.resources
    return frozenset(path for key, _ in DEVICE_LIMITS for path in getattr(limits, key))


def linux_resources(
    unit: Unit,
    *,
    driver: Driver,
    cgroups: HostCgroups,
    swap_limit: bool,
    devices: Mapping[str, tuple[int, int]],
) -> dict[str, Any]:
    """``linux.resources`` of the spec."""
    limits = unit.resources
    # Every device denied; the runtimes then allow their standard set (null, zero, full, random,
    # urandom, tty, console, ptmx, pts) after this rule, as for Docker and Podman.
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    scope_holds_memory = driver == "systemd" and cgroups.version == 2
    if limits.memory is not None and not scope_holds_memory:
        # swap = memory: memory+swap capped at the limit, so no swap on top. (Docker's --memory
        # alone allows as much swap again, which hides a too-small limit behind a slow host.)
        resources["memory"] = {"limit": limits.memory}
        if swap_limit:
            resources["memory"]["swap"] = limits.memory
    cpu: dict[str, Any] = {}
    if limits.cpus is not None:
        quota = round(limits.cpus * CPU_PERIOD)
        if quota < MIN_CPU_QUOTA:
            raise SpecError(f"resources.cpus = {limits.cpus} is below the kernel's minimum, 0.01")
        cpu.update(quota=quota, period=CPU_PERIOD)
    if limits.cpu_weight is not None:
        cpu["shares"] = cpu_shares(limits.cpu_weight)
    if cpu:
        resources["cpu"] = cpu
    if limits.pids is not None:
        resources["pids"] = {"limit": limits.pids}
    block_io = _block_io(limits, cgroups, devices)
    if block_io:
        resources["blockIO"] = block_io
    if limits.io_weight is not None and cgroups.io_weight and cgroups.version == 2:
        # OCI's blockIO.weight is v1's 10-1000 scale: the runtimes map it onto io.weight
        # linearly (10 -> 1, 1000 -> 10000), which reaches only every tenth weight, and crun
        # writes it unconverted to io.bfq.weight where BFQ is loaded. The unified map writes
        # the file itself, exactly.
        resources["unified"] = {"io.weight": f"default {limits.io_weight}"}
    return resources


def _block_io(
    limits: ResourcesTable, cgroups: HostCgroups, devices: Mapping[str, tuple[int, int]]
) -> dict[str, Any]:
    block_io: dict[str, Any] = {}
    if limits.io_weight is not None and cgroups.io_weight and cgroups.version == 1:
        block_io["weight"] = blkio_weight(limits.io_weight)
    for key, field in DEVICE_LIMITS:
        rates: dict[tuple[int, int], str] = {}
        for path in getattr(limits, key):
            if path not in devices:
                raise SpecError(f"resources.{key}: {path} has no device number (not resolved)")
            numbers = devices[path]
            if numbers in rates:
                raise SpecError(
                    f"resources.{key}: {rates[numbers]} and {path} are the same device "
                    f"({numbers[0]}:{numbers[1]}); give it one limit"
                )
            rates[numbers] = path
        entries = [
            {"major": major, "minor": minor, "rate": getattr(limits, key)[path]}
            for (major, minor), path in sorted(rates.items())
        ]
        if entries:
            block_io[field] = entries
    return block_io


def systemd_properties(
    unit: Unit, *, cgroups: HostCgroups | None = None, swap_limit: bool = True
) -> dict[str, str]:
    """The scope's properties: the unit's limits as systemd shows and applies them.

    ``MemoryMax`` and ``TasksMax`` in bytes and tasks, ``MemorySwapMax=0`` on cgroup v2 (no swap
    on top of the memory limit, as the runtimes' memory+swap on v1), ``CPUQuotaPerSecUSec`` (CPU
    time per second of wall time: ``cpus`` x 1 s; systemd shows it as
    ``CPUQuotaPerSecUSec=500ms``), ``CPUWeight`` and ``IOWeight`` (1 to 10000, shown as is; on
    cgroup v1 systemd maps them to ``cpu.shares`` and ``blkio.weight``).
    """
    host = cgroups or HostCgroups()
    limits = unit.resources
    properties: dict[str, str] = {}
    if limits.memory is not None:
        properties["MemoryMax"] = f"uint64 {limits.memory}"
        if host.version == 2 and swap_limit:
            properties["MemorySwapMax"] = "uint64 0"
    if limits.pids is not None:
        properties["TasksMax"] = f"uint64 {limits.pids}"
    if limits.cpus is not None:
        properties["CPUQuotaPerSecUSec"] = f"uint64 {round(limits.cpus * 1_000_000)}"
    if limits.cpu_weight is not None:
        properties["CPUWeight"] = f"uint64 {limits.cpu_weight}"
    if limits.io_weight is not None and host.io_weight:
        properties["IOWeight"] = f"uint64 {limits.io_weight}"
    return {SYSTEMD_PROPERTY + key: value for key, value in properties.items()}


def cpu_shares(weight: int) -> int:
    """cgroup v1 ``cpu.shares`` (2..262144) for a cgroup v2 ``cpu.weight`` (1..10000).

    OCI has only ``shares``; on cgroup v2 crun (1.8) and runc (before 1.3.2) write
    ``cpu.weight = 1 + ((shares - 2) * 9999) // 262142``. This is the inverse of that, rounded
    up so that the runtime's integer division gives back exactly ``weight``. (systemd's own v1
    mapping is ``weight * 1024 / 100``; it would make weight 100 come back as 39 on v2.) On v1
    the shares keep the ratios between containers: 100 → 2598, 200 → 5220.
    """
    if not 1 <= weight <= 10000:
        raise SpecError(f"cpu_weight {weight} is outside 1 to 10000")
    return 2 + -((-(weight - 1) * 262142) // 9999)


def blkio_weight(weight: int) -> int:
    """cgroup v1 ``blkio.weight`` (10..1000, default 500) for an ``io_weight`` (1..10000,
    default 100): systemd's own mapping (``weight * 500 / 100``, clamped), so the default maps
    to the default and ratios between 2 and 200 are kept, and the runtime writes what systemd's
    ``IOWeight`` would."""
    if not 1 <= weight <= 10000:
        raise SpecError(f"io_weight {weight} is outside 1 to 10000")
    return min(max(weight * 5, 10), 1000)
