"""Annotated field types shared by the unit model and the agent settings.

Each type carries an :class:`Accepts` marker, so an error about a field can always say what the
field would accept, and a serializer that gives the canonical spelling back (for ``render``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer
from pydantic_core import PydanticCustomError

from quayd.units import values
from quayd.units.reference import REFERENCE_ACCEPTED, ImageReferenceError, parse_reference

UNIT_NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,62}"
UNIT_NAME = re.compile(UNIT_NAME_PATTERN)
UNIT_NAME_ACCEPTED = (
    "1 to 63 characters: lowercase letters, digits, '_', '.' and '-', "
    "starting with a letter or digit"
)


@dataclass(frozen=True)
class Accepts:
    """Annotation metadata: what a field accepts, in words a person reads in an error."""

    text: str


def syntax_error(message: str, accepted: str) -> PydanticCustomError:
    # The message travels in the context: a template would choke on braces inside it.
    return PydanticCustomError(
        "quay_syntax", "{message}", {"message": message, "accepted": accepted}
    )


def _parsed_by(parser: Callable[[Any], Any]) -> BeforeValidator:
    def validate(value: Any) -> Any:
        try:
            return parser(value)
        except values.ValueSyntaxError as error:
            raise syntax_error(error.message, error.accepted) from None

    return BeforeValidator(validate)


def _matching(pattern: str, accepted: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def validate(value: str) -> str:
        if not compiled.fullmatch(value):
            raise syntax_error(f"not a valid {what}", accepted)
        return value

    return AfterValidator(validate)


Duration = Annotated[
    timedelta,
    Accepts(values.DURATION_ACCEPTED),
    _parsed_by(values.parse_duration),
    PlainSerializer(values.format_duration, return_type=str),
]
Size = Annotated[
    int,
    Accepts(values.SIZE_ACCEPTED),
    _parsed_by(values.parse_size),
    PlainSerializer(values.format_size, return_type=str),
]
# An I/O limit in bytes per second; the kernel refuses 0 and 1 (blk-throttle: ERANGE, EINVAL).
ByteRate = Annotated[
    int,
    Accepts('bytes per second: a size such as "10M" (10 MiB/s) or a whole number, at least 2'),
    _parsed_by(values.parse_size),
    Field(ge=2),
    PlainSerializer(values.format_size, return_type=str),
]
Signal = Annotated[str, Accepts(values.SIGNAL_ACCEPTED), _parsed_by(values.parse_signal)]
Capability = Annotated[
    str, Accepts(values.CAPABILITY_ACCEPTED), _parsed_by(values.parse_capability)
]
PortSpecField = Annotated[
    values.PortSpec,
    Accepts(values.PORT_ACCEPTED),
    _parsed_by(values.parse_port_spec),
    PlainSerializer(str, return_type=str),
]
Port = Annotated[int, Accepts("a port number from 1 to 65535")]

ABSOLUTE_ACCEPTED = 'an absolute path such as "/srv/data"'


def absolute_path_problem(value: str) -> str | None:
    """Why ``value`` is not a usable absolute path, or None when it is one."""
    if not value.startswith("/"):
        return "a path here must be absolute"
    if "\0" in value:
        return "a path cannot contain a NUL character"
    if ".." in value.split("/"):
        return "a path here cannot contain '..'"
    return None


def _absolute_path(value: str) -> str:
    problem = absolute_path_problem(value)
    if problem:
        raise syntax_error(problem, ABSOLUTE_ACCEPTED)
    return value


AbsolutePath = Annotated[str, Accepts(ABSOLUTE_ACCEPTED), AfterValidator(_absolute_path)]

UnitName = Annotated[
    str, Accepts(UNIT_NAME_ACCEPTED), _matching(UNIT_NAME_PATTERN, UNIT_NAME_ACCEPTED, "unit name")
]

_DNS_ACCEPTED = (
    "a DNS name: labels of letters, digits and '-' (not at either end), "
    "joined by '.', at most 63 characters each"
)
DnsName = Annotated[
    str,
    Accepts(_DNS_ACCEPTED),
    _matching(
        r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
        _DNS_ACCEPTED,
        "DNS name",
    ),
]
Hostname = Annotated[
    str,
    Accepts(_DNS_ACCEPTED + "; 64 characters in all"),
    _matching(
        r"(?=.{1,64}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
        _DNS_ACCEPTED + "; 64 characters in all",
        "hostname",
    ),
]

DEVICE_ACCEPTED = 'a block device path such as "/dev/sda" or "/dev/disk/by-id/NAME"'
DevicePath = Annotated[
    str,
    Accepts(DEVICE_ACCEPTED),
    _matching(r"/dev(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_.:@+-]+)+", DEVICE_ACCEPTED, "device path"),
]

_ENV_NAME_ACCEPTED = "a variable name without '=' or NUL, such as \"LOG_LEVEL\""
EnvName = Annotated[
    str, Accepts(_ENV_NAME_ACCEPTED), _matching(r"[^=\0]+", _ENV_NAME_ACCEPTED, "variable name")
]

_USER_ACCEPTED = '"UID", "UID:GID", "NAME" or "NAME:GROUP" (names are looked up in the image)'
User = Annotated[
    str,
    Accepts(_USER_ACCEPTED),
    _matching(
        r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?", _USER_ACCEPTED, "user"
    ),
]

_SYSCTL_ACCEPTED = 'a sysctl name such as "net.ipv4.ip_unprivileged_port_start"'
SysctlName = Annotated[
    str,
    Accepts(_SYSCTL_ACCEPTED),
    _matching(r"[a-z0-9_-]+(?:[./][a-zA-Z0-9_*-]+)+", _SYSCTL_ACCEPTED, "sysctl name"),
]


def _sysctl_value(value: Any) -> Any:
    # Kernel values are text, but `somaxconn = 1024` is how people write them: take whole numbers.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


SysctlValue = Annotated[
    str, Accepts('a string, or a whole number, e.g. "1024"'), BeforeValidator(_sysctl_value)
]

_PLATFORM_ACCEPTED = '"OS/ARCH" or "OS/ARCH/VARIANT", e.g. "linux/amd64" or "linux/arm64/v8"'
Platform = Annotated[
    str,
    Accepts(_PLATFORM_ACCEPTED),
    _matching(r"[a-z0-9_-]+/[a-z0-9_-]+(?:/[a-z0-9_.-]+)?", _PLATFORM_ACCEPTED, "platform"),
]


def _image_reference(value: str) -> str:
    try:
        parse_reference(value)
    except ImageReferenceError as error:
        raise syntax_error(str(error), REFERENCE_ACCEPTED) from None
    return value


ImageName = Annotated[str, Accepts(REFERENCE_ACCEPTED), AfterValidator(_image_reference)]
