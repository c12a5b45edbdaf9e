"""Layer unpacking without a filesystem: sniffing, inflating, names, xattrs, times, PAX records."""

from __future__ import annotations

import gc
import gzip
import hashlib
import io
import struct
import tarfile
import threading
import time
import zlib

import pytest
import zstandard

from quayd.images.errors import HostileLayerError, UnpackError
from quayd.images.tarstream import TarHeader, TarReader
from quayd.images.unpack import (
    LayerReader,
    archive_xattrs,
    detect_compression,
    entry_times_ns,
    parse_pax_records,
    split_entry_name,
)

BIG = 64 << 20


def skippable(payload: bytes, nibble: int = 0) -> bytes:
    return struct.pack("<II", 0x184D2A50 | nibble, len(payload)) + payload


def read_all(blob: bytes, *, max_bytes: int = BIG, size: int = 10240) -> tuple[bytes, LayerReader]:
    reader = LayerReader(io.BytesIO(blob), max_bytes=max_bytes)
    parts = []
    while chunk := reader.read(size):
        assert len(chunk) <= size
        parts.append(chunk)
    return b"".join(parts), reader


# --- detect_compression --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1f\x8b\x08\x00", "gzip"),
        (b"\x1f\x8b", "gzip"),
        (b"\x28\xb5\x2f\xfd\x00", "zstd"),
        (struct.pack("<I", 0x184D2A50), "zstd"),
        (struct.pack("<I", 0x184D2A5F), "zstd"),
        (struct.pack("<I", 0x184D2A60), "none"),
        (b"\x28\xb5\x2f", "none"),  # too short to be zstd
        (b"etc/passwd\x00\x00", "none"),  # a tar header
        (b"BZh91AY", "none"),
        (b"", "none"),
        (b"\x1f", "none"),
    ],
)
def test_detect_compression(head: bytes, expected: str) -> None:
    assert detect_compression(head) == expected


def test_detect_compression_on_real_blobs() -> None:
    assert detect_compression(gzip.compress(b"x")[:8]) == "gzip"
    assert detect_compression(zstandard.ZstdCompressor().compress(b"x")[:8]) == "zstd"


# --- LayerReader ---------------------------------------------------------------------------------

PAYLOAD = b"".join(b"line %d of the layer\n" % i for i in range(200_000))


def test_plain_stream_is_passed_through_and_hashed() -> None:
    data, reader = read_all(PAYLOAD)
    assert data == PAYLOAD
    assert reader.compression == "none"
    assert reader.diff_id == "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    assert reader.total == len(PAYLOAD)


def test_gzip_single_and_multi_member_with_zero_padding() -> None:
    half = len(PAYLOAD) // 2
    blob = gzip.compress(PAYLOAD[:half]) + gzip.compress(PAYLOAD[half:]) + b"\0" * 700
    data, reader = read_all(blob)
    assert data == PAYLOAD
    assert reader.compression == "gzip"
    assert reader.diff_id == "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def test_gzip_member_boundary_split_across_reads() -> None:
    class Dribble(io.RawIOBase):
        """Hands out 3 bytes per read, like a slow network stream."""

        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self._data.read(min(3, size) if size > 0 else 3)

    blob = gzip.compress(b"a" * 100) + gzip.compress(b"b" * 100)
    reader = LayerReader(Dribble(blob), max_bytes=BIG)  # type: ignore[arg-type]
    out = b""
    while chunk := reader.read(7):
        out += chunk
    assert out == b"a" * 100 + b"b" * 100


def test_gzip_output_is_bounded_per_chunk() -> None:
    """A highly compressible blob never inflates more than 1 MiB at a time."""
    blob = gzip.compress(b"\0" * (32 << 20))
    reader = LayerReader(io.BytesIO(blob), max_bytes=BIG)
    largest = 0
    while chunk := reader.read(-1):
        largest = max(largest, len(chunk))
    assert largest <= 1 << 20
    assert reader.total == 32 << 20


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (gzip.compress(PAYLOAD)[:-20], "truncated"),
        (gzip.compress(PAYLOAD) + b"garbage", "stray bytes"),
        (gzip.compress(PAYLOAD) + b"\0\0x", "stray bytes"),
        (b"\x1f\x8b" + b"\xff" * 40, "not valid gzip"),
    ],
)
def test_bad_gzip_is_refused(blob: bytes, message: str) -> None:
    with pytest.raises(UnpackError, match=message):
        read_all(blob)


def test_gzip_crc_mismatch_is_refused() -> None:
    blob = bytearray(gzip.compress(PAYLOAD))
    blob[-6] ^= 0xFF  # inside the CRC32 trailer
    with pytest.raises(UnpackError, match="not valid gzip"):
        read_all(bytes(blob))


def test_zstd_frames_and_skippable_frames() -> None:
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    half = len(PAYLOAD) // 2
    blob = (
        skippable(b"meta")
        + compressor.compress(PAYLOAD[:half])
        + skippable(b"", 0xF)
        + compressor.compress(PAYLOAD[half:])
    )
    data, reader = read_all(blob)
    assert data == PAYLOAD
    assert reader.compression == "zstd"
    assert reader.diff_id == "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def test_zstd_streamed_frame_without_content_size() -> None:
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as writer:
        writer.write(PAYLOAD)
    data, _ = read_all(out.getvalue())
    assert data == PAYLOAD


@pytest.mark.parametrize("cut", [5, 100, -3])
def test_truncated_zstd_is_refused(cut: int) -> None:
    """python-zstandard treats a cut-off frame as a clean end; the frame tracker does not."""
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(PAYLOAD)
    with pytest.raises(UnpackError, match="truncated"):
        read_all(blob[:cut])


def test_garbage_after_zstd_is_refused() -> None:
    blob = zstandard.ZstdCompressor().compress(PAYLOAD) + b"garbage!"
    with pytest.raises(UnpackError, match="zstd"):
        read_all(blob)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_uncompressed_size_cap(kind: str) -> None:
    zeros = b"\0" * (8 << 20)
    blob = {
        "none": zeros,
        "gzip": gzip.compress(zeros),
        "zstd": zstandard.ZstdCompressor().compress(zeros),
    }[kind]
    with pytest.raises(HostileLayerError, match="decompression bomb"):
        read_all(blob, max_bytes=1 << 20)


def test_drain_hashes_what_nobody_read() -> None:
    reader = LayerReader(io.BytesIO(gzip.compress(PAYLOAD)), max_bytes=BIG)
    assert reader.read(10) == PAYLOAD[:10]
    reader.drain()
    assert reader.total == len(PAYLOAD)
    assert reader.diff_id == "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


@pytest.mark.parametrize("head", [b"BZh91AY&SY", b"\xfd7zXZ\x00\x00"])
def test_bzip2_and_xz_are_named_in_the_refusal(head: bytes) -> None:
    with pytest.raises(UnpackError, match="bzip2 or xz"):
        LayerReader(io.BytesIO(head + b"\0" * 100), max_bytes=BIG)


def test_raw_zlib_is_not_gzip() -> None:
    assert LayerReader(io.BytesIO(zlib.compress(b"x")), max_bytes=BIG).compression == "none"


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("etc/passwd", ("etc", "passwd")),
        ("./etc/passwd", ("etc", "passwd")),
        ("/etc/passwd", ("etc", "passwd")),  # absolute names are relative to the layer
        ("//etc//passwd/", ("etc", "passwd")),
        ("etc/./passwd", ("etc", "passwd")),
        (".", ()),
        ("./", ()),
        ("/", ()),
        ("", ()),
        ("...", ("...",)),
        ("..foo/bar..", ("..foo", "bar..")),
        (".wh..wh..opq", (".wh..wh..opq",)),
        ("caf\udce9", ("caf\udce9",)),  # undecodable bytes stay as surrogates
    ],
)
def test_split_entry_name(name: str, parts: tuple[str, ...]) -> None:
    assert split_entry_name(name) == parts


@pytest.mark.parametrize("name", ["..", "../x", "a/../b", "a/..", "/../etc/passwd", "./.."])
def test_split_entry_name_refuses_dotdot(name: str) -> None:
    with pytest.raises(HostileLayerError, match=r"'\.\.' component"):
        split_entry_name(name)


def test_split_entry_name_refuses_nul_and_overlong() -> None:
    with pytest.raises(HostileLayerError, match="NUL"):
        split_entry_name("etc/pass\0wd")
    with pytest.raises(UnpackError, match="longer than 4096"):
        split_entry_name("a/" * 2049)


# --- xattrs and times ----------------------------------------------------------------------------

CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep


def roundtrip(info: tarfile.TarInfo) -> TarHeader:
    """Written by tarfile, read back by quay's own reader."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info)
    buf.seek(0)
    reader = TarReader(buf, max_header_bytes=1 << 20, max_entries=10, max_entry_bytes=BIG)
    member = reader.next()
    assert member is not None
    return member


def test_archive_xattrs_keeps_binary_values_exactly() -> None:
    info = tarfile.TarInfo("usr/bin/ping")
    info.pax_headers = {
        "SCHILY.xattr.security.capability": CAPABILITY.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.note": "héllo",
        "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0",
        "comment": "not an xattr",
    }
    member = roundtrip(info)
    assert archive_xattrs(member.pax, member.name) == [
        ("security.capability", CAPABILITY),
        ("user.note", "héllo".encode()),
    ]


@pytest.mark.parametrize(
    "name", ["trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.x"]
)
def test_archive_xattrs_refuses_trusted(name: str) -> None:
    with pytest.raises(HostileLayerError, match="trusted"):
        archive_xattrs({f"SCHILY.xattr.{name}": b"y"}, "some/dir")


def test_archive_xattrs_refuses_malformed_names() -> None:
    with pytest.raises(HostileLayerError, match="malformed xattr"):
        archive_xattrs({"SCHILY.xattr.": b"y"}, "x")


def test_entry_times_from_pax_are_exact() -> None:
    info = tarfile.TarInfo("f")
    info.mtime = 1_600_000_000
    info.pax_headers = {"mtime": "1600000000.123456789", "atime": "1500000000.5"}
    assert entry_times_ns(roundtrip(info)) == (1_500_000_000_500_000_000, 1_600_000_000_123_456_789)


def test_entry_times_from_header_and_negative() -> None:
    info = TarHeader("f", mtime=1_234_567_890)
    assert entry_times_ns(info) == (1_234_567_890_000_000_000,) * 2
    info.pax = {"mtime": b"-1.25"}
    assert entry_times_ns(info) == (-1_250_000_000,) * 2
    info.pax = {"mtime": b"garbage"}
    assert entry_times_ns(info) == (1_234_567_890_000_000_000,) * 2


# --- PAX records ---------------------------------------------------------------------------------


def record(keyword: str, value: str) -> bytes:
    """One PAX record: its length counts its own digits."""
    body = f" {keyword}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return str(length).encode() + body


def test_parse_pax_records_accepts_what_tarfile_writes() -> None:
    good = record("path", "a" * 300) + record("mtime", "1600000000.5") + record("comment", "x=y")
    assert parse_pax_records(good) == {
        "path": b"a" * 300,
        "mtime": b"1600000000.5",
        "comment": b"x=y",
    }
    assert parse_pax_records(b"") == {}


@pytest.mark.parametrize(
    "bad",
    [
        b"x path=a\n",  # no length
        b"99 path=a\n",  # length past the end
        b"5 path=a\n",  # length too short: does not end at the newline
        b"5 =a\n",  # empty keyword
        b"10 path a\n",  # no '='
        b"11 path=ab\nJUNK",  # bytes after the last record
    ],
)
def test_parse_pax_records_refuses_malformed(bad: bytes) -> None:
    with pytest.raises(HostileLayerError, match="malformed PAX"):
        parse_pax_records(bad)


def test_parse_pax_records_refuses_quadratic_digit_runs_quickly() -> None:
    """CVE-2024-6232: tarfile < 3.11.10 scans these with a backtracking regex for minutes."""
    header = record("comment", "1" * 200_000)
    started = time.monotonic()
    with pytest.raises(HostileLayerError, match="CVE-2024-6232"):
        parse_pax_records(header)
    assert time.monotonic() - started < 1


def hashing_threads() -> int:
    return sum(t.name == "layer-sha256" for t in threading.enumerate())


def wait_for_hashing_threads(count: int) -> None:
    deadline = time.monotonic() + 5
    while hashing_threads() != count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hashing_threads() == count


def settled_hashing_threads() -> int:
    """The count once readers other tests left to the garbage collector are collected and their
    threads ended (else one ending during this test reads as a thread too few)."""
    gc.collect()
    count = hashing_threads()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := hashing_threads()) == count:
            break
        count = now
    return count


def test_the_hashing_thread_ends_on_close_and_when_the_reader_is_collected() -> None:
    before = settled_hashing_threads()
    reader = LayerReader(io.BytesIO(gzip.compress(PAYLOAD)), max_bytes=BIG)
    reader.drain()
    assert reader.diff_id == "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    reader.close()
    wait_for_hashing_threads(before)
    forgotten = LayerReader(io.BytesIO(PAYLOAD), max_bytes=BIG)
    assert PAYLOAD.startswith(forgotten.read(10))
    del forgotten
    gc.collect()
    wait_for_hashing_threads(before)
