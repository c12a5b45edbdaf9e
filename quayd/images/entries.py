"""Pure rules on layer entries: names relative to the layer, xattrs, times, owners."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from quayd.images.errors import HostileLayerError, UnpackError
from quayd.images.tarstream import TarHeader

__all__ = ["archive_xattrs", "entry_owner", "entry_times_ns", "split_entry_name"]

_MAX_PATH = 4096  # PATH_MAX: longer entry names are refused
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown


def split_entry_name(name: str) -> tuple[str, ...]:
    """The path components of an entry or hardlink name, relative to the layer root.

    Leading ``/`` and ``.`` components are dropped (``/etc/x`` is ``etc/x``, as Docker does);
    ``..`` anywhere is refused. ``()`` is the layer root itself.
    """
    if "\0" in name:
        raise HostileLayerError(f"layer entry {name!r}: name contains a NUL byte")
    if len(os.fsencode(name)) > _MAX_PATH:
        raise UnpackError(f"layer entry {name[:80]!r}...: name is longer than {_MAX_PATH} bytes")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise HostileLayerError(
                f"layer entry {name!r}: name has a '..' component; refusing to leave the layer"
            )
        parts.append(part)
    return tuple(parts)


def archive_xattrs(pax: Mapping[str, bytes], entry: str) -> list[tuple[str, bytes]]:
    """The xattrs an entry carries (PAX ``SCHILY.xattr.*``), minus ``security.selinux``.

    ``trusted.*`` is refused: overlayfs reads ``trusted.overlay.*`` as its own metadata.
    Values are the records' raw bytes (capabilities are binary).
    """
    found: list[tuple[str, bytes]] = []
    for key, value in pax.items():
        if not key.startswith(_XATTR_PAX_PREFIX):
            continue
        name = key[len(_XATTR_PAX_PREFIX) :]
        if not name or "\0" in name:
            raise HostileLayerError(f"layer entry {entry!r}: malformed xattr name {name!r}")
        if name.startswith("trusted."):
            raise HostileLayerError(
                f"layer entry {entry!r}: sets the trusted xattr {name!r}; images may not set "
                "trusted.* (overlayfs takes trusted.overlay.* as its own metadata)"
            )
        if name == "security.selinux":
            continue
        found.append((name, bytes(value)))
    return found


_PAX_TIME = re.compile(rb"(-?)(\d{1,20})(?:\.(\d{0,30}))?")


def _pax_time_ns(text: bytes | None) -> int | None:
    """A PAX time in ns; None when absent or unreadable: then the header's time stands."""
    if text is None:
        return None
    match = _PAX_TIME.fullmatch(text)
    if not match:
        return None
    sign, seconds, fraction = match.groups()
    ns = int(seconds) * 1_000_000_000 + int((fraction or b"").ljust(9, b"0")[:9])
    return -ns if sign else ns


def entry_times_ns(info: TarHeader) -> tuple[int, int]:
    """``(atime_ns, mtime_ns)`` of an entry: PAX times exactly when present, else the header's.

    atime defaults to mtime (the header has no atime).
    """
    pax = info.pax
    mtime = _pax_time_ns(pax.get("mtime")) if pax else None
    if mtime is None:
        mtime = info.mtime * 1_000_000_000
    atime = _pax_time_ns(pax.get("atime")) if pax else None
    return (mtime if atime is None else atime), mtime


def entry_owner(info: TarHeader, entry: str) -> tuple[int, int]:
    """The numeric owner: names are never looked up (CVE-2019-14271: no libnss of the image)."""
    for value in (info.uid, info.gid):
        if not 0 <= value <= _MAX_ID:
            raise HostileLayerError(f"layer entry {entry!r}: owner id {value} is out of range")
    return info.uid, info.gid
