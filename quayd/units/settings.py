"""Agent settings: ``/etc/quay/quayd.toml``. Every key is optional; see ``docs/settings.md``.

Command-line options (``--config-dir``, ``--state-dir``, ``--run-dir``) override the file, so
several instances can run side by side. Loading reuses the unit machinery: the same strict
models, the same findings with file, key and line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from quayd.units.fieldtypes import AbsolutePath, Accepts, ByteRate, Duration, Size, syntax_error
from quayd.units.findings import Finding, QuayConfigError
from quayd.units.loader import parse_layers, read_source, validate
from quayd.units.model import Table
from quayd.units.reference import normalize_registry

DEFAULT_SETTINGS_FILE = Path("/etc/quay/quayd.toml")

_IFNAME_ACCEPTED = "an interface name of 1 to 15 letters, digits, '_', '.' or '-'"
_REGISTRY_HOST_ACCEPTED = 'a registry host, optionally with a port: "registry.lan:5000"'
_MIRROR_ACCEPTED = 'a registry host[:port], or a URL "https://host[:port]" or "http://host[:port]"'


def _interface_name(value: str) -> str:
    if not (1 <= len(value) <= 15) or not all(c.isalnum() or c in "_.-" for c in value):
        raise syntax_error("not an interface name", _IFNAME_ACCEPTED)
    return value


def _subnet(
    kind: type[ipaddress.IPv4Network | ipaddress.IPv6Network], longest_prefix: int, example: str
) -> Callable[[str], str]:
    """A validator for subnets that leave room for a gateway and containers."""
    version = "IPv4" if kind is ipaddress.IPv4Network else "IPv6"
    accepted = f'an {version} subnet in CIDR form with room for containers, such as "{example}"'

    def validate(value: str) -> str:
        try:
            network = kind(value, strict=True)
        except ValueError as error:
            raise syntax_error(f"not an {version} subnet ({error})", accepted) from None
        if network.prefixlen > longest_prefix:
            raise syntax_error("the subnet is too small for a gateway and a container", accepted)
        return str(network)

    return validate


_ipv4_subnet = _subnet(ipaddress.IPv4Network, 30, "10.89.0.0/24")
_ipv6_subnet = _subnet(ipaddress.IPv6Network, 120, "fd89::/64")


def _registry_host(value: str) -> str:
    normalized = normalize_registry(value)
    if normalized is None:
        raise syntax_error("not a registry host[:port]", _REGISTRY_HOST_ACCEPTED)
    return normalized


def _mirror(value: str) -> str:
    # http:// is allowed: a mirror on the LAN often has no TLS (as with plain_http registries).
    host = value.removeprefix("https://").removeprefix("http://").rstrip("/")
    if normalize_registry(host) is None:
        raise syntax_error("not a mirror host or URL", _MIRROR_ACCEPTED)
    return value


InterfaceName = Annotated[str, Accepts(_IFNAME_ACCEPTED), AfterValidator(_interface_name)]
IPv4Subnet = Annotated[
    str, Accepts('an IPv4 subnet such as "10.89.0.0/24"'), AfterValidator(_ipv4_subnet)
]
IPv6Subnet = Annotated[
    str, Accepts('an IPv6 subnet such as "fd89::/64"'), AfterValidator(_ipv6_subnet)
]
RegistryHost = Annotated[str, Accepts(_REGISTRY_HOST_ACCEPTED), AfterValidator(_registry_host)]
Mirror = Annotated[str, Accepts(_MIRROR_ACCEPTED), AfterValidator(_mirror)]
_RUNTIME_ACCEPTED = '"crun", "runc" or an absolute path to an OCI runtime'


def _runtime(value: str) -> str:
    if value in ("crun", "runc") or value.startswith("/"):
        return value
    raise syntax_error("not a known OCI runtime", _RUNTIME_ACCEPTED)


RuntimeName = Annotated[str, Accepts(_RUNTIME_ACCEPTED), AfterValidator(_runtime)]


class NetworkSettings(Table):
    bridge: InterfaceName = "quay0"
    subnet: IPv4Subnet = "10.89.0.0/24"
    subnet6: IPv6Subnet | None = None


class RegistrySettings(Table):
    auth_file: AbsolutePath | None = None
    """Credentials in Docker's ``config.json`` format (``auths`` with ``auth`` or user+password)."""
    ca_files: list[AbsolutePath] = []
    """Extra CA certificates (PEM) trusted for every registry, on top of the system's."""
    plain_http: list[RegistryHost] = []
    """Registries reached over plain HTTP. Loopback registries need not be listed (as Docker)."""
    mirrors: dict[RegistryHost, list[Mirror]] = {}
    """Per registry, mirrors tried in order before the registry itself."""


class ImageSettings(Table):
    min_free_disk: Size = 512 * 1024 * 1024
    """A pull that would leave less free space than this on the state dir's disk is refused."""
    max_concurrent_downloads: Annotated[
        int, Field(ge=1, le=16), Accepts("a whole number from 1 to 16")
    ] = 3
    max_layer_size: Size = 16 * 1024**3
    """Largest uncompressed layer accepted: a bigger one is treated as a decompression bomb."""
    max_layer_entries: Annotated[
        int, Field(ge=1, le=100_000_000), Accepts("a whole number of files, at least 1")
    ] = 1_000_000


_LISTEN_ACCEPTED = (
    'an absolute path of a unix socket ("/run/quay/metrics.sock"), a TCP port (9464: on '
    '127.0.0.1) or HOST:PORT ("0.0.0.0:9464", "[::1]:9464")'
)


def _listen(value: str) -> str:
    """Canonical: the socket path, or ``HOST:PORT`` (``[V6]:PORT``) with the host filled in."""
    if value.startswith("/"):
        if len(value.encode()) > 107:  # sun_path holds 108 bytes with the terminating NUL
            raise syntax_error("the socket path is longer than a unix socket's 107 bytes",
                               _LISTEN_ACCEPTED)  # fmt: skip
        return value
    host, colon, port = value.rpartition(":")
    if not colon:
        host, port = "127.0.0.1", value
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise syntax_error("not a port from 1 to 65535", _LISTEN_ACCEPTED)
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise syntax_error(f"{host!r} is not an IP address", _LISTEN_ACCEPTED) from None
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"{shown}:{int(port)}"


MetricsListen = Annotated[str, Accepts(_LISTEN_ACCEPTED), AfterValidator(_listen)]


class MetricsSettings(Table):
    listen: MetricsListen | None = None
    """Where quayd serves Prometheus metrics (docs/metrics.md); None: no metrics endpoint."""


_WINDOW_ACCEPTED = 'a local time range "HH:MM-HH:MM", such as "02:00-04:00" (may wrap midnight)'


def _window(value: str) -> str:
    """Canonical ``HH:MM-HH:MM``; the end may be before the start (the window wraps midnight)."""
    try:
        start, end = (parse_clock(part) for part in value.split("-"))
    except ValueError:
        raise syntax_error("not a time range", _WINDOW_ACCEPTED) from None
    if start == end:
        raise syntax_error("the window is empty (start = end)", _WINDOW_ACCEPTED)
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def parse_clock(text: str) -> int:
    """Minutes after midnight of ``"HH:MM"``; ValueError when it is not a time of day."""
    hours, colon, minutes = text.strip().partition(":")
    if not colon or not (hours.isdigit() and minutes.isdigit()) or len(minutes) != 2:
        raise ValueError(text)
    if int(hours) > 23 or int(minutes) > 59:
        raise ValueError(text)
    return int(hours) * 60 + int(minutes)


UpdateWindow = Annotated[str, Accepts(_WINDOW_ACCEPTED), AfterValidator(_window)]


class UpdateSettings(Table):
    """How often units with ``[update] policy = "registry"`` check their tag (docs/settings.md)."""

    check_interval: Duration = timedelta(hours=1)
    jitter: Duration = timedelta(minutes=15)
    """Each check is delayed by up to this much, the same per unit and host, so a fleet does not
    ask the registry at once (systemd's ``RandomizedDelaySec``, podman's timer uses 900 s)."""
    window: UpdateWindow | None = None
    """Updates (checks and replacements) only in this local time range; None: at any time."""
    bandwidth: ByteRate | None = None
    """Cap on the download rate of update pulls (bytes/s); a start's pull is never capped."""


class Settings(Table):
    config_dir: AbsolutePath = "/etc/quay.d"
    state_dir: AbsolutePath = "/var/lib/quay"
    run_dir: AbsolutePath = "/run/quay"
    runtime: RuntimeName = "crun"
    cgroup_driver: Literal["auto", "systemd", "cgroupfs"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stop_containers_on_exit: bool = False
    """When quayd stops (not when it restarts on failure), stop every container too, dependents
    first. Off by default: an agent restart or upgrade leaves containers running (adopted)."""
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    registries: RegistrySettings = Field(default_factory=RegistrySettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    updates: UpdateSettings = Field(default_factory=UpdateSettings)


@dataclass(frozen=True)
class Overrides:
    """What the command line says; it wins over the settings file."""

    config_dir: Path | None = None
    state_dir: Path | None = None
    run_dir: Path | None = None


def load_settings(path: Path | None, overrides: Overrides = Overrides()) -> Settings:
    """Settings from ``path`` (the default file when None; absent is fine only for the default).

    Raises :class:`QuayConfigError` naming the file, the key and the line.
    """
    explicit = path is not None
    path = path or DEFAULT_SETTINGS_FILE
    if not explicit and not path.exists():
        settings = Settings()
    else:
        if explicit and not path.exists():
            raise QuayConfigError([Finding(file=path, message="the settings file does not exist")])
        document, source_map = parse_layers([read_source(path)])
        settings = validate(Settings, document, source_map)
    changes = {
        key: str(value.absolute()) for key, value in vars(overrides).items() if value is not None
    }
    return settings.model_copy(update=changes) if changes else settings
