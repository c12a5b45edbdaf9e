"""Apply one OCI/Docker image layer, safely, into a fresh directory used as an overlayfs lowerdir.

The layer blob is streamed once: sniff the compression, inflate in bounded chunks, hash the tar
stream (the diff_id), parse it with ``tarfile`` in ``r|`` mode and apply every entry ourselves.
``tarfile``'s own extraction helpers (and its PEP 706 filters) are never used: they follow
symlinks or strip the modes, owners and xattrs a root filesystem needs (notes/oci-images.md §3).

The core promise is that nothing outside ``target`` is ever written, whatever the archive says:

* Every path is walked from a directory fd, one component at a time, with
  ``O_DIRECTORY|O_NOFOLLOW`` and ``dir_fd=``; every final operation (create, link, chown,
  chmod, utime, mknod, unlink) is fd-relative and does not follow symlinks. Metadata of files,
  FIFOs and directories is set through an fd opened with ``O_NOFOLLOW``.
* A path component that is a symlink is refused (HostileLayerError), even one pointing inside
  the layer: honest layers never put entries below a symlink (CVE-2014-6407, CVE-2014-9356,
  CVE-2025-4517). Symlinks themselves are created verbatim and never followed by us.
* ``..`` components are refused; leading ``/`` and ``./`` are dropped, so ``/etc/x`` is
  ``etc/x`` inside the layer, as Docker and containerd treat them. An entry that resolves to
  the root itself must be a directory (CVE-2021-29136); its metadata is applied to the root.
* Duplicate names: a later entry replaces an earlier one (a whole directory tree too, unless
  both are directories, in which case the directory stays and takes the later metadata) --
  containerd's rule. Replacing never follows the old entry, so a symlink followed by a file or
  directory of the same name gets a fresh inode (CVE-2021-32760, CVE-2024-12718 shapes).
* Hardlinks must name an existing regular file or FIFO of this layer; hardlinks to symlinks are
  refused.
* Character and block devices from the archive are refused; only whiteouts (char 0:0) are made.
* ``trusted.*`` xattrs from the archive are refused (overlayfs trusts ``trusted.overlay.*``);
  ``security.selinux`` is dropped. ``user.*`` xattrs on FIFOs and symlinks (which Linux cannot
  store) are skipped, as containerd does. Any other xattr failure is an error.
* Limits: uncompressed bytes, entry count, size of extended (PAX / GNU long name) headers and
  of everything tarfile reads between two entries; GNU sparse files are not supported.
  PAX records are checked before ``tarfile`` parses them, so the quadratic parsing of old
  Python versions (CVE-2024-6232) cannot be triggered. PAX global headers are ignored, as
  containerd and Go's archive/tar do.

Overlay whiteouts are converted as containerd's ``OverlayConvertWhiteout`` does (notes §2):
``.wh.NAME`` becomes a char 0:0 device owned by the header's uid/gid and ``.wh..wh..opq``
sets ``trusted.overlay.opaque=y`` on its directory; other ``.wh..wh.*`` names are ignored.

Where the time goes (single-threaded): inflating (zlib runs at a few hundred MB/s of output;
zstd is faster), sha256 of the tar stream (~1-2 GB/s, releases the GIL), ``tarfile``'s
per-member header parsing in Python (tens of µs per entry, so layers with many tiny files are
bound by it), and ~8 syscalls per file. Data is moved in 1 MiB chunks; directory fds are cached
in a small LRU keyed by path tuple (cache fds, never resolved paths). Measured on the dev VM:
a 50 MB gzip layer of mixed files applies at ~85 MB/s uncompressed (zlib alone: ~120 MB/s);
50k small files run at ~8k entries/s on tmpfs, far less on a slow disk (file creation).
The caller should ``syncfs`` once after a successful apply, before renaming the staging
directory into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import os
import re
import shutil
import stat
import tarfile
import types
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, Self, cast

import zstandard

from quayd.images.errors import HostileLayerError, UnpackError

__all__ = [
    "LayerReader",
    "UnpackLimits",
    "UnpackResult",
    "apply_layer",
    "archive_xattrs",
    "check_pax_records",
    "detect_compression",
    "entry_times_ns",
    "split_entry_name",
]

Compression = Literal["gzip", "zstd", "none"]


def _inflate_module() -> types.ModuleType:
    """igzip (ISA-L) inflates faster than zlib and releases the GIL; zlib is the fallback."""
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:  # isal is a dependency; this keeps a stripped-down install working
        return zlib


_CHUNK = 1 << 20  # decompressed output chunk and file copy size
_INFLATE: types.ModuleType = _inflate_module()

_READ_SIZE = 256 << 10  # compressed input read size (smaller than _CHUNK keeps zlib tails short)
_TAR_BUFSIZE = tarfile.RECORDSIZE  # tarfile's _Stream copies its buffer on every small read
_MAX_PATH = 4096  # PATH_MAX: longer entry names are refused
_MAX_EXTENDED_HEADERS = 8  # PAX/GNU headers in front of one entry (honest archives use 1-3)
_PAX_DIGIT_COST = 1 << 24  # sum of squared digit-run lengths a PAX header may have
_BETWEEN_ENTRIES_SLACK = 64 << 10  # tar bytes read between entries, beyond max_header_bytes
_FD_CACHE = 128  # open directory fds kept for reuse
_LOOKBACK = 8  # cached ancestors tried before walking from the root

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_META_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."

_PAX_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE})
_LONGNAME_TYPES = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})
# tarfile's private header errors (not in typeshed) that it swallows after the first entry.
_CORRUPT_HEADER: tuple[type[Exception], ...] = tuple(
    getattr(tarfile, name) for name in ("TruncatedHeaderError", "InvalidHeaderError")
)
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown


@dataclass(frozen=True)
class UnpackLimits:
    max_uncompressed_bytes: int = 16 * 1024**3
    """Decompression bomb cap on the tar stream."""
    max_entries: int = 1_000_000
    max_header_bytes: int = 1024 * 1024
    """Cap on the PAX / GNU long-name headers in front of one entry (Go's archive/tar: 1 MiB)."""


DEFAULT_LIMITS = UnpackLimits()


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str
    """``sha256:...`` of the uncompressed tar stream, hashed to EOF including trailing padding."""
    entries: int
    uncompressed_bytes: int
    compression: Compression = "none"


# --- compression ---------------------------------------------------------------------------------


def detect_compression(head: bytes) -> Compression:
    """Sniff a blob's first bytes as containerd's DetectCompression does."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18":
        return "zstd"  # a skippable frame, magic 0x184D2A5?
    return "none"


class _ZstdFrames:
    """Follows zstd frame boundaries in the compressed bytes.

    python-zstandard's streaming readers treat a stream cut off inside a frame as a clean end,
    so this notices truncation (and garbage between frames) on its own. It only reads frame and
    block headers: a few Python steps per 128 KiB block.
    """

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4
        self._field = bytearray()
        self._skip = 0
        self._checksum = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                continue
            k = min(self._need - len(self._field), n - i)
            self._field += view[i : i + k]
            i += k
            if len(self._field) == self._need:
                self._advance(bytes(self._field))
                self._field.clear()

    def _advance(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            if value == 0xFD2FB528:
                self._state, self._need = "header", 1
            elif value & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable", 4
            else:
                raise UnpackError("layer is not a valid zstd stream: no frame where one must start")
        elif self._state == "skippable":
            self._skip = value
            self._state, self._need = "magic", 4
        elif self._state == "header":
            if value & 0x08:
                raise UnpackError("layer is not a valid zstd stream: reserved frame header bit set")
            single_segment = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            window = 0 if single_segment else 1
            dict_id = (0, 1, 2, 4)[value & 0x03]
            content_size = ((1 if single_segment else 0), 2, 4, 8)[value >> 6]
            self._skip = window + dict_id + content_size
            self._state, self._need = "block", 3
        else:  # block header
            last, block_type, size = value & 1, (value >> 1) & 3, value >> 3
            if block_type == 3:
                raise UnpackError("layer is not a valid zstd stream: reserved block type")
            self._skip = 1 if block_type == 1 else size
            if last:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4

    def finish(self) -> None:
        if self._state != "magic" or self._field or self._skip:
            raise UnpackError("layer's zstd stream is truncated (it ends inside a frame)")


class _Tee:
    """The blob's first bytes (already read to sniff them), then the rest; feeds a frame tracker."""

    def __init__(self, head: bytes, stream: BinaryIO, frames: _ZstdFrames) -> None:
        self._head = head
        self._stream = stream
        self._frames = frames

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data, self._head = self._head, b""
        else:
            data = self._stream.read(size if size > 0 else _READ_SIZE)
        self._frames.feed(data)
        return data


def _gunzip(head: bytes, stream: BinaryIO) -> Iterator[bytes]:
    """Inflate (multi-member) gzip in output chunks of at most _CHUNK bytes.

    Output is bounded per call (``max_length``) so a bomb never sits in memory. Zero padding
    after a member is skipped (as Python's gzip module does); anything else is an error.
    """
    data = head
    member: Any = _INFLATE.decompressobj(31)
    try:
        while True:
            if member is not None:
                out = member.decompress(data, _CHUNK)
                data = member.unconsumed_tail
                if out:
                    yield out
                if member.eof:
                    data = member.unused_data + data
                    member = None
                elif not data and len(out) < _CHUNK:
                    data = stream.read(_READ_SIZE)
                    if not data:
                        raise UnpackError("layer's gzip stream is truncated")
                continue
            data = data.lstrip(b"\0")
            if len(data) < 2:
                more = stream.read(_READ_SIZE)
                if not more:
                    if data:
                        raise UnpackError("layer has stray bytes after its gzip stream")
                    return
                data += more
                continue
            if data[:2] != b"\x1f\x8b":
                raise UnpackError("layer has stray bytes after a gzip member")
            member = _INFLATE.decompressobj(31)
    except (zlib.error, _INFLATE.error) as e:
        raise UnpackError(f"layer is not valid gzip: {e}") from e


def _unzstd(head: bytes, stream: BinaryIO) -> Iterator[bytes]:
    frames = _ZstdFrames()
    source = _Tee(head, stream, frames)
    # The default window limit (128 MiB) bounds the decoder's memory.
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast("IO[bytes]", source), read_size=_READ_SIZE, read_across_frames=True, closefd=False
    )
    try:
        while out := reader.read(_CHUNK):
            yield out
        if source.read(_READ_SIZE):  # the decoder stopped early: whatever follows is garbage
            raise UnpackError("layer has stray bytes after its zstd stream")
        frames.finish()
    except zstandard.ZstdError as e:
        raise UnpackError(f"layer is not valid zstd: {e}") from e


def _plain(head: bytes, stream: BinaryIO) -> Iterator[bytes]:
    if head:
        yield head
    while data := stream.read(_CHUNK):
        yield data


class LayerReader:
    """The decompressed tar stream of a layer blob: sniffed, inflated, hashed and capped.

    Every decompressed byte is hashed and counted when it is produced, so bytes tarfile never
    asks for (the padding after the end-of-archive blocks) are covered once :meth:`drain` ran.
    """

    def __init__(self, stream: BinaryIO, *, max_bytes: int) -> None:
        head = b""
        while len(head) < 6 and (more := stream.read(6 - len(head))):
            head += more
        self.compression = detect_compression(head)
        if self.compression == "gzip":
            self._chunks = _gunzip(head, stream)
        elif self.compression == "zstd":
            self._chunks = _unzstd(head, stream)
        else:
            if head.startswith(b"BZh") or head.startswith(b"\xfd7zXZ\x00"):
                raise UnpackError(
                    "layer is bzip2 or xz compressed; only gzip and zstd are supported"
                )
            self._chunks = _plain(head, stream)
        self._hash = hashlib.sha256()
        self._max = max_bytes
        self._current = b""
        self._pos = 0
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (short reads are normal); ``b""`` only at the end."""
        if self._pos >= len(self._current):
            self._current = self._next_chunk()
            self._pos = 0
        start = self._pos
        end = len(self._current) if size < 0 else min(len(self._current), start + size)
        self._pos = end
        if start == 0 and end == len(self._current):
            return self._current
        return self._current[start:end]

    # The rest of tarfile's file-object protocol; "r|" only ever reads.
    def tell(self) -> int:
        return self.total - len(self._current) + self._pos

    def seek(self, _pos: int, /) -> int:
        raise UnpackError("layer streams cannot seek")

    def write(self, _data: bytes, /) -> int:
        raise UnpackError("layer streams are read-only")

    def close(self) -> None:
        pass

    def drain(self) -> None:
        """Consume the rest of the stream (hashing it, and checking the compression's end)."""
        self._current, self._pos = b"", 0
        while self._next_chunk():
            pass

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def _next_chunk(self) -> bytes:
        chunk = next(self._chunks, b"")
        if chunk:
            self.total += len(chunk)
            if self.total > self._max:
                raise HostileLayerError(
                    f"layer inflates to more than {self._max} bytes, the limit on a layer's "
                    "uncompressed size (decompression bomb?)"
                )
            self._hash.update(chunk)
        return chunk


# --- pure helpers on tar headers -----------------------------------------------------------------


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


def archive_xattrs(pax_headers: Mapping[str, str], entry: str) -> list[tuple[str, bytes]]:
    """The xattrs an entry carries (PAX ``SCHILY.xattr.*``), minus ``security.selinux``.

    ``trusted.*`` is refused: overlayfs reads ``trusted.overlay.*`` as its own metadata.
    Values are raw bytes (tarfile decodes them with surrogateescape; this undoes it).
    """
    found: list[tuple[str, bytes]] = []
    for key, value in pax_headers.items():
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
        found.append((name, value.encode("utf-8", "surrogateescape")))
    return found


_PAX_TIME = re.compile(r"(-?)(\d{1,20})(?:\.(\d{0,30}))?")


def _pax_time_ns(text: str | None) -> int | None:
    if text is None:
        return None
    match = _PAX_TIME.fullmatch(text)
    if not match:
        return None
    sign, seconds, fraction = match.groups()
    ns = int(seconds) * 1_000_000_000 + int((fraction or "").ljust(9, "0")[:9])
    return -ns if sign else ns


def entry_times_ns(info: tarfile.TarInfo) -> tuple[int, int]:
    """``(atime_ns, mtime_ns)`` of an entry: PAX times exactly when present, else the header's.

    atime defaults to mtime (the header has no atime).
    """
    mtime = _pax_time_ns(info.pax_headers.get("mtime"))
    if mtime is None:
        mtime = round(info.mtime * 1_000_000_000)
    atime = _pax_time_ns(info.pax_headers.get("atime"))
    return (mtime if atime is None else atime), mtime


_DIGITS = re.compile(rb"[0-9]+")


def check_pax_records(records: bytes) -> None:
    """Refuse a PAX extended header that is malformed or would make tarfile's parser quadratic.

    Records are ``"%d %s=%s\\n"`` and must exactly fill the header. Long runs of digits are
    refused: Python < 3.11.10 scans PAX headers with a backtracking regex (CVE-2024-6232).
    """
    pos, size = 0, len(records)
    while pos < size:
        space = records.find(b" ", pos, pos + 21)
        digits = records[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise HostileLayerError(f"malformed PAX header: no record length at byte {pos}")
        end = pos + int(digits)
        if end <= space + 2 or end > size or records[end - 1 : end] != b"\n":
            raise HostileLayerError(f"malformed PAX header: bad record length at byte {pos}")
        if records.find(b"=", space + 2, end) < 0:
            raise HostileLayerError(f"malformed PAX header: record at byte {pos} has no '='")
        pos = end
    cost = sum(len(run) ** 2 for run in _DIGITS.findall(records))
    if cost > _PAX_DIGIT_COST:
        raise HostileLayerError(
            "PAX header has runs of digits long enough to make tar parsing quadratic "
            "(CVE-2024-6232 shape)"
        )


# --- tarfile guard -------------------------------------------------------------------------------


class _TarGuard:
    """Limits enforced while ``tarfile`` parses headers, before it allocates or loops on them."""

    def __init__(self, limits: UnpackLimits) -> None:
        self._max_header = limits.max_header_bytes
        self._chain = 0
        self._chain_bytes = 0
        self._global_bytes = 0
        self.pending_pax: tuple[int, bool] | None = None
        self.budget: int | None = None
        self.last_entry: str | None = None
        self.corrupt: str | None = None

    def where(self) -> str:
        if self.last_entry is None:
            return "at the start of the layer"
        return f"after entry {self.last_entry[:200]!r}"

    def between_entries(self) -> None:
        """tarfile is about to read the headers of the next entry: cap what it may read."""
        self.budget = self._max_header + _BETWEEN_ENTRIES_SLACK

    def in_entry(self) -> None:
        self.budget = None

    def on_header(self, info: tarfile.TarInfo) -> None:
        """Called for every 512-byte header block, before tarfile reads what it announces."""
        if info.type in _PAX_TYPES or info.type in _LONGNAME_TYPES:
            if info.size < 0:
                raise HostileLayerError(f"negative extended header size {self.where()}")
            self._chain += 1
            self._chain_bytes += info.size
            if info.type == tarfile.XGLTYPE:
                self._global_bytes += info.size
            if self._chain > _MAX_EXTENDED_HEADERS:
                raise HostileLayerError(
                    f"more than {_MAX_EXTENDED_HEADERS} extended headers in a row {self.where()}"
                )
            if max(self._chain_bytes, self._global_bytes) > self._max_header:
                raise HostileLayerError(
                    f"extended tar headers of {max(self._chain_bytes, self._global_bytes)} bytes "
                    f"{self.where()} exceed the {self._max_header}-byte limit on header size"
                )
            if info.type in _PAX_TYPES:
                self.pending_pax = (info.size, info.type == tarfile.XGLTYPE)
        elif info.type == tarfile.GNUTYPE_SPARSE:
            raise UnpackError(f"GNU sparse files are not supported ({info.name!r})")
        else:
            self._chain = self._chain_bytes = 0

    def on_read(self, data: bytes) -> bytes:
        if self.pending_pax is not None:
            size, is_global = self.pending_pax
            self.pending_pax = None
            if len(data) < size:
                raise UnpackError(f"layer's tar stream ends inside a PAX header {self.where()}")
            check_pax_records(data[:size])
            if is_global:
                # Ignored, as containerd and Go's archive/tar do: tarfile sees no records.
                data = bytes(len(data))
            elif any(data[size:]):
                data = data[:size] + bytes(len(data) - size)  # parse exactly `size` bytes
        self.spend(len(data))
        return data

    def spend(self, count: int) -> None:
        if self.budget is not None:
            self.budget -= count
            if self.budget < 0:
                raise HostileLayerError(
                    f"tar headers {self.where()} exceed the {self._max_header}-byte limit "
                    "on header size"
                )


class _GuardedStream:
    """Stands in for tarfile's internal stream so header reads pass through a _TarGuard."""

    def __init__(self, raw: tarfile._Fileobj, guard: _TarGuard) -> None:
        self._raw = raw
        self._guard = guard

    def read(self, size: int, /) -> bytes:
        return self._guard.on_read(self._raw.read(size))

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, pos: int, /) -> int:
        skip = pos - self._raw.tell()
        if skip > 0:
            self._guard.spend(skip)
        self._raw.seek(pos)
        return self._raw.tell()

    def write(self, _data: bytes, /) -> int:
        raise UnpackError("layer streams are read-only")

    def close(self) -> None:
        self._raw.close()


def _guarded_tarinfo(guard: _TarGuard) -> type[tarfile.TarInfo]:
    class GuardedTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tarfile: tarfile.TarFile) -> Self:
            raw = tarfile.fileobj
            if raw is not None and not isinstance(raw, _GuardedStream):
                tarfile.fileobj = _GuardedStream(raw, guard)
            return super().fromtarfile(tarfile)

        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            try:
                info = super().frombuf(buf, encoding, errors)
            except _CORRUPT_HEADER as e:
                # tarfile ends the archive quietly here; Go's archive/tar (and we) call it corrupt
                guard.corrupt = str(e)
                raise
            guard.on_header(info)
            return info

    return GuardedTarInfo


# --- applying entries ----------------------------------------------------------------------------


class _PathError(Exception):
    def __init__(self, parts: tuple[str, ...]) -> None:
        super().__init__("/".join(parts))
        self.parts = parts


class _MissingError(_PathError):
    pass


class _NotADirectoryError(_PathError):
    pass


class _SymlinkInPathError(_PathError):
    pass


@dataclass(frozen=True)
class _DirAttrs:
    uid: int
    gid: int
    mode: int
    atime_ns: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]


def _read_dir_attrs(fd: int) -> _DirAttrs:
    st = os.fstat(fd)
    xattrs = tuple(
        (name, os.getxattr(fd, name))
        for name in os.listxattr(fd)
        if not name.startswith("trusted.overlay.") and name != "security.selinux"
    )
    return _DirAttrs(
        st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns, xattrs
    )


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, _OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _lower_dir(root: int, parts: tuple[str, ...]) -> _DirAttrs | Literal["absent", "hidden"]:
    """What an (already unpacked, read-only) lower layer says about directory ``parts``.

    ``absent``: look further down. ``hidden``: the merged view has no such directory below
    this layer (a whiteout, a non-directory, a symlink -- not followed -- or an opaque parent).
    """
    cur, owned, opaque_above = root, False, False
    try:
        for i, name in enumerate(parts):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=cur)
            except FileNotFoundError:
                return "hidden" if opaque_above else "absent"
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    return "hidden"
                raise
            if owned:
                os.close(cur)
            cur, owned = child, True
            if i < len(parts) - 1 and _is_opaque(cur):
                opaque_above = True
        return _read_dir_attrs(cur)
    finally:
        if owned:
            os.close(cur)


def _owner(info: tarfile.TarInfo, entry: str) -> tuple[int, int]:
    for value in (info.uid, info.gid):
        if not 0 <= value <= _MAX_ID:
            raise HostileLayerError(f"layer entry {entry!r}: owner id {value} is out of range")
    return info.uid, info.gid


class _Applier:
    """Applies entries into ``target``; every path is resolved from directory fds."""

    def __init__(self, target: Path, parents: Sequence[Path]) -> None:
        self._root = os.open(target, _DIR_FLAGS)
        self._parents: list[int] = []
        self._fds: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._retired: list[int] = []
        self._times: dict[tuple[str, ...], tuple[int, int]] = {}
        self._opaque: set[tuple[str, ...]] = set()
        self._whiteouts: dict[tuple[str, ...], list[str]] = {}
        self._no_lower: set[tuple[str, ...]] = set()
        try:
            if os.listdir(self._root):
                raise UnpackError(f"cannot unpack a layer into {target}: it is not empty")
            for parent in parents:
                self._parents.append(os.open(parent, _DIR_FLAGS))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._close_retired()
        for fd in [*self._fds.values(), *self._parents, self._root]:
            os.close(fd)
        self._fds.clear()
        self._parents.clear()

    # -- directory fds --

    def _close_retired(self) -> None:
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def _remember(self, parts: tuple[str, ...], fd: int) -> None:
        self._fds[parts] = fd
        if len(self._fds) > _FD_CACHE:
            # Closed at the start of the next entry: fds handed out for this one stay valid.
            self._retired.append(self._fds.popitem(last=False)[1])

    def _forget(self, prefix: tuple[str, ...]) -> None:
        for key in [k for k in self._fds if k[: len(prefix)] == prefix]:
            self._retired.append(self._fds.pop(key))

    def _dir(self, parts: tuple[str, ...], *, create: bool) -> int:
        """An fd of directory ``parts``, walked component by component without following.

        The fd and those of its nearest ancestors are cached; higher levels of a deep walk are
        closed as soon as the next level is open, so no path can exhaust the fd limit.
        """
        if not parts:
            return self._root
        fd = self._fds.get(parts)
        if fd is not None:
            self._fds.move_to_end(parts)
            return fd
        start, cur = 0, self._root
        for n in range(len(parts) - 1, max(0, len(parts) - _LOOKBACK), -1):
            hit = self._fds.get(parts[:n])
            if hit is not None:
                start, cur = n, hit
                break
        transient: int | None = None
        try:
            for n in range(start + 1, len(parts) + 1):
                cur = self._open_dir(cur, parts[:n], create=create)
                if transient is not None:
                    os.close(transient)
                    transient = None
                if n > len(parts) - _LOOKBACK:
                    self._remember(parts[:n], cur)
                else:
                    transient = cur
        except BaseException:
            if transient is not None:
                os.close(transient)
            raise
        return cur

    def _open_dir(self, parent: int, parts: tuple[str, ...], *, create: bool) -> int:
        """Open (or, with ``create``, make as an implied directory) one level below ``parent``."""
        name = parts[-1]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise _MissingError(parts) from None
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise _SymlinkInPathError(parts) from None
            raise _NotADirectoryError(parts) from None
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            self._new_dir(parts)
            self._set_dir_attrs(fd, parts, self._implied_attrs(parts))
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- directory bookkeeping --

    def _new_dir(self, parts: tuple[str, ...]) -> None:
        """A directory was (re)created at ``parts``: forget what was known of an earlier one."""
        self._opaque.discard(parts)
        self._whiteouts.pop(parts, None)
        self._times.pop(parts, None)

    def _implied_attrs(self, parts: tuple[str, ...]) -> _DirAttrs | None:
        """Attributes of the top-most lower layer's directory at ``parts`` (containerd mkparent)."""
        if not self._parents or parts[:-1] in self._no_lower:
            self._no_lower.add(parts)  # no lower layer has the parent, so none has this one
            return None
        for root in self._parents:
            found = _lower_dir(root, parts)
            if found == "hidden":
                break
            if found != "absent":
                return found
        self._no_lower.add(parts)
        return None

    def _set_dir_attrs(self, fd: int, parts: tuple[str, ...], attrs: _DirAttrs | None) -> None:
        if attrs is None:  # no lower layer has it: root-owned 0755, mtime "now"
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o755)
            return
        os.fchown(fd, attrs.uid, attrs.gid)
        for name, value in attrs.xattrs:
            os.setxattr(fd, name, value)
        os.fchmod(fd, attrs.mode)
        self._times[parts] = (attrs.atime_ns, attrs.mtime_ns)

    def prepare_root(self) -> None:
        """The root takes its attributes from the top-most parent, unless the layer lists ``./``."""
        self._set_dir_attrs(
            self._root, (), _read_dir_attrs(self._parents[0]) if self._parents else None
        )

    def finish(self) -> None:
        """Set directory times last: creating entries inside a directory changes its mtime."""
        for parts in sorted(self._times):
            self._close_retired()
            try:
                fd = self._dir(parts, create=False)
            except _PathError:  # replaced by a non-directory later in the layer
                continue
            os.utime(fd, ns=self._times[parts])

    # -- replacing --

    def _clear(self, parent: int, parts: tuple[str, ...], *, keep_dir: bool) -> bool:
        """Remove the entry at ``parts`` (never following it); True if it is a directory kept."""
        name = parts[-1]
        if name in ("", ".", "..") or "/" in name:  # split_entry_name makes this impossible
            raise HostileLayerError(f"refusing to remove {name!r}")
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._forget(parts)
            shutil.rmtree(name, dir_fd=parent)  # the fd-based, symlink-safe implementation
        else:
            os.unlink(name, dir_fd=parent)
        return False

    # -- metadata --

    def _setxattr(
        self, target: int | str, name: str, value: bytes, entry: str, *, special: bool
    ) -> None:
        try:
            os.setxattr(target, name, value, follow_symlinks=isinstance(target, int))
        except OSError as e:
            if e.errno == errno.EPERM and special and name.startswith("user."):
                return  # Linux keeps user.* only on regular files and directories
            raise UnpackError(f"layer entry {entry!r}: cannot set xattr {name!r}: {e}") from e

    def _meta(
        self,
        fd: int,
        info: tarfile.TarInfo,
        xattrs: list[tuple[str, bytes]],
        entry: str,
        *,
        special: bool = False,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """Owner, then xattrs (chown drops security.capability), then mode (chown drops setuid).

        ``owner`` is the current one, if known: chown is skipped when it would not change it,
        because on Linux any chown of a non-directory drops its capabilities -- a hardlink
        entry must not strip those its first name got.
        """
        uid, gid = _owner(info, entry)
        if owner != (uid, gid):
            os.fchown(fd, uid, gid)
        for name, value in xattrs:
            self._setxattr(fd, name, value, entry, special=special)
        os.fchmod(fd, info.mode & 0o7777)

    # -- entries --

    def apply(self, archive: tarfile.TarFile, info: tarfile.TarInfo) -> bool:
        """Apply one entry; True if its file data was read from the archive."""
        self._close_retired()
        entry = info.name
        parts = split_entry_name(entry)
        try:
            return self._dispatch(archive, info, entry, parts)
        except _SymlinkInPathError as e:
            raise HostileLayerError(
                f"layer entry {entry!r}: path component {str(e)!r} is a symlink; refusing to "
                "walk through it (CVE-2014-6407 class write-through-symlink)"
            ) from None
        except _NotADirectoryError as e:
            raise UnpackError(
                f"layer entry {entry!r}: path component {str(e)!r} is not a directory"
            ) from None
        except _MissingError as e:
            raise UnpackError(f"layer entry {entry!r}: {str(e)!r} does not exist") from None

    def _dispatch(
        self, archive: tarfile.TarFile, info: tarfile.TarInfo, entry: str, parts: tuple[str, ...]
    ) -> bool:
        if parts and parts[-1].startswith(_WHITEOUT_PREFIX):
            self._whiteout(info, entry, parts)
            return False
        if not parts:
            if not info.isdir():
                raise HostileLayerError(
                    f"layer entry {entry!r} resolves to the layer root but is not a directory; "
                    "refusing to replace the root (CVE-2021-29136)"
                )
            self._meta(self._root, info, archive_xattrs(info.pax_headers, entry), entry)
            self._times[()] = entry_times_ns(info)
            return False
        if info.issparse():
            raise UnpackError(f"layer entry {entry!r}: sparse files are not supported")
        if info.isdir():
            self._mkdir(info, entry, parts)
        elif info.isreg():
            self._file(archive, info, entry, parts)
            return True
        elif info.issym():
            self._symlink(info, entry, parts)
        elif info.islnk():
            self._hardlink(info, entry, parts)
        elif info.isfifo():
            self._fifo(info, entry, parts)
        elif info.ischr() or info.isblk():
            kind = "character" if info.ischr() else "block"
            raise HostileLayerError(
                f"layer entry {entry!r} is a {kind} device {info.devmajor}:{info.devminor}; "
                "device nodes from images are refused"
            )
        else:
            raise UnpackError(f"layer entry {entry!r}: unsupported tar entry type {info.type!r}")
        return False

    def _mkdir(self, info: tarfile.TarInfo, entry: str, parts: tuple[str, ...]) -> None:
        xattrs = archive_xattrs(info.pax_headers, entry)
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            if not self._clear(parent, parts, keep_dir=True):
                os.mkdir(name, 0o700, dir_fd=parent)
                self._new_dir(parts)
        else:
            self._new_dir(parts)
        fd = self._dir(parts, create=False)
        self._meta(fd, info, xattrs, entry)
        self._times[parts] = entry_times_ns(info)

    def _file(
        self, archive: tarfile.TarFile, info: tarfile.TarInfo, entry: str, parts: tuple[str, ...]
    ) -> None:
        xattrs = archive_xattrs(info.pax_headers, entry)
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, parts, keep_dir=False)
            fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            _copy_data(archive, info, fd, entry)
            self._meta(fd, info, xattrs, entry)
            os.utime(fd, ns=entry_times_ns(info))
        finally:
            os.close(fd)

    def _symlink(self, info: tarfile.TarInfo, entry: str, parts: tuple[str, ...]) -> None:
        xattrs = archive_xattrs(info.pax_headers, entry)
        uid, gid = _owner(info, entry)
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            os.symlink(info.linkname, name, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, parts, keep_dir=False)
            os.symlink(info.linkname, name, dir_fd=parent)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        # os.setxattr has no dir_fd: go through the parent's fd (lsetxattr on the last component).
        for xname, value in xattrs:
            self._setxattr(f"/proc/self/fd/{parent}/{name}", xname, value, entry, special=True)
        os.utime(name, ns=entry_times_ns(info), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, info: tarfile.TarInfo, entry: str, parts: tuple[str, ...]) -> None:
        xattrs = archive_xattrs(info.pax_headers, entry)
        link = info.linkname
        source = split_entry_name(link)
        if not source:
            raise HostileLayerError(f"layer entry {entry!r}: hardlink to the layer root")
        try:
            source_dir = self._dir(source[:-1], create=False)
            st = os.stat(source[-1], dir_fd=source_dir, follow_symlinks=False)
        except (_MissingError, FileNotFoundError):
            raise UnpackError(
                f"layer entry {entry!r}: hardlink target {link!r} is not in this layer"
            ) from None
        except _SymlinkInPathError as e:
            raise HostileLayerError(
                f"layer entry {entry!r}: hardlink target {link!r} goes through the symlink "
                f"{str(e)!r}; refusing to follow it"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            raise HostileLayerError(
                f"layer entry {entry!r}: hardlink to the symlink {link!r}; refused, as metadata "
                "applied to it would follow the symlink (CVE-2021-32760)"
            )
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise UnpackError(
                f"layer entry {entry!r}: hardlink target {link!r} is not a regular file or FIFO"
            )
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        if source != parts:
            try:
                os.link(
                    source[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent,
                    follow_symlinks=False,
                )  # fmt: skip
            except FileExistsError:
                self._clear(parent, parts, keep_dir=False)
                os.link(
                    source[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent,
                    follow_symlinks=False,
                )  # fmt: skip
        self._meta_by_name(parent, name, info, xattrs, entry)

    def _fifo(self, info: tarfile.TarInfo, entry: str, parts: tuple[str, ...]) -> None:
        xattrs = archive_xattrs(info.pax_headers, entry)
        parent = self._dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            os.mkfifo(name, 0o600, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, parts, keep_dir=False)
            os.mkfifo(name, 0o600, dir_fd=parent)
        self._meta_by_name(parent, name, info, xattrs, entry)

    def _meta_by_name(
        self,
        parent: int,
        name: str,
        info: tarfile.TarInfo,
        xattrs: list[tuple[str, bytes]],
        entry: str,
    ) -> None:
        """Metadata of a FIFO or (hardlinked) regular file, through an O_NOFOLLOW fd."""
        fd = os.open(name, _META_FLAGS, dir_fd=parent)
        try:
            st = os.fstat(fd)
            special = not stat.S_ISREG(st.st_mode)
            self._meta(fd, info, xattrs, entry, special=special, owner=(st.st_uid, st.st_gid))
            os.utime(fd, ns=entry_times_ns(info))
        finally:
            os.close(fd)

    def _whiteout(self, info: tarfile.TarInfo, entry: str, parts: tuple[str, ...]) -> None:
        base, dir_parts = parts[-1], parts[:-1]
        if base == _OPAQUE_MARKER:
            try:
                fd = self._dir(dir_parts, create=True)
            except _NotADirectoryError:
                raise UnpackError(
                    f"layer entry {entry!r}: opaque marker inside a non-directory"
                ) from None
            os.setxattr(fd, _OPAQUE_XATTR, b"y")
            self._opaque.add(dir_parts)
            # Whiteouts made earlier in this directory hide nothing now; drop them.
            for name in self._whiteouts.pop(dir_parts, []):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    os.unlink(name, dir_fd=fd)
            return
        if base.startswith(_WHITEOUT_PREFIX * 2):
            return  # other .wh..wh.* names are aufs bookkeeping: ignored
        name = base[len(_WHITEOUT_PREFIX) :]
        if not name:
            raise UnpackError(f"layer entry {entry!r}: whiteout without a name ('.wh.')")
        if name in (".", ".."):
            raise HostileLayerError(f"layer entry {entry!r}: whiteout of {name!r}")
        uid, gid = _owner(info, entry)
        try:
            parent = self._dir(dir_parts, create=True)
        except _NotADirectoryError:
            return  # below a whiteout or file of this layer: nothing down there to hide
        if self._opaque and any(dir_parts[:n] in self._opaque for n in range(len(dir_parts) + 1)):
            return  # an opaque directory of this layer already hides everything below
        device = stat.S_IFCHR
        try:
            os.mknod(name, device, os.makedev(0, 0), dir_fd=parent)
        except FileExistsError:
            self._clear(parent, (*dir_parts, name), keep_dir=False)
            os.mknod(name, device, os.makedev(0, 0), dir_fd=parent)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        self._whiteouts.setdefault(dir_parts, []).append(name)


def _copy_data(archive: tarfile.TarFile, info: tarfile.TarInfo, fd: int | None, entry: str) -> None:
    """Copy (or with ``fd=None`` skip) an entry's data, exactly ``info.size`` bytes.

    Reads tarfile's stream directly (sparse files are refused, so the data is contiguous and
    starts right after the headers); an ExFileObject per file would cost more than the copy.
    """
    if info.size < 0:
        raise HostileLayerError(f"layer entry {entry!r}: negative size")
    source = archive.fileobj
    if source is None or source.tell() != info.offset_data:
        raise UnpackError(f"layer entry {entry!r}: tar stream is not at the entry's data")
    remaining = info.size
    while remaining:
        chunk = source.read(min(_CHUNK, remaining))
        if not chunk:
            raise UnpackError(f"layer entry {entry!r}: the archive ends inside the file's data")
        remaining -= len(chunk)
        if fd is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]


# --- entry point ---------------------------------------------------------------------------------


def apply_layer(
    stream: BinaryIO,
    target: Path,
    *,
    parents: Sequence[Path] = (),
    limits: UnpackLimits = UnpackLimits(),
) -> UnpackResult:
    """Apply the layer blob read from ``stream`` into the empty directory ``target``.

    ``parents`` are the unpacked lower layers, top-most first; they are only read, to give
    directories this layer implies (but does not list) the attributes the merged view has.
    On any error UnpackError (HostileLayerError for archives no honest tool makes) is raised
    and ``target`` must be discarded. The caller checks the returned diff_id against the
    image config and caps the compressed bytes at the descriptor size.
    """
    reader = LayerReader(stream, max_bytes=limits.max_uncompressed_bytes)
    guard = _TarGuard(limits)
    try:
        applier = _Applier(target, parents)
    except OSError as e:
        raise UnpackError(f"cannot unpack a layer into {target}: {e}") from e
    with contextlib.closing(applier):
        try:
            applier.prepare_root()
        except OSError as e:
            raise UnpackError(f"cannot set the attributes of {target}: {e}") from e
        guard.between_entries()
        with _open_tar(reader, guard) as archive:
            entries = _apply_entries(archive, applier, guard, limits)
        reader.drain()  # hash the padding after the end-of-archive blocks too
        try:
            applier.finish()
        except OSError as e:
            raise UnpackError(f"setting directory times: {e}") from e
    return UnpackResult(
        diff_id=reader.diff_id,
        entries=entries,
        uncompressed_bytes=reader.total,
        compression=reader.compression,
    )


def _apply_entries(
    archive: tarfile.TarFile, applier: _Applier, guard: _TarGuard, limits: UnpackLimits
) -> int:
    entries = 0
    while True:
        guard.between_entries()
        try:
            info = archive.next()
        except tarfile.TarError as e:
            raise UnpackError(f"layer's tar stream is corrupt {guard.where()}: {e}") from e
        guard.in_entry()
        archive.members.clear()  # type: ignore[attr-defined]  # else it grows without bound
        if info is None:
            if guard.corrupt is not None:
                raise UnpackError(f"layer's tar stream is corrupt {guard.where()}: {guard.corrupt}")
            return entries
        entries += 1
        if entries > limits.max_entries:
            raise HostileLayerError(
                f"layer has more than {limits.max_entries} entries, the limit per layer"
            )
        guard.last_entry = info.name
        try:
            if not applier.apply(archive, info) and info.isreg():
                _copy_data(archive, info, None, info.name)  # skip data nobody wrote out
        except (OSError, ValueError, OverflowError, tarfile.TarError) as e:
            raise UnpackError(f"layer entry {info.name!r}: {e}") from e


def _open_tar(reader: LayerReader, guard: _TarGuard) -> tarfile.TarFile:
    try:
        return tarfile.open(
            fileobj=reader,
            mode="r|",
            bufsize=_TAR_BUFSIZE,
            tarinfo=_guarded_tarinfo(guard),
            encoding="utf-8",
            errors="surrogateescape",
        )
    except tarfile.TarError as e:
        raise UnpackError(f"layer is not a tar archive: {e}") from e
