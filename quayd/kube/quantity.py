"""Kubernetes quantities ("512Mi", "1500m") and whole seconds, both ways."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?")
_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9)}
_DECIMAL |= {"T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18)}


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse_quantity(value: object) -> Decimal:
    """A quantity as Kubernetes writes it: a number or a string with a suffix (``"1.5Gi"``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise QuantityError(f"{value!r} is not a quantity")
    match = _QUANTITY.fullmatch(str(value).strip())
    if not match:
        raise QuantityError(f"{value!r} is not a quantity such as 512Mi, 1G or 500m")
    try:
        number = Decimal(match[1])
    except InvalidOperation:
        raise QuantityError(f"{value!r} is not a quantity") from None
    suffix = match[2] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if suffix:
        return number * Decimal(10) ** int(suffix[1:])
    return number


def bytes_quantity(size: int) -> str:
    """Bytes in the largest binary unit that divides them exactly."""
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        if size and size % _BINARY[suffix] == 0:
            return f"{size // _BINARY[suffix]}{suffix}"
    return str(size)


def cpu_quantity(cpus: float) -> str:
    millis = round(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def whole_seconds(duration: timedelta) -> int:
    """Kubernetes counts in whole seconds: round up, so a timeout is never shortened."""
    return math.ceil(duration.total_seconds())


def seconds_text(seconds: int | Decimal) -> str:
    """A duration as a unit writes it."""
    return f"{seconds}s"
