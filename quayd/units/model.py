"""The unit file format, as pydantic models: one table per concern, strict, no unknown keys.

These models check shapes and value syntax. Rules that relate several keys (``ready.port`` only
with ``mode = "tcp"``) live in :mod:`quayd.units.rules`, and rules across units in the same module,
so every rule can point at the exact key it is about.

Defaults are documented in ``docs/units.md``; keep the two in step.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from quayd.units.fieldtypes import (
    AbsolutePath,
    Accepts,
    ByteRate,
    Capability,
    DevicePath,
    DnsName,
    Duration,
    EnvName,
    Hostname,
    ImageName,
    Platform,
    Port,
    PortSpecField,
    Signal,
    Size,
    SysctlName,
    SysctlValue,
    UnitName,
    User,
)
from quayd.units.reference import ImageReference, parse_reference

RestartPolicy = Literal["no", "on-failure", "always"]
ReadyMode = Literal["started", "notify", "healthy", "tcp"]
NetworkMode = Literal["bridge", "host", "none"]
MountType = Literal["volume", "bind", "tmpfs"]
PullPolicy = Literal["missing", "always"]
OnUnhealthy = Literal["none", "restart"]
UpdatePolicy = Literal["off", "registry", "local"]
UpdateStrategy = Literal["download-then-replace", "replace-then-download", "stop-then-download"]


class Table(BaseModel):
    """Base of every table: strict types, unknown keys refused, values immutable."""

    # defer_build: a schema is built when first used, so a command that never validates a
    # unit (image pull) does not pay for building the unit schema at start-up.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, defer_build=True)


class ContainerTable(Table):
    image: ImageName
    command: list[str] | None = None
    args: list[str] | None = None
    env: dict[EnvName, str] = {}
    env_files: list[AbsolutePath] = []
    user: User | None = None
    workdir: AbsolutePath | None = None
    hostname: Hostname | None = None
    read_only: bool = False
    stop_signal: Signal | None = None
    stop_timeout: Duration = timedelta(seconds=10)
    cap_add: list[Capability] = []
    cap_drop: list[Capability] = []
    sysctls: dict[SysctlName, SysctlValue] = {}
    labels: dict[str, str] = {}
    user_namespaces: bool = False
    init: bool = True

    @property
    def image_reference(self) -> ImageReference:
        return parse_reference(self.image)


class RestartTable(Table):
    policy: RestartPolicy = "always"
    backoff: Duration = timedelta(seconds=1)
    backoff_max: Duration = timedelta(minutes=5)
    reset_after: Duration = timedelta(minutes=10)


class ReadyTable(Table):
    mode: ReadyMode = "started"
    port: Annotated[Port, Field(ge=1, le=65535)] | None = None
    timeout: Duration = timedelta(seconds=60)


class HealthTable(Table):
    """Unset keys take the image's HEALTHCHECK values, else Docker's (``HEALTH_DEFAULTS``)."""

    command: list[str] | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: (
        Annotated[int, Field(ge=1, le=1000), Accepts("a whole number from 1 to 1000")] | None
    ) = None
    start_period: Duration | None = None
    on_unhealthy: OnUnhealthy = "none"


# Docker's defaults for a health check that neither the unit nor the image times.
HEALTH_DEFAULTS = {
    "interval": timedelta(seconds=30),
    "timeout": timedelta(seconds=30),
    "retries": 3,
    "start_period": timedelta(0),
}


# The kernel refuses an I/O limit of 0 or 1 (blk-throttle: ERANGE, EINVAL) and caps operations
# per second at 2**32 - 1.
IoRate = Annotated[
    int,
    Field(ge=2, le=4_294_967_295),
    Accepts("a whole number of operations per second, at least 2"),
]


class ResourcesTable(Table):
    memory: Size | None = None
    cpus: (
        Annotated[float, Field(gt=0, le=1024), Accepts("a number of CPUs above 0, e.g. 0.5 or 2")]
        | None
    ) = None
    cpu_weight: (
        Annotated[
            int,
            Field(ge=1, le=10000),
            Accepts("a whole number from 1 to 10000 (100 is the default share)"),
        ]
        | None
    ) = None
    pids: (
        Annotated[
            int, Field(ge=1, le=4_194_304), Accepts("a whole number of processes, at least 1")
        ]
        | None
    ) = None
    io_weight: (
        Annotated[
            int,
            Field(ge=1, le=10000),
            Accepts("a whole number from 1 to 10000 (100 is the default share)"),
        ]
        | None
    ) = None
    # Per device (its path; the kernel limits whole disks): bytes per second, or operations.
    device_read_bps: dict[DevicePath, ByteRate] = {}
    device_write_bps: dict[DevicePath, ByteRate] = {}
    device_read_iops: dict[DevicePath, IoRate] = {}
    device_write_iops: dict[DevicePath, IoRate] = {}


class NetworkTable(Table):
    mode: NetworkMode = "bridge"
    ports: list[PortSpecField] = []
    aliases: list[DnsName] = []


class Mount(Table):
    type: MountType
    source: str | None = None
    target: AbsolutePath
    read_only: bool = False
    size: Size | None = None


class DependsTable(Table):
    requires: list[UnitName] = []


class ImageTable(Table):
    pull: PullPolicy = "missing"
    platform: Platform | None = None


class UpdateTable(Table):
    """Automatic updates of the unit's image (docs/units.md, "[update]")."""

    policy: UpdatePolicy = "off"
    strategy: UpdateStrategy = "download-then-replace"
    rollback: bool = True


class Unit(Table):
    """One container, as ``/etc/quay.d/NAME.toml`` (with its drop-ins merged) describes it."""

    container: ContainerTable
    restart: RestartTable = Field(default_factory=RestartTable)
    ready: ReadyTable = Field(default_factory=ReadyTable)
    health: HealthTable = Field(default_factory=HealthTable)
    resources: ResourcesTable = Field(default_factory=ResourcesTable)
    network: NetworkTable = Field(default_factory=NetworkTable)
    mounts: list[Mount] = []
    depends: DependsTable = Field(default_factory=DependsTable)
    image: ImageTable = Field(default_factory=ImageTable)
    update: UpdateTable = Field(default_factory=UpdateTable)
