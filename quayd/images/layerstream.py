"""The decompressed tar stream of a layer blob: compression sniffed, inflated, hashed and capped.

gzip (multi-member, through ISA-L when it is installed) and zstd (with its frame boundaries
followed, since python-zstandard treats a cut-off frame as a clean end) are inflated in bounded
chunks, so a decompression bomb never sits in memory; every byte produced is counted against
the uncompressed-size cap and hashed (the diff_id) when it is produced.
"""

from __future__ import annotations

import hashlib
import importlib
import queue
import threading
import types
import weakref
import zlib
from collections.abc import Iterator
from typing import IO, Any, BinaryIO, Literal, cast

import zstandard

from quayd.images.errors import HostileLayerError, UnpackError

__all__ = ["CHUNK", "Compression", "LayerReader", "detect_compression"]

Compression = Literal["gzip", "zstd", "none"]


def _inflate_module() -> types.ModuleType:
    """igzip (ISA-L) inflates faster than zlib and releases the GIL; zlib is the fallback."""
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:  # isal is a dependency; this keeps a stripped-down install working
        return zlib


CHUNK = 1 << 20
"""Most bytes one decompressed chunk holds (and so the most the tar reader writes at once)."""
_INFLATE: types.ModuleType = _inflate_module()
_READ_SIZE = 256 << 10  # compressed input read size (smaller than CHUNK keeps zlib tails short)
_HASH_BACKLOG = 8  # decompressed chunks waiting to be hashed


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
    """Inflate (multi-member) gzip in output chunks of at most CHUNK bytes.

    Output is bounded per call (``max_length``) so a bomb never sits in memory. Zero padding
    after a member is skipped (as Python's gzip module does); anything else is an error.
    """
    data = head
    member: Any = _INFLATE.decompressobj(31)
    try:
        while True:
            if member is not None:
                out = member.decompress(data, CHUNK)
                data = member.unconsumed_tail
                if out:
                    yield out
                if member.eof:
                    data = member.unused_data + data
                    member = None
                elif not data and len(out) < CHUNK:
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
        while out := reader.read(CHUNK):
            yield out
        if source.read(_READ_SIZE):  # the decoder stopped early: whatever follows is garbage
            raise UnpackError("layer has stray bytes after its zstd stream")
        frames.finish()
    except zstandard.ZstdError as e:
        raise UnpackError(f"layer is not valid zstd: {e}") from e


def _plain(head: bytes, stream: BinaryIO) -> Iterator[bytes]:
    if head:
        yield head
    while data := stream.read(CHUNK):
        yield data


class _Hasher:
    """sha256 of the chunks, computed in a thread of its own, in order.

    hashlib releases the GIL on large updates, so hashing runs beside inflating and writing
    instead of after them. At most ``_HASH_BACKLOG`` chunks wait; the thread ends when the
    reader is closed or collected.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_HASH_BACKLOG)
        # The thread holds the queue and the hash, never self: collecting self can stop it.
        worker = threading.Thread(
            target=_hash_chunks, args=(self._sha, self._queue), name="layer-sha256", daemon=True
        )
        worker.start()
        self._stop = weakref.finalize(self, self._queue.put, None)

    def update(self, chunk: bytes) -> None:
        if not self._stop.alive:
            raise UnpackError("layer stream read after it was closed")
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.join()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._stop()


def _hash_chunks(sha: Any, chunks: queue.Queue[bytes | None]) -> None:
    while (chunk := chunks.get()) is not None:
        sha.update(chunk)
        chunks.task_done()
    chunks.task_done()


class LayerReader:
    """The decompressed tar stream of a layer blob: sniffed, inflated, hashed and capped.

    Every decompressed byte is hashed and counted when it is produced, so bytes the tar reader
    never asks for (the padding after the end-of-archive blocks) are covered once :meth:`drain`
    ran. ``read(-1)`` hands out the rest of the current chunk without copying it.
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
        self._hash = _Hasher()
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

    def drain(self) -> None:
        """Consume the rest of the stream (hashing it, and checking the compression's end)."""
        self._current, self._pos = b"", 0
        while self._next_chunk():
            pass

    def close(self) -> None:
        """End the hashing thread (it also ends when the reader is garbage collected)."""
        self._hash.close()

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
