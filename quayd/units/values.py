"""Parsers for the value syntaxes unit files use: durations, sizes, signals, capabilities, ports.

Each parser is pure, raises :class:`ValueSyntaxError` with a message that says what would be
accepted, and has a formatter that gives back the canonical spelling (used by ``quayctl render``,
so a rendered unit validates to the same unit).
"""

from __future__ import annotations

import ipaddress
import math
import re
import signal
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Literal

DURATION_ACCEPTED = 'a duration such as "500ms", "10s", "5m", "1h30m" or a number of seconds'
SIZE_ACCEPTED = 'a size such as "512K", "256M", "1G" or a whole number of bytes'
SIGNAL_ACCEPTED = 'a signal name such as "SIGTERM", "TERM" or "SIGRTMIN+3", or its number'
PORT_ACCEPTED = (
    '"HOST:CONTAINER", "IP:HOST:CONTAINER", each optionally followed by "/tcp" or "/udp" '
    '(e.g. "8080:80", "127.0.0.1:53:53/udp", "[::1]:8443:443", ranges "8000-8002:9000-9002")'
)


class ValueSyntaxError(ValueError):
    """A value is spelled in a way quay does not accept; the message says what would be."""

    def __init__(self, message: str, accepted: str) -> None:
        super().__init__(message)
        self.message = message
        self.accepted = accepted


# --- durations -----------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.ASCII)
# A day is far beyond any sensible timeout or backoff; a cap keeps arithmetic on durations safe.
MAX_DURATION = timedelta(days=365)


def parse_duration(value: object) -> timedelta:
    """``"500ms"``, ``"10s"``, ``"1h30m"``, ``"2.5s"``, ``"10"`` or a number of seconds."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueSyntaxError("expected a duration, not a boolean", DURATION_ACCEPTED)
    elif isinstance(value, int) and abs(value) > MAX_DURATION.total_seconds():
        seconds = math.inf if value > 0 else -math.inf  # float() of a huge TOML integer overflows
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value.strip())
    else:
        raise ValueSyntaxError(f"expected a duration, not {kind_of(value)}", DURATION_ACCEPTED)
    if math.isnan(seconds) or seconds < 0:
        raise ValueSyntaxError("a duration cannot be negative", DURATION_ACCEPTED)
    if seconds > MAX_DURATION.total_seconds():
        raise ValueSyntaxError("a duration longer than 365 days is not sensible", DURATION_ACCEPTED)
    return timedelta(milliseconds=round(seconds * 1000))


def _parse_duration_text(text: str) -> float:
    if text.startswith("-"):
        raise ValueSyntaxError("a duration cannot be negative", DURATION_ACCEPTED)
    if re.fullmatch(r"\d+(?:\.\d+)?", text, re.ASCII):
        return float(text)
    if not text or _DURATION_PART.sub("", text) != "":
        raise ValueSyntaxError("not a duration", DURATION_ACCEPTED)
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def format_duration(value: timedelta) -> str:
    """The shortest canonical spelling: ``1h30m``, ``10s``, ``1500ms`` stays ``1s500ms``."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, ms = divmod(ms, factor)
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)


# --- sizes ---------------------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE | re.ASCII)


def parse_size(value: object) -> int:
    """Bytes from ``"256M"``, ``"1G"``, ``"1.5G"``, ``"512k"``, ``"64MiB"`` or a whole number.

    Suffixes are binary (as Docker's ``--memory``): ``1K`` is 1024 bytes.
    """
    if isinstance(value, bool):
        raise ValueSyntaxError("expected a size, not a boolean", SIZE_ACCEPTED)
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        raise ValueSyntaxError(
            "a number of bytes must be whole; use a suffix for fractions", SIZE_ACCEPTED
        )
    elif isinstance(value, str):
        size = _parse_size_text(value.strip())
    else:
        raise ValueSyntaxError(f"expected a size, not {kind_of(value)}", SIZE_ACCEPTED)
    if size < 0:
        raise ValueSyntaxError("a size cannot be negative", SIZE_ACCEPTED)
    if size >= 1 << 62:
        raise ValueSyntaxError("size too large", SIZE_ACCEPTED)
    return size


def _parse_size_text(text: str) -> int:
    if text.startswith("-"):
        raise ValueSyntaxError("a size cannot be negative", SIZE_ACCEPTED)
    match = _SIZE_TEXT.fullmatch(text)
    if not match:
        raise ValueSyntaxError("not a size", SIZE_ACCEPTED)
    number, unit = match.groups()
    # Exact arithmetic: a float loses whole bytes above 2**53 and overflows on long numbers.
    size = Fraction(Decimal(number)) * _SIZE_UNITS[unit.lower()]
    if size >= 1 << 62:
        raise ValueSyntaxError("size too large", SIZE_ACCEPTED)
    if size.denominator != 1:
        raise ValueSyntaxError("not a whole number of bytes", SIZE_ACCEPTED)
    return int(size)


def format_size(size: int) -> str:
    """``268435456`` → ``"256M"``; sizes that no suffix divides stay a number of bytes."""
    for unit in ("T", "G", "M", "K"):
        factor = _SIZE_UNITS[unit.lower()]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# --- signals -------------------------------------------------------------------------------------

# ``__members__``, unlike iterating the enum, keeps the aliases SIGIOT, SIGCLD and SIGPOLL.
_SIGNAL_NAMES = {
    name: s.value for name, s in signal.Signals.__members__.items() if not name.startswith("SIG_")
}


def parse_signal(value: object) -> str:
    """A canonical signal name (``"SIGTERM"``) from a name, a name without ``SIG``, or a number."""
    if isinstance(value, bool):
        raise ValueSyntaxError("expected a signal, not a boolean", SIGNAL_ACCEPTED)
    if isinstance(value, int):
        # One spelling per signal, whatever was written: real-time ones as SIGRTMIN+N,
        # the others by the enum's own name (SIGABRT, not its alias SIGIOT).
        rt = _realtime_name(value)
        if rt:
            return rt
        try:
            return signal.Signals(value).name
        except ValueError:
            raise ValueSyntaxError(f"there is no signal number {value}", SIGNAL_ACCEPTED) from None
    if not isinstance(value, str):
        raise ValueSyntaxError(f"expected a signal, not {kind_of(value)}", SIGNAL_ACCEPTED)
    name = value.strip().upper()
    if re.fullmatch(r"[0-9]{1,9}", name):
        return parse_signal(int(name))
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name in _SIGNAL_NAMES:
        return parse_signal(_SIGNAL_NAMES[name])
    match = re.fullmatch(r"SIGRTM(IN|AX)([+-][0-9]{1,9})?", name)
    if match:
        base = signal.SIGRTMIN if match.group(1) == "IN" else signal.SIGRTMAX
        number = base + int(match.group(2) or 0)
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return _realtime_name(number) or name
    raise ValueSyntaxError("not a signal name", SIGNAL_ACCEPTED)


def _realtime_name(number: int) -> str | None:
    if not signal.SIGRTMIN <= number <= signal.SIGRTMAX:
        return None
    offset = number - signal.SIGRTMIN
    return "SIGRTMIN" if offset == 0 else f"SIGRTMIN+{offset}"


def signal_number(name: str) -> int:
    """The number of a canonical signal name produced by :func:`parse_signal`."""
    if name in _SIGNAL_NAMES:
        return _SIGNAL_NAMES[name]
    return signal.SIGRTMIN + int(name.removeprefix("SIGRTMIN").removeprefix("+") or 0)


# --- capabilities --------------------------------------------------------------------------------

# The Linux capability set up to 6.x (CAP_CHECKPOINT_RESTORE is number 40).
CAPABILITIES = frozenset(
    {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
        "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    }
)  # fmt: skip
CAPABILITY_ACCEPTED = 'a Linux capability such as "NET_ADMIN" or "CAP_NET_ADMIN", or "ALL"'


def parse_capability(value: object) -> str:
    """``"net_admin"`` → ``"CAP_NET_ADMIN"``; ``"all"`` → ``"ALL"``."""
    if not isinstance(value, str):
        raise ValueSyntaxError(
            f"expected a capability name, not {kind_of(value)}", CAPABILITY_ACCEPTED
        )
    name = value.strip().upper()
    if name == "ALL":
        return name
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in CAPABILITIES:
        raise ValueSyntaxError("not a Linux capability", CAPABILITY_ACCEPTED)
    return name


# --- published ports -----------------------------------------------------------------------------

Protocol = Literal["tcp", "udp"]


@dataclass(frozen=True)
class PortMapping:
    """One published port: ``host_ip:host_port -> container_port/protocol``.

    ``host_ip`` is None for "every address of the host" (Docker's 0.0.0.0).
    """

    host_port: int
    container_port: int
    protocol: Protocol = "tcp"
    host_ip: str | None = None

    def conflicts_with(self, other: PortMapping) -> bool:
        """Two mappings cannot both be bound: same port and protocol, and overlapping addresses."""
        if (self.host_port, self.protocol) != (other.host_port, other.protocol):
            return False
        return self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip

    def __str__(self) -> str:
        text = f"{self.host_port}:{self.container_port}"
        if self.host_ip is not None:
            ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
            text = f"{ip}:{text}"
        return text if self.protocol == "tcp" else f"{text}/{self.protocol}"


@dataclass(frozen=True)
class PortSpec:
    """A ``ports`` entry as written (one port or a range), expanded to its mappings."""

    text: str
    mappings: tuple[PortMapping, ...]

    def __str__(self) -> str:
        return self.text


_PORT_SPEC = re.compile(
    r"(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):)?"
    r"(?P<host>\d+(?:-\d+)?):(?P<container>\d+(?:-\d+)?)"
    r"(?:/(?P<proto>[A-Za-z]+))?",
    re.ASCII,
)


def parse_port_spec(value: object) -> PortSpec:
    if not isinstance(value, str):
        raise ValueSyntaxError(f"expected a string, not {kind_of(value)}", PORT_ACCEPTED)
    text = value.strip()
    match = _PORT_SPEC.fullmatch(text)
    if not match:
        if re.fullmatch(r"\d+(?:/\w+)?", text):
            raise ValueSyntaxError(
                "name the host port too; quay does not pick random host ports", PORT_ACCEPTED
            )
        raise ValueSyntaxError("not a port mapping", PORT_ACCEPTED)
    proto = (match["proto"] or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise ValueSyntaxError(f"unknown protocol {match['proto']!r}", PORT_ACCEPTED)
    host_ip = _parse_host_ip(match["ip"])
    hosts = _port_range(match["host"])
    containers = _port_range(match["container"])
    if len(hosts) != len(containers):
        raise ValueSyntaxError(
            "the host and container ranges must have the same length", PORT_ACCEPTED
        )
    mappings = tuple(
        PortMapping(host_port=h, container_port=c, protocol=proto, host_ip=host_ip)  # type: ignore[arg-type]
        for h, c in zip(hosts, containers, strict=True)
    )
    return PortSpec(text=_canonical_port_text(match, host_ip, proto), mappings=mappings)


def _canonical_port_text(match: re.Match[str], host_ip: str | None, proto: str) -> str:
    """The spec as written, with the address normalised ("0.0.0.0:" means every address)."""
    text = f"{match['host']}:{match['container']}"
    if host_ip is not None:
        text = f"[{host_ip}]:{text}" if ":" in host_ip else f"{host_ip}:{text}"
    return text if proto == "tcp" else f"{text}/{proto}"


def _parse_host_ip(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise ValueSyntaxError(f"{text!r} is not an IP address", PORT_ACCEPTED) from None
    if address.is_unspecified:
        return None  # "0.0.0.0:80:80" means the same as "80:80"
    return str(address)


def _port_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    if max(len(first), len(last)) > 9:  # int() refuses numbers thousands of digits long
        raise ValueSyntaxError(f"port {text} is outside 1-65535", PORT_ACCEPTED)
    start, end = int(first), int(last or first)
    for port in (start, end):
        if not 1 <= port <= 65535:
            raise ValueSyntaxError(f"port {port} is outside 1-65535", PORT_ACCEPTED)
    if end < start:
        raise ValueSyntaxError(f"the range {text} runs backwards", PORT_ACCEPTED)
    return list(range(start, end + 1))


def kind_of(value: object) -> str:
    """What a TOML value is, in words: "a string", "a table", ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "nothing" if value is None else "a date or time"
