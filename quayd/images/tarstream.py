"""A strict, streaming tar reader for image layers: ours, so its behaviour does not change with
the interpreter (``tarfile``'s header parser is private and changes in security updates).

What it reads, as Go's archive/tar (what Docker and containerd use) reads it:

* ustar, POSIX pax and GNU headers; old V7 headers; star's shorter prefix. Numeric fields are
  octal (padded with spaces or NULs) or GNU base-256. Every header's checksum is verified
  (unsigned, or the signed sum some old tars wrote).
* GNU long names and long link names (``L``, ``K``), whatever number of blocks they span.
* PAX extended headers (``x``, and Solaris ``X`` as ``x``): ``path``, ``linkpath``, ``size``,
  ``uid``, ``gid`` override the header; ``mtime``/``atime`` are read by the applier;
  ``SCHILY.xattr.*`` are the xattrs; an empty value keeps the header's field, as in Go. Other
  records (``uname``, ``gname``, ``ctime``, ``comment``, ``LIBARCHIVE.*``, ...) are kept but
  unused: owners are numeric ids, ctime cannot be set, and libarchive writes each xattr as a
  ``SCHILY.xattr.*`` record too.
* PAX global headers (``g``) are checked and then ignored, as Go's archive/tar and containerd
  do: they can neither rename nor decorate later entries.

What it refuses (UnpackError, HostileLayerError for what no honest tool writes), each error
naming the entry before the damage:

* a bad checksum, a malformed number or PAX record, a stream that ends anywhere before the
  end-of-archive marker (two zero blocks; a zero block followed by anything else is damage),
  an unknown entry type, GNU sparse files (``S`` or ``GNU.sparse.*`` records);
* ambiguity that readers resolve differently: two PAX headers (or two GNU long names) for one
  entry, both a GNU long name and a PAX ``path``, a PAX ``size`` that disagrees with a non-zero
  header size (how one reader sees data where another sees headers: CVE-2025-62518's shape), a
  global header inside an entry's chain;
* anything over a limit -- bytes of extended headers per entry and in all global headers, PAX
  records per header and bytes per record, entries per layer, bytes per entry -- checked from
  the header *before* any of it is read or allocated.

Data is never copied into Python objects of its own: :meth:`TarReader.copy_data` writes slices
of the decompressed chunks straight to the file descriptor, and headers are cut from those
chunks; the per-entry work is one checksum (``sum`` of 512 bytes), a few field parses and a
small dataclass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from quayd.images.errors import HostileLayerError, UnpackError
from quayd.images.paxrecords import (
    CorruptHeaderError,
    parse_pax_records,
    pax_names,
    pax_owner,
    pax_size,
)

__all__ = [
    "BLKTYPE",
    "CHRTYPE",
    "DIRTYPE",
    "FIFOTYPE",
    "LNKTYPE",
    "REGTYPE",
    "SYMTYPE",
    "ChunkSource",
    "TarHeader",
    "TarReader",
    "parse_pax_records",
]

BLOCK = 512
REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
_CONTTYPE = b"7"  # contiguous file: a regular file to everyone but its 1980s maker
_AREGTYPE = b"\0"  # pre-POSIX regular file (a directory when its name ends in '/')
_PAX_LOCAL = frozenset({b"x", b"X"})  # 'X': Solaris' name for the same header
_PAX_GLOBAL = b"g"
_LONGNAME = b"L"
_LONGLINK = b"K"
_SPARSE = b"S"
_ENTRY_TYPES = {
    REGTYPE: REGTYPE, _AREGTYPE: REGTYPE, _CONTTYPE: REGTYPE, LNKTYPE: LNKTYPE,
    SYMTYPE: SYMTYPE, CHRTYPE: CHRTYPE, BLKTYPE: BLKTYPE, DIRTYPE: DIRTYPE, FIFOTYPE: FIFOTYPE,
}  # fmt: skip
_EXTENDED_TYPES = frozenset({*_PAX_LOCAL, _PAX_GLOBAL, _LONGNAME, _LONGLINK})
_HAS_DATA = frozenset({REGTYPE})  # links, directories, devices, FIFOs: no data, whatever size says

_MAX_EXTENDED_IN_A_ROW = 8  # extended headers before one entry (honest archives use 1-3)
_ZERO_BLOCK = bytes(BLOCK)
_OCTAL = re.compile(rb"[ \0]*([0-7]*)[ \0]*")
_MAX_NUMBER = 2**63 - 1  # what Go's archive/tar can represent
_NUL_AS_SPACE = bytes.maketrans(b"\0", b" ")
_SPACES = 8 * 0x20  # the checksum field counts as spaces


@dataclass(slots=True)
class TarHeader:
    """One entry as the archive describes it, extended headers applied."""

    name: str
    type: bytes = REGTYPE
    """One of the ``*TYPE`` constants (``\\0`` and ``7`` arrive as ``REGTYPE``)."""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    """Bytes of data that follow (0 for entries that have none, whatever the header says)."""
    mtime: int = 0
    """Seconds, from the header; a PAX ``mtime`` (exact) is in ``pax``."""
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: Mapping[str, bytes] = field(default_factory=dict)
    """The entry's own PAX records, values as raw bytes."""


class ChunkSource(Protocol):
    def read(self, size: int = -1, /) -> bytes:
        """The next bytes, as many as are at hand with ``-1``; ``b""`` only at the end."""
        ...


class _TruncatedError(Exception):
    """The stream ended before the bytes asked for."""


def _number(raw: bytes, what: str) -> int:
    """A numeric header field: octal text padded with spaces/NULs, or GNU base-256."""
    if raw and raw[0] & 0x80:
        # Base-256: two's complement, the top bit marking the encoding (0x80 +, 0xff -).
        first = raw[0] & 0x7F | (0x80 if raw[0] & 0x40 else 0)
        value = int.from_bytes(bytes((first,)) + raw[1:], "big", signed=True)
        if abs(value) > _MAX_NUMBER:
            raise CorruptHeaderError(f"the {what} field is out of range")
        return value
    match = _OCTAL.fullmatch(raw)
    if match is None:
        raise CorruptHeaderError(f"the {what} field {raw!r} is not an octal number")
    digits = match.group(1)
    return int(digits, 8) if digits else 0


def _numbers(block: bytes) -> tuple[int, int, int, int, int]:
    """mode, uid, gid, size and mtime, the five numeric fields of bytes 100-148.

    Per-entry cost matters in layers of many small files: when the fields hold only octal
    digits and padding (what nearly every tar writes), one check covers all five and int()
    reads each; anything else (base-256, empty fields, damage) goes through _number.
    """
    region = block[100:148].translate(_NUL_AS_SPACE)
    if not region.translate(None, b"01234567 "):
        try:
            return (
                int(region[0:8], 8),
                int(region[8:16], 8),
                int(region[16:24], 8),
                int(region[24:36], 8),
                int(region[36:48], 8),
            )
        except ValueError:
            pass  # an empty field, or a space inside digits: _number says which, or reads 0
    return (
        _number(block[100:108], "mode"),
        _number(block[108:116], "uid"),
        _number(block[116:124], "gid"),
        _number(block[124:136], "size"),
        _number(block[136:148], "mtime"),
    )


def _cstring(raw: bytes) -> str:
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode("utf-8", "surrogateescape")


def _checksum_ok(block: bytes) -> bool:
    stored = _OCTAL.fullmatch(block[148:156])
    if stored is None or not stored.group(1):
        return False
    expected = int(stored.group(1), 8)
    unsigned = sum(block) - sum(block[148:156]) + _SPACES
    if unsigned == expected:
        return True
    # Some old tars summed signed chars: every byte >= 0x80 (outside the field) counts -256.
    outside = block[:148] + block[156:]
    high = len(outside) - len(outside.translate(None, bytes(range(0x80, 0x100))))
    return unsigned - 256 * high == expected


class TarReader:
    """Reads headers and data from the decompressed stream of one layer, strictly."""

    def __init__(
        self,
        source: ChunkSource,
        *,
        max_header_bytes: int,
        max_entries: int,
        max_entry_bytes: int,
        max_pax_records: int = 1024,
        max_pax_record_bytes: int = 90 * 1024,
    ) -> None:
        self._source = source
        self._max_header = max_header_bytes
        self._max_entries = max_entries
        self._max_entry_bytes = max_entry_bytes
        self._max_records = max_pax_records
        self._max_record_bytes = max_pax_record_bytes
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._data_left = 0  # data of the current entry not yet read
        self._padding = 0  # then this many bytes up to the next block
        self._global_bytes = 0
        self._done = False
        self.entries = 0
        self.last_name: str | None = None

    # -- reading the stream --

    def _fill(self) -> bool:
        chunk = self._source.read(-1)
        if not chunk:
            return False
        self._buf, self._view, self._pos = chunk, memoryview(chunk), 0
        return True

    def _take(self, size: int) -> bytes:
        """Exactly ``size`` bytes (``size`` already checked against the limits)."""
        end = self._pos + size
        if end <= len(self._buf):
            out = self._buf[self._pos : end]
            self._pos = end
            return out
        parts = bytearray(self._view[self._pos :])
        self._pos = len(self._buf)
        while len(parts) < size:
            if not self._fill():
                raise _TruncatedError(len(parts))
            take = min(size - len(parts), len(self._buf))
            parts += self._view[:take]
            self._pos = take
        return bytes(parts)

    def _skip(self, size: int) -> None:
        while size:
            if self._pos >= len(self._buf) and not self._fill():
                raise _TruncatedError(size)
            step = min(size, len(self._buf) - self._pos)
            self._pos += step
            size -= step

    def copy_data(self, fd: int | None) -> None:
        """Write the current entry's data to ``fd`` (or, with None, read past it)."""
        try:
            while self._data_left:
                if self._pos >= len(self._buf) and not self._fill():
                    raise _TruncatedError(self._data_left)
                end = min(len(self._buf), self._pos + self._data_left)
                if fd is not None:
                    view = self._view[self._pos : end]
                    while view:
                        view = view[os.write(fd, view) :]
                self._data_left -= end - self._pos
                self._pos = end
            self._skip(self._padding)
            self._padding = 0
        except _TruncatedError:
            raise UnpackError(
                f"layer entry {self.last_name!r}: the archive ends inside the file's data"
            ) from None

    # -- errors --

    def _where(self) -> str:
        if self.last_name is None:
            return "at the start of the layer"
        return f"after entry {self.last_name[:200]!r}"

    def _corrupt(self, detail: str) -> UnpackError:
        if self.last_name is None:
            return UnpackError(f"layer is not a tar archive (corrupt at its start): {detail}")
        return UnpackError(f"layer's tar stream is corrupt {self._where()}: {detail}")

    # -- headers --

    def next(self) -> TarHeader | None:
        """The next entry's header, or None at the end-of-archive marker.

        Data of the previous entry that nobody read is skipped first.
        """
        if self._done:
            return None
        self.copy_data(None)
        try:
            header = self._next_header()
        except _TruncatedError as e:
            if not self._buf:
                detail = "it is empty"
            elif e.args[0] == 0:
                detail = "the stream ends without the end-of-archive marker (two zero blocks)"
            else:
                detail = "the stream ends inside a header"
            raise self._corrupt(detail) from None
        except CorruptHeaderError as e:
            raise self._corrupt(str(e)) from None
        if header is None:
            self._done = True
            return None
        self.entries += 1
        if self.entries > self._max_entries:
            raise HostileLayerError(
                f"layer has more than {self._max_entries} entries, the limit per layer"
            )
        self.last_name = header.name
        return header

    def _extended(self, size: int, in_a_row: int, chain_bytes: int) -> bytes:
        """The data of an extended header, once its size is known to fit the limits."""
        if size < 0:
            raise HostileLayerError(f"negative extended header size {self._where()}")
        if in_a_row > _MAX_EXTENDED_IN_A_ROW:
            raise HostileLayerError(
                f"more than {_MAX_EXTENDED_IN_A_ROW} extended headers in a row {self._where()}"
            )
        total = max(chain_bytes, self._global_bytes)
        if total > self._max_header:
            raise HostileLayerError(
                f"extended tar headers of {total} bytes {self._where()} exceed the "
                f"{self._max_header}-byte limit on header size"
            )
        try:
            data = self._take(size)
            self._skip(-size % BLOCK)
        except _TruncatedError:
            raise CorruptHeaderError("the stream ends inside an extended header") from None
        return data

    def _next_header(self) -> TarHeader | None:
        chain = _Chain()
        while True:
            block = self._take(BLOCK)
            if block == _ZERO_BLOCK:
                self._end_marker(chain)
                return None
            if not _checksum_ok(block):
                raise CorruptHeaderError("header checksum mismatch")
            kind = block[156:157]
            if kind in _ENTRY_TYPES:
                return self._entry(block, kind, chain)
            self._extended_header(block, kind, chain)

    def _end_marker(self, chain: _Chain) -> None:
        """A zero block was read: the archive ends if the next one is zero too."""
        try:
            second = self._take(BLOCK)
        except _TruncatedError:
            raise CorruptHeaderError("the stream ends after a single zero block") from None
        if second != _ZERO_BLOCK:
            raise CorruptHeaderError("a zero block is followed by a header")
        if chain.pending:
            raise CorruptHeaderError("the archive ends right after an extended header")

    def _extended_header(self, block: bytes, kind: bytes, chain: _Chain) -> None:
        """Read a PAX, PAX global or GNU long-name header into ``chain``; refuse anything else."""
        if kind == _SPARSE:
            raise UnpackError(f"GNU sparse files are not supported ({_cstring(block[:100])!r})")
        if kind not in _EXTENDED_TYPES:
            raise UnpackError(
                f"layer entry {_cstring(block[:100])!r} {self._where()}: unsupported tar "
                f"entry type {kind!r}"
            )
        size = _number(block[124:136], "size")
        chain.in_a_row += 1
        if kind == _PAX_GLOBAL:
            if chain.pending:
                raise HostileLayerError(
                    f"a PAX global header between an entry's extended headers and the "
                    f"entry {self._where()}"
                )
            self._global_bytes += max(size, 0)
            data = self._extended(size, chain.in_a_row, size)
            self._pax(data)  # checked, then ignored: it may not rename or decorate later entries
            return
        chain.bytes += max(size, 0)
        data = self._extended(size, chain.in_a_row, chain.bytes)
        if kind in _PAX_LOCAL:
            if chain.pax is not None:
                raise HostileLayerError(f"two PAX headers for one entry {self._where()}")
            chain.pax = self._pax(data)
        elif kind == _LONGNAME:
            if chain.long_name is not None:
                raise HostileLayerError(f"two GNU long names for one entry {self._where()}")
            chain.long_name = _cstring(data)
        else:
            if chain.long_link is not None:
                raise HostileLayerError(f"two GNU long links for one entry {self._where()}")
            chain.long_link = _cstring(data)

    def _pax(self, data: bytes) -> dict[str, bytes]:
        try:
            return parse_pax_records(
                data, max_records=self._max_records, max_record_bytes=self._max_record_bytes
            )
        except HostileLayerError as e:
            raise HostileLayerError(f"{e} (in the extended header {self._where()})") from None

    def _entry(self, block: bytes, kind: bytes, chain: _Chain) -> TarHeader:
        name = _header_name(block)
        kind = DIRTYPE if kind == _AREGTYPE and name.endswith("/") else _ENTRY_TYPES[kind]
        mode, uid, gid, size, mtime = _numbers(block)
        linkname = _cstring(block[157:257]) if kind in (LNKTYPE, SYMTYPE) else ""
        if chain.long_name is not None:
            name = chain.long_name
        if chain.long_link is not None:
            linkname = chain.long_link
        records: Mapping[str, bytes] = {}
        if chain.pax is not None:
            records = chain.pax
            name, linkname = pax_names(records, name, linkname, chain.long_name is not None)
            size = pax_size(records, name, size)
            uid, gid = pax_owner(records, uid, gid)
        devmajor = devminor = 0
        if kind in (CHRTYPE, BLKTYPE):
            devmajor = _number(block[329:337], "devmajor")
            devminor = _number(block[337:345], "devminor")
        if kind in _HAS_DATA:
            self._expect_data(name, size)
        else:
            size = 0
        return TarHeader(
            name=name,
            type=kind,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            mtime=mtime,
            linkname=linkname,
            devmajor=devmajor,
            devminor=devminor,
            pax=records,
        )

    def _expect_data(self, name: str, size: int) -> None:
        if size < 0:
            raise HostileLayerError(f"layer entry {name!r}: negative size")
        if size > self._max_entry_bytes:
            raise HostileLayerError(
                f"layer entry {name!r} claims {size} bytes, more than "
                f"{self._max_entry_bytes} bytes, the limit on a layer's uncompressed size "
                "(decompression bomb?)"
            )
        self._data_left, self._padding = size, -size % BLOCK


@dataclass(slots=True)
class _Chain:
    """The extended headers read so far in front of one entry."""

    pax: dict[str, bytes] | None = None
    long_name: str | None = None
    long_link: str | None = None
    in_a_row: int = 0
    bytes: int = 0

    @property
    def pending(self) -> bool:
        """Whether headers wait for the entry they describe (global ones describe none)."""
        return self.pax is not None or self.long_name is not None or self.long_link is not None


def _header_name(block: bytes) -> str:
    """The name field, with the ustar prefix (star's shorter one too) when there is one."""
    name = block[:100]
    end = name.find(b"\0")
    if end >= 0:
        name = name[:end]
    if block[257:265] == b"ustar\x0000":
        prefix = block[345:476] if block[508:512] == b"tar\0" else block[345:500]
        end = prefix.find(b"\0")
        if end >= 0:
            prefix = prefix[:end]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")
