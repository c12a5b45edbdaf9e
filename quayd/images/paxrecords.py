"""PAX extended header records: parsed within limits, and what they override in a header.

Records are ``"%d %s=%s\n"``, the length counting itself, and must exactly fill the header
(POSIX.1-2001 pax). Values stay raw bytes (xattr values are binary); keywords are decoded as
UTF-8 with undecodable bytes kept as surrogates, as names are.
"""

from __future__ import annotations

from collections.abc import Mapping

from quayd.images.errors import HostileLayerError, UnpackError

__all__ = ["CorruptHeaderError", "parse_pax_records", "pax_names", "pax_owner", "pax_size"]


class CorruptHeaderError(Exception):
    """A header or extended header is damaged; the message says how, the reader adds where."""


def parse_pax_records(
    data: bytes, *, max_records: int = 1024, max_record_bytes: int = 90 * 1024
) -> dict[str, bytes]:
    """The records of a PAX extended header: ``"%d %s=%s\\n"`` each, exactly filling it.

    Limits are checked before a record is cut out: more than ``max_records`` records or one
    longer than ``max_record_bytes`` is HostileLayerError; malformed records too. Keywords are
    decoded as UTF-8 (undecodable bytes kept as surrogates); values stay raw bytes. A later
    record of the same keyword replaces an earlier one.
    """
    records: dict[str, bytes] = {}
    pos, size = 0, len(data)
    while pos < size:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise HostileLayerError(f"malformed PAX header: no record length at byte {pos}")
        length = int(digits)
        if length > max_record_bytes:
            raise HostileLayerError(
                f"PAX record of {length} bytes at byte {pos} is longer than the "
                f"{max_record_bytes}-byte limit on one record (room for a 64 KiB xattr; long "
                "records are what made tar parsers quadratic, CVE-2024-6232)"
            )
        end = pos + length
        if end <= space + 2 or end > size or data[end - 1] != 0x0A:
            raise HostileLayerError(f"malformed PAX header: bad record length at byte {pos}")
        equals = data.find(b"=", space + 1, end)
        if equals <= space + 1:
            raise HostileLayerError(f"malformed PAX header: record at byte {pos} has no keyword")
        if len(records) >= max_records:
            raise HostileLayerError(
                f"PAX header has more than {max_records} records, the limit per header"
            )
        key = data[space + 1 : equals].decode("utf-8", "surrogateescape")
        records[key] = data[equals + 1 : end - 1]
        pos = end
    return records


def _pax_number(records: Mapping[str, bytes], key: str) -> int | None:
    value = records.get(key)
    if not value:
        return None  # absent or empty: the header's field stands
    if not value.isdigit() or len(value) > 19:
        raise CorruptHeaderError(f"PAX record {key!r} is not a number: {value[:40]!r}")
    return int(value)


def pax_names(
    pax: Mapping[str, bytes], name: str, linkname: str, has_long_name: bool
) -> tuple[str, str]:
    if any(key.startswith("GNU.sparse.") for key in pax):
        raise UnpackError(f"GNU sparse files are not supported ({name!r})")
    path = pax.get("path")
    if path:
        if has_long_name:
            raise HostileLayerError(
                f"layer entry {name!r} has both a GNU long name and a PAX path; readers "
                "disagree on which one wins"
            )
        if b"\0" in path:
            raise CorruptHeaderError("PAX record 'path' contains a NUL byte")
        name = path.decode("utf-8", "surrogateescape")
    link = pax.get("linkpath")
    if link:
        if b"\0" in link:
            raise CorruptHeaderError("PAX record 'linkpath' contains a NUL byte")
        linkname = link.decode("utf-8", "surrogateescape")
    return name, linkname


def pax_size(pax: Mapping[str, bytes], name: str, size: int) -> int:
    pax_size = _pax_number(pax, "size")
    if pax_size is None:
        return size
    if size not in (0, pax_size):
        raise HostileLayerError(
            f"layer entry {name!r}: PAX size {pax_size} disagrees with the header's {size}; "
            "readers that trust one or the other see different archives"
        )
    return pax_size


def pax_owner(pax: Mapping[str, bytes], uid: int, gid: int) -> tuple[int, int]:
    pax_uid, pax_gid = _pax_number(pax, "uid"), _pax_number(pax, "gid")
    return (uid if pax_uid is None else pax_uid), (gid if pax_gid is None else pax_gid)
