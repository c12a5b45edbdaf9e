"""quay's own tar reader on byte strings: formats, extended headers, damage, limits, fuzzing.

Archives come from ``tarfile`` (what honest tools write) or are crafted block by block here
(what they never write). A last test scans quayd/ for private uses of ``tarfile``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quayd.images.errors import HostileLayerError, UnpackError
from quayd.images.tarstream import (
    DIRTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    TarHeader,
    TarReader,
)

T0 = 1_600_000_000
END = bytes(1024)


# --- crafting blocks -----------------------------------------------------------------------------


def header(
    name: bytes,
    *,
    kind: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = T0,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    fields: dict[int, bytes] | None = None,
    signed_checksum: bool = False,
) -> bytes:
    """One 512-byte header with a correct checksum; ``fields`` overwrite raw bytes first."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"%07o\0" % uid
    block[116:124] = b"%07o\0" % gid
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % mtime
    block[156:157] = kind
    block[157 : 157 + len(linkname)] = linkname
    block[257:265] = magic
    block[345 : 345 + len(prefix)] = prefix
    for offset, raw in (fields or {}).items():
        block[offset : offset + len(raw)] = raw
    block[148:156] = b" " * 8
    total = sum(block) if not signed_checksum else sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = b"%06o\0 " % total
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def entry(name: bytes, data: bytes = b"", **options: object) -> bytes:
    return header(name, size=len(data), **options) + padded(data)  # type: ignore[arg-type]


def record(keyword: str, value: bytes) -> bytes:
    body = b" " + keyword.encode() + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return str(length).encode() + body


def pax(records: dict[str, bytes], *, kind: bytes = b"x") -> bytes:
    data = b"".join(record(k, v) for k, v in records.items())
    return header(b"PaxHeader/x", kind=kind, size=len(data)) + padded(data)


class Dribble:
    """Hands out a few bytes per read, so every field can straddle a chunk boundary."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self._data, self._pos, self._step = data, 0, step
        self.read_bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        step = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._pos : self._pos + step]
        self._pos += len(chunk)
        self.read_bytes += len(chunk)
        return chunk


def reader(data: bytes | Dribble, **limits: int) -> TarReader:
    source = Dribble(data, step=len(data) or 1) if isinstance(data, bytes) else data
    options = {"max_header_bytes": 1 << 20, "max_entries": 1000, "max_entry_bytes": 1 << 30}
    options.update(limits)
    return TarReader(source, **options)


def read_all(data: bytes | Dribble, **limits: int) -> list[tuple[TarHeader, bytes]]:
    """Every entry with its data (copied through a pipe-free memfd)."""
    archive = reader(data, **limits)
    found = []
    while (info := archive.next()) is not None:
        fd = os.memfd_create("tar-data")
        try:
            archive.copy_data(fd)
            found.append((info, os.pread(fd, info.size + 1, 0)))
        finally:
            os.close(fd)
    return found


def by_tarfile(fmt: int, *members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as archive:
        for info, data in members:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    made = tarfile.TarInfo(name)
    made.type = kind
    made.mtime = T0
    for key, value in attrs.items():
        setattr(made, key, value)
    return made


# --- what honest tools write ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_what_tarfile_writes(fmt: int) -> None:
    long = "d" * 120 + "/" + "f" * 90  # ustar splits it into prefix/name; GNU uses 'L'; PAX 'x'
    raw = by_tarfile(
        fmt,
        (info("dir/", tarfile.DIRTYPE, mode=0o750, uid=3, gid=4), b""),
        (info(long, mode=0o4755), b"data" * 300),
        (info("sym", tarfile.SYMTYPE, linkname="../" * 3 + "t"), b""),
        (info("hard", tarfile.LNKTYPE, linkname="dir/x" * 18), b""),
        (info("fifo", tarfile.FIFOTYPE), b""),
    )
    found = read_all(Dribble(raw, step=13))
    assert [(h.name, h.type, h.mode, h.uid, h.gid, h.size, h.mtime) for h, _ in found] == [
        ("dir/", DIRTYPE, 0o750, 3, 4, 0, T0),
        (long, REGTYPE, 0o4755, 0, 0, 1200, T0),
        ("sym", SYMTYPE, 0o644, 0, 0, 0, T0),
        ("hard", LNKTYPE, 0o644, 0, 0, 0, T0),
        ("fifo", b"6", 0o644, 0, 0, 0, T0),
    ]
    assert found[1][1] == b"data" * 300
    assert found[2][0].linkname == "../../../t"
    assert found[3][0].linkname == "dir/x" * 18


def test_pax_records_override_the_header() -> None:
    member = info("short", uid=1, gid=2)
    member.pax_headers = {
        "path": "p" * 300,
        "uid": "70000000",
        "gid": "0",
        "mtime": "1600000000.25",
        "SCHILY.xattr.security.capability": "\x01\x02",
        "uname": "root",
    }
    ((found, data),) = read_all(by_tarfile(tarfile.PAX_FORMAT, (member, b"xyz")))
    assert (found.name, found.uid, found.gid, found.size, data) == (
        "p" * 300,
        70000000,
        0,
        3,
        b"xyz",
    )
    assert found.pax["mtime"] == b"1600000000.25"
    assert found.pax["SCHILY.xattr.security.capability"] == b"\x01\x02"


def test_empty_pax_value_keeps_the_header_field() -> None:
    raw = pax({"path": b"", "uid": b""}) + entry(b"kept", uid=5) + END
    ((found, _),) = read_all(raw)
    assert (found.name, found.uid) == ("kept", 5)


def test_solaris_x_header_is_a_pax_header() -> None:
    raw = pax({"path": b"from-X"}, kind=b"X") + entry(b"plain") + END
    assert [h.name for h, _ in read_all(raw)] == ["from-X"]


def test_global_headers_are_ignored() -> None:
    raw = pax({"path": b"renamed", "uid": b"9"}, kind=b"g") + entry(b"plain") + END
    ((found, _),) = read_all(raw)
    assert (found.name, found.uid, dict(found.pax)) == ("plain", 0, {})


def test_base256_numbers_and_signed_checksums() -> None:
    big_uid = b"\x80" + (2**40).to_bytes(7, "big")
    minus_one = b"\xff" * 12
    raw = (
        header(b"b256", fields={108: big_uid, 136: minus_one})
        + header(b"signed\xe9", signed_checksum=True)
        + END
    )
    found = [h for h, _ in read_all(raw)]
    assert (found[0].uid, found[0].mtime) == (2**40, -1)
    assert found[1].name == "signed\udce9"  # undecodable bytes are kept as surrogates


def test_gnu_base256_from_tarfile() -> None:
    raw = by_tarfile(tarfile.GNU_FORMAT, (info("f", uid=8**8, mtime=-(2**40)), b""))
    ((found, _),) = read_all(raw)
    assert (found.uid, found.mtime) == (8**8, -(2**40))


def test_gnu_long_name_split_across_blocks_and_chunks() -> None:
    name = b"/".join([b"n" * 200] * 7)  # 1406 bytes: three blocks of the 'L' header's data
    raw = header(b"././@LongLink", kind=b"L", size=len(name) + 1) + padded(name + b"\0")
    raw += entry(b"truncated-name", b"payload") + END
    for step in (1, 5, 511, 512, 513, len(raw)):
        ((found, data),) = read_all(Dribble(raw, step=step))
        assert (found.name, data) == (name.decode(), b"payload")


def test_gnu_long_link() -> None:
    target = b"t" * 700
    raw = header(b"././@LongLink", kind=b"K", size=len(target)) + padded(target)
    raw += header(b"link", kind=b"2", linkname=b"short") + END
    assert read_all(raw)[0][0].linkname == target.decode()


def test_old_regular_types() -> None:
    raw = header(b"olddir/", kind=b"\0") + header(b"oldfile", kind=b"\0") + header(b"c", kind=b"7")
    assert [(h.name, h.type) for h, _ in read_all(raw + END)] == [
        ("olddir/", DIRTYPE),
        ("oldfile", REGTYPE),
        ("c", REGTYPE),
    ]


def test_v7_header_without_magic_and_star_prefix() -> None:
    raw = header(b"v7name", magic=bytes(8), prefix=b"not-a-prefix")
    raw += header(b"n", prefix=b"star/prefix", fields={508: b"tar\0"}) + END
    assert [h.name for h, _ in read_all(raw)] == ["v7name", "star/prefix/n"]


def test_header_only_types_have_no_data_whatever_their_size() -> None:
    """As Go's archive/tar (and so Docker) read them: the next header follows at once."""
    raw = header(b"d/", kind=b"5", size=512) + entry(b"next") + END
    assert [h.name for h, _ in read_all(raw)] == ["d/", "next"]


def test_bytes_after_the_end_marker_are_not_read_as_entries() -> None:
    raw = entry(b"a", b"x") + END + header(b"ghost") + b"junk"
    assert [h.name for h, _ in read_all(raw)] == ["a"]


# --- damage --------------------------------------------------------------------------------------

GOOD = entry(b"first", b"x") + entry(b"second", b"y") + END


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not a tar archive.*it is empty"),
        (GOOD[:100], "not a tar archive.*ends inside a header"),
        (GOOD[:1024], "corrupt after entry 'first': .*without the end-of-archive marker"),
        (GOOD[:1100], "corrupt after entry 'first': .*ends inside a header"),
        (GOOD[:2048], "corrupt after entry 'second': .*without the end-of-archive marker"),
        (GOOD[:2560], "corrupt after entry 'second': .*single zero block"),
        (GOOD[:2048] + bytes(512) + header(b"x"), "a zero block is followed by a header"),
        (GOOD[:1024] + b"\xff" * 512, "corrupt after entry 'first': header checksum"),
        (
            GOOD[:1024] + header(b"bad", fields={100: b"12x4567\0"}) + END,
            "corrupt after entry 'first': the mode field",
        ),
        (GOOD[:1024] + pax({"path": b"x"}) + END, "ends right after an extended header"),
        (pax({"size": b"12a"}) + entry(b"f") + END, "PAX record 'size' is not a number"),
        (pax({"path": b"a\0b"}) + entry(b"f") + END, "'path' contains a NUL"),
    ],
)
def test_damage_is_an_error_naming_the_entry_before_it(raw: bytes, message: str) -> None:
    with pytest.raises(UnpackError, match=message):
        read_all(raw)


def test_truncated_data_names_the_entry() -> None:
    raw = entry(b"big", b"z" * 5000)[:3000]
    with pytest.raises(UnpackError, match="layer entry 'big': the archive ends inside"):
        read_all(raw)


@pytest.mark.parametrize("kind", [b"Z", b"V", b"M", b"N", b"D", b"8"])
def test_unknown_types_are_refused_not_skipped(kind: bytes) -> None:
    raw = entry(b"ok") + header(b"odd", kind=kind, size=512) + padded(b"q") + END
    with pytest.raises(UnpackError, match="'odd' after entry 'ok': unsupported tar entry type"):
        read_all(raw)


def test_sparse_files_are_refused() -> None:
    with pytest.raises(UnpackError, match="GNU sparse files are not supported"):
        read_all(header(b"s", kind=b"S") + END)
    with pytest.raises(UnpackError, match="GNU sparse files are not supported"):
        read_all(pax({"GNU.sparse.major": b"1", "GNU.sparse.minor": b"0"}) + entry(b"s") + END)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (pax({"size": b"5"}) + entry(b"f", b"0123456789") + END, "PAX size 5 disagrees"),
        (pax({"path": b"a"}) + pax({"path": b"b"}) + entry(b"f") + END, "two PAX headers"),
        (
            header(b"L", kind=b"L", size=2) + padded(b"a\0") + pax({"path": b"b"}) + entry(b"f"),
            "both a GNU long name and a PAX path",
        ),
        (
            header(b"L", kind=b"L", size=2) + padded(b"a\0") + header(b"L", kind=b"L", size=2),
            "two GNU long names",
        ),
        (pax({"path": b"a"}) + pax({"path": b"g"}, kind=b"g") + entry(b"f"), "global header"),
    ],
)
def test_ambiguous_archives_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(HostileLayerError, match=message):
        read_all(raw + END)


def test_pax_size_replaces_a_zero_header_size() -> None:
    raw = pax({"size": b"10"}) + header(b"f", size=0) + padded(b"0123456789") + END
    ((found, data),) = read_all(raw)
    assert (found.size, data) == (10, b"0123456789")


# --- limits, checked before anything is read -----------------------------------------------------


def test_extended_header_size_is_checked_before_reading_it() -> None:
    source = Dribble(header(b"L", kind=b"L", size=1 << 40) + bytes(1 << 16), step=512)
    with pytest.raises(HostileLayerError, match="exceed the 1024-byte limit on header size"):
        reader(source, max_header_bytes=1024).next()
    assert source.read_bytes == 512


def test_global_headers_add_up_against_the_limit() -> None:
    one = pax({"comment": b"c" * 400}, kind=b"g")
    reader(one * 2 + END, max_header_bytes=1024).next()
    with pytest.raises(HostileLayerError, match="exceed the 1024-byte limit"):
        reader(one * 3 + END, max_header_bytes=1024).next()


def test_too_many_extended_headers_in_a_row() -> None:
    with pytest.raises(HostileLayerError, match="more than 8 extended headers in a row"):
        reader(pax({"c": b"1"}, kind=b"g") * 9 + entry(b"f") + END).next()


def test_entry_size_is_checked_before_reading_data() -> None:
    source = Dribble(header(b"huge", size=1 << 33) + bytes(4096), step=512)
    with pytest.raises(HostileLayerError, match="claims 8589934592 bytes"):
        reader(source, max_entry_bytes=1 << 20).next()
    assert source.read_bytes == 512


def test_entry_count_limit() -> None:
    archive = reader(entry(b"a") + entry(b"b") + entry(b"c") + END, max_entries=2)
    assert archive.next() is not None
    assert archive.next() is not None
    with pytest.raises(HostileLayerError, match="more than 2 entries"):
        archive.next()


def test_pax_record_count_and_length_limits() -> None:
    many = pax({f"k{i}": b"v" for i in range(20)}) + entry(b"f") + END
    with pytest.raises(HostileLayerError, match="more than 10 records"):
        reader(many, max_pax_records=10).next()
    long = pax({"comment": b"v" * 3000}) + entry(b"f") + END
    with pytest.raises(HostileLayerError, match="longer than the 2000-byte limit on one record"):
        reader(long, max_pax_record_bytes=2000).next()


# --- fuzzing -------------------------------------------------------------------------------------

SEED = (
    pax({"path": b"pax/" + b"p" * 120, "SCHILY.xattr.user.a": b"\x00\xff", "mtime": b"1.5"})
    + entry(b"pax-placeholder", b"data" * 50)
    + header(b"././@LongLink", kind=b"L", size=600)
    + padded(b"l" * 599 + b"\0")
    + entry(b"short", b"q" * 700)
    + header(b"dir/", kind=b"5")
    + header(b"sym", kind=b"2", linkname=b"dir")
    + pax({"c": b"1"}, kind=b"g")
    + entry(b"last", b"z")
    + END
)


def mutated(mutations: list[tuple[int, int]], *, fix: bool, cut: int | None) -> bytes:
    """SEED with bytes replaced (checksums then made right again, with ``fix``) and cut."""
    data = bytearray(SEED)
    for offset, value in mutations:
        data[offset] = value
    if fix:
        _fix_checksums(data, iter(_header_offsets(SEED)))
    return bytes(data if cut is None else data[:cut])


def _mutations() -> st.SearchStrategy[list[tuple[int, int]]]:
    return st.lists(
        st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=6
    )


def _fix_checksums(data: bytearray, offsets: Iterator[int]) -> None:
    """Make mutated header blocks pass the checksum, so the fuzzing reaches the fields."""
    for start in offsets:
        if start + 512 <= len(data) and any(data[start : start + 512]):
            block = data[start : start + 512]
            block[148:156] = b" " * 8
            data[start + 148 : start + 156] = b"%06o\0 " % sum(block)


def _header_offsets(raw: bytes) -> list[int]:
    """Where the seed's header blocks start (read plainly: the seed is honest)."""
    offsets, pos = [], 0
    while pos + 512 <= len(raw) and any(raw[pos : pos + 512]):
        offsets.append(pos)
        size = int(raw[pos + 124 : pos + 135] or b"0", 8)
        kind = raw[pos + 156 : pos + 157]
        pos += 512 + (0 if kind in b"125" and kind else size + -size % 512)
    return offsets


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=_mutations(), fix=st.booleans(), cut=st.none() | st.integers(0, len(SEED)))
def test_mutated_archives_give_entries_or_our_error(
    mutations: list[tuple[int, int]], fix: bool, cut: int | None
) -> None:
    """Never another exception (IndexError, ValueError, ...) whatever the damage."""
    with contextlib.suppress(UnpackError):
        read_all(mutated(mutations, fix=fix, cut=cut))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_give_our_error(raw: bytes) -> None:
    with pytest.raises(UnpackError):
        read_all(raw)


# --- no private tarfile API in quayd/ ------------------------------------------------------------

# The module-level names tarfile's documentation describes (docs.python.org/3/library/tarfile).
DOCUMENTED = frozenset(
    """open is_tarfile TarFile TarInfo TarError ReadError CompressionError StreamError
    ExtractError HeaderError FilterError AbsolutePathError OutsideDestinationError
    SpecialFileError AbsoluteLinkError LinkOutsideDestinationError LinkFallbackError
    fully_trusted_filter tar_filter data_filter ENCODING USTAR_FORMAT GNU_FORMAT PAX_FORMAT
    DEFAULT_FORMAT REGTYPE AREGTYPE LNKTYPE SYMTYPE CHRTYPE BLKTYPE DIRTYPE FIFOTYPE CONTTYPE
    GNUTYPE_LONGNAME GNUTYPE_LONGLINK GNUTYPE_SPARSE""".split()  # noqa: SIM905 - a word list
)
QUAYD = Path(__file__).resolve().parents[2] / "quayd"
UNPACKER = ("unpack", "tarstream", "applier", "entries", "layerdirs", "layerstream")


def tarfile_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, name) of every tarfile name a module uses, however it imported the module."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "tarfile"}
        elif isinstance(node, ast.ImportFrom) and node.module == "tarfile":
            yield from ((node.lineno, a.name) for a in node.names)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            yield node.lineno, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and node.args
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in aliases
        ):
            yield node.lineno, "getattr(tarfile, ...)"  # hides which name it takes


def test_quayd_uses_no_private_tarfile_api() -> None:
    bad = []
    for path in sorted(QUAYD.rglob("*.py")):
        for line, name in tarfile_uses(ast.parse(path.read_text(), str(path))):
            if name.startswith("_") or name not in DOCUMENTED:
                bad.append(f"{path.relative_to(QUAYD.parent)}:{line}: tarfile.{name}")
            if path.stem in UNPACKER and path.parent.name == "images":
                bad.append(f"{path.relative_to(QUAYD.parent)}:{line}: the unpacker uses tarfile")
    assert not bad, "private or undocumented tarfile API in quayd/:\n" + "\n".join(bad)


def test_the_scan_finds_what_it_looks_for() -> None:
    code = (
        "import tarfile as t\nfrom tarfile import _Stream\n"
        "t.open('x')\nt._Fileobj\nt.TruncatedHeaderError\ngetattr(t, 'x')\n"
    )
    assert sorted(tarfile_uses(ast.parse(code))) == [
        (2, "_Stream"),
        (3, "open"),
        (4, "_Fileobj"),
        (5, "TruncatedHeaderError"),
        (6, "getattr(tarfile, ...)"),
    ]


def test_malformed_pax_names_the_entry_before_it() -> None:
    raw = entry(b"first") + header(b"p", kind=b"x", size=9) + padded(b"9 path=ab")
    with pytest.raises(HostileLayerError, match=r"bad record length .*after entry 'first'"):
        read_all(raw + entry(b"f") + END)


def test_numeric_fields_padding_empty_and_damage() -> None:
    raw = header(b"padded", fields={100: b"  644 \0\0", 108: bytes(8), 116: b"       "}) + END
    ((found, _),) = read_all(raw)
    assert (found.mode, found.uid, found.gid) == (0o644, 0, 0)
    for damaged in (
        b"12 4567\0",
        b"+644\0\0\0\0",
        b"0o644\0\0\0",
        b"6_44\0\0\0\0",
        b"6448\0\0\0\0",
    ):
        with pytest.raises(UnpackError, match="the mode field"):
            read_all(header(b"bad", fields={100: damaged}) + END)
