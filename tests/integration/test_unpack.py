"""apply_layer on real directories: exact trees for honest layers, refusals for hostile ones.

Every hostile case also proves the core promise: a sentinel tree beside the layer directory is
snapshotted (types, modes, owners, times, contents, xattrs) before and after, and must not change.
"""

from __future__ import annotations

import contextlib
import grp
import gzip
import hashlib
import io
import os
import pwd
import resource
import stat
import struct
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quayd.images.errors import HostileLayerError, UnpackError
from quayd.images.model import LayerRecord
from quayd.images.pull import unpack_layer
from quayd.images.store import Store
from quayd.images.unpack import UnpackLimits, UnpackResult, apply_layer
from tests.unit import test_tarstream as tarstream_blocks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: mknod (whiteouts), chown to other users, trusted.* xattrs",
    ),
]

T0 = 1_600_000_000
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep, v2


# --- building archives ---------------------------------------------------------------------------


@dataclass
class E:
    """One tar entry to build."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = T0
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


def D(  # noqa: N802
    name: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0, mtime: int = T0,
    xattrs: dict[str, bytes] | None = None,
) -> E:  # fmt: skip
    """A directory entry."""
    return E(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs or {})


def S(  # noqa: N802
    name: str, target: str, *, mtime: int = T0, xattrs: dict[str, bytes] | None = None
) -> E:  # fmt: skip
    """A symlink entry."""
    return E(name, tarfile.SYMTYPE, linkname=target, mode=0o777, mtime=mtime, xattrs=xattrs or {})


def H(name: str, target: str, *, mode: int = 0o644) -> E:  # noqa: N802
    """A hardlink entry."""
    return E(name, tarfile.LNKTYPE, linkname=target, mode=mode)


def build(entries: list[E], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as archive:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.dev
            info.pax_headers = dict(e.pax)
            for key, value in e.xattrs.items():
                info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
            info.size = len(e.data)
            archive.addfile(info, io.BytesIO(e.data) if e.data else None)
    return buf.getvalue()


def compress(raw: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(raw)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def unpack(
    blob: bytes,
    target: Path,
    *,
    parents: tuple[Path, ...] = (),
    limits: UnpackLimits | None = None,
) -> UnpackResult:
    return apply_layer(io.BytesIO(blob), target, parents=parents, limits=limits or UnpackLimits())


# --- looking at trees ----------------------------------------------------------------------------


def describe(path: Path) -> tuple[object, ...]:
    st = os.lstat(path)
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        kind, extra = "link", os.readlink(path)
    elif stat.S_ISDIR(mode):
        kind, extra = "dir", ""
    elif stat.S_ISREG(mode):
        kind, extra = "file", hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    elif stat.S_ISCHR(mode):
        kind, extra = "chr", f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    elif stat.S_ISFIFO(mode):
        kind, extra = "fifo", ""
    else:
        kind, extra = "other", ""
    return kind, stat.S_IMODE(mode), st.st_uid, st.st_gid, extra


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below root (root itself as '.'), described; never follows symlinks."""
    found = {".": describe(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            found[str(full.relative_to(root))] = describe(full)
    return found


def xattrs(path: Path) -> dict[str, bytes]:
    return {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in os.listxattr(path, follow_symlinks=False)
    }


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything below root except the layer directories, including times and xattrs."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [name for name in dirnames if not name.startswith("layer")]
        for name in [*dirnames, *filenames]:
            full = Path(dirpath, name)
            st = os.lstat(full)
            found[str(full.relative_to(root))] = (
                describe(full),
                st.st_mtime_ns,
                st.st_nlink,
                sorted(xattrs(full).items()),
            )
    return found


@dataclass
class Arena:
    """Fresh layer directories with a sentinel tree beside them that hostile layers aim at."""

    root: Path
    outside: Path
    layers: int = 0

    def layer(self) -> Path:
        self.layers += 1
        path = self.root / f"layer{self.layers}"
        path.mkdir()
        return path

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        return snapshot(self.root)


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[Arena]:
    outside = tmp_path / "outside"
    (outside / "victimdir").mkdir(parents=True)
    (outside / "victim").write_text("precious\n")
    (outside / "victimdir" / "inner").write_text("inner\n")
    os.chmod(outside / "victim", 0o600)
    os.chmod(outside / "victimdir", 0o700)
    os.setxattr(outside / "victim", "user.sentinel", b"1")
    for path in (outside / "victim", outside / "victimdir", outside):
        os.utime(path, ns=(T0 * 10**9, T0 * 10**9))
    arena = Arena(tmp_path, outside)
    before = arena.snapshot()
    assert len(before) == 4
    yield arena
    assert arena.snapshot() == before, "something outside the layer directories changed"
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["outside", *(f"layer{n}" for n in range(1, arena.layers + 1))]
    )


def refused(
    arena: Arena,
    entries: list[E] | bytes,
    error: type[Exception],
    message: str,
    *,
    limits: UnpackLimits | None = None,
) -> None:
    blob = entries if isinstance(entries, bytes) else build(entries)
    with pytest.raises(error, match=message) as caught:
        unpack(blob, arena.layer(), limits=limits)
    assert type(caught.value) is error


# --- honest layers -------------------------------------------------------------------------------


def honest_layer() -> list[E]:
    return [
        D("./", 0o755, mtime=T0 + 1),
        D("etc", mtime=T0 + 2),
        E("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n", pax={"mtime": f"{T0}.123456789"}),
        E("etc/shadow", data=b"root:*::0:::::\n", mode=0o640, gid=42),
        S("etc/localtime", "/usr/share/zoneinfo/UTC", mtime=T0 + 3),
        E("etc/.wh.removed", uid=7, gid=8),
        D("usr"),
        D("usr/bin"),
        E("usr/bin/su", data=b"\x7fELF su", mode=0o4755),
        H("usr/bin/su-again", "usr/bin/su", mode=0o4755),
        E(
            "usr/bin/ping",
            data=b"\x7fELF ping",
            mode=0o755,
            xattrs={"security.capability": CAPABILITY, "user.origin": b"iputils"},
        ),
        H("usr/bin/ping6", "usr/bin/ping", mode=0o755),  # must not drop ping's capability
        D("tmp", 0o1777),
        D("home/user", 0o700, uid=1000, gid=1000),  # "home" is implied
        E("home/user/notes", data=b"hi\n", mode=0o600, uid=1000, gid=1000),
        E("run/initctl", tarfile.FIFOTYPE, mode=0o620),
        D("var"),
        D("var/lib"),
        E("var/lib/.wh.early", uid=1, gid=1),  # made before the opaque marker: dropped by it
        E("var/lib/.wh..wh..opq"),
        E("var/lib/.wh.skipped"),  # inside a directory made opaque in this layer
        E("var/.wh..wh.plnk"),  # aufs bookkeeping: ignored
        E("opt/x/.wh.gone", uid=3, gid=4),  # parents created
        S("bin", "usr/bin"),
    ]


HONEST_TREE = {
    ".": ("dir", 0o755, 0, 0, ""),
    "etc": ("dir", 0o755, 0, 0, ""),
    "etc/passwd": (
        "file",
        0o644,
        0,
        0,
        hashlib.sha256(b"root:x:0:0::/root:/bin/sh\n").hexdigest()[:16],
    ),
    "etc/shadow": ("file", 0o640, 0, 42, hashlib.sha256(b"root:*::0:::::\n").hexdigest()[:16]),
    "etc/localtime": ("link", 0o777, 0, 0, "/usr/share/zoneinfo/UTC"),
    "etc/removed": ("chr", 0, 7, 8, "0:0"),
    "usr": ("dir", 0o755, 0, 0, ""),
    "usr/bin": ("dir", 0o755, 0, 0, ""),
    "usr/bin/su": ("file", 0o4755, 0, 0, hashlib.sha256(b"\x7fELF su").hexdigest()[:16]),
    "usr/bin/su-again": ("file", 0o4755, 0, 0, hashlib.sha256(b"\x7fELF su").hexdigest()[:16]),
    "usr/bin/ping": ("file", 0o755, 0, 0, hashlib.sha256(b"\x7fELF ping").hexdigest()[:16]),
    "usr/bin/ping6": ("file", 0o755, 0, 0, hashlib.sha256(b"\x7fELF ping").hexdigest()[:16]),
    "tmp": ("dir", 0o1777, 0, 0, ""),
    "home": ("dir", 0o755, 0, 0, ""),
    "home/user": ("dir", 0o700, 1000, 1000, ""),
    "home/user/notes": ("file", 0o600, 1000, 1000, hashlib.sha256(b"hi\n").hexdigest()[:16]),
    "run": ("dir", 0o755, 0, 0, ""),
    "run/initctl": ("fifo", 0o620, 0, 0, ""),
    "var": ("dir", 0o755, 0, 0, ""),
    "var/lib": ("dir", 0o755, 0, 0, ""),
    "opt": ("dir", 0o755, 0, 0, ""),
    "opt/x": ("dir", 0o755, 0, 0, ""),
    "opt/x/gone": ("chr", 0, 3, 4, "0:0"),
    "bin": ("link", 0o777, 0, 0, "usr/bin"),
}


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_honest_layer_gives_the_exact_tree(tmp_path: Path, kind: str) -> None:
    raw = build(honest_layer())
    target = tmp_path / "layer"
    target.mkdir(mode=0o700)
    result = unpack(compress(raw, kind), target)

    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.uncompressed_bytes == len(raw)
    assert result.entries == len(honest_layer())
    assert result.compression == kind
    assert tree(target) == HONEST_TREE

    su, again = os.stat(target / "usr/bin/su"), os.stat(target / "usr/bin/su-again")
    assert (su.st_ino, su.st_nlink) == (again.st_ino, 2)
    assert xattrs(target / "usr/bin/ping") == {
        "security.capability": CAPABILITY,
        "user.origin": b"iputils",
    }
    assert os.stat(target / "usr/bin/ping6").st_ino == os.stat(target / "usr/bin/ping").st_ino
    assert os.getxattr(target / "var/lib", "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in xattrs(target / "var")

    def mtime(rel: str) -> int:
        return os.lstat(target / rel).st_mtime_ns

    assert mtime(".") == (T0 + 1) * 10**9  # directory times are set after their contents
    assert mtime("etc") == (T0 + 2) * 10**9
    assert mtime("etc/passwd") == T0 * 10**9 + 123_456_789  # PAX times are exact
    assert mtime("etc/localtime") == (T0 + 3) * 10**9  # symlinks get their own time
    assert mtime("usr/bin/su") == T0 * 10**9
    assert mtime("home/user") == T0 * 10**9
    assert mtime("run/initctl") == T0 * 10**9


def test_trailing_padding_is_part_of_the_diff_id(tmp_path: Path) -> None:
    raw = build([E("a", data=b"x")]) + b"\0" * 4096
    result = unpack(gzip.compress(raw), tmp_path)
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.uncompressed_bytes == len(raw)


def test_empty_layer(tmp_path: Path) -> None:
    raw = b"\0" * 1024  # what `tar cf - --files-from /dev/null` writes
    result = unpack(gzip.compress(raw), tmp_path)
    assert (result.entries, result.diff_id) == (0, "sha256:" + hashlib.sha256(raw).hexdigest())
    assert tree(tmp_path) == {".": ("dir", 0o755, 0, 0, "")}


def test_gnu_and_ustar_archives(tmp_path: Path) -> None:
    long = "d/" + "n" * 150 + "/" + "f" * 90
    for fmt in (tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        target = tmp_path / str(fmt)
        target.mkdir()
        unpack(build([E(long, data=b"x", uid=5), S("l", "/x" * 40)], fmt=fmt), target)
        assert os.stat(target / long).st_uid == 5
        assert (target / long).read_bytes() == b"x"
        assert os.readlink(target / "l") == "/x" * 40


def test_user_xattrs_on_symlinks_and_fifos_are_skipped(tmp_path: Path) -> None:
    """Linux stores user.* only on files and directories; containerd skips the rest too."""
    unpack(
        build(
            [
                S("link", "target", xattrs={"user.a": b"1"}),
                E("fifo", tarfile.FIFOTYPE, xattrs={"user.b": b"2"}),
                E("file", data=b"x", xattrs={"user.c": b"3"}),
            ]
        ),
        tmp_path,
    )
    assert xattrs(tmp_path / "link") == {}
    assert xattrs(tmp_path / "fifo") == {}
    assert xattrs(tmp_path / "file") == {"user.c": b"3"}


def test_security_selinux_is_dropped(tmp_path: Path) -> None:
    unpack(build([E("f", xattrs={"security.selinux": b"system_u:object_r:etc_t:s0\0"})]), tmp_path)
    assert "security.selinux" not in xattrs(tmp_path / "f")


def test_duplicate_entries_later_one_wins(arena: Arena) -> None:
    """A later entry replaces an earlier one of the same name; two directories merge."""
    tmp_path = arena.layer()
    unpack(
        build(
            [
                E("file", data=b"first", mode=0o600),
                E("file", data=b"second", mode=0o644),
                D("dir", 0o700),
                E("dir/inner", data=b"kept"),
                D("dir", 0o750, uid=5),
                D("gone"),
                E("gone/inner", data=b"removed with its directory"),
                E("gone", data=b"now a file"),
                E("was-file", data=b"x"),
                D("was-file", 0o711),
                S("was-link", "../outside/victim"),
                E("was-link", data=b"regular now"),
                E("hl-src", data=b"src"),
                H("hl", "hl-src"),
                H("hl", "hl-src"),
            ]
        ),
        tmp_path,
    )
    found = tree(tmp_path)
    assert (tmp_path / "file").read_bytes() == b"second"
    assert found["file"][:2] == ("file", 0o644)
    assert found["dir"] == ("dir", 0o750, 5, 0, "")
    assert (tmp_path / "dir/inner").read_bytes() == b"kept"
    assert found["gone"][0] == "file"
    assert "gone/inner" not in found
    assert found["was-file"] == ("dir", 0o711, 0, 0, "")
    assert found["was-link"][0] == "file"
    assert os.stat(tmp_path / "hl").st_ino == os.stat(tmp_path / "hl-src").st_ino


def test_whiteout_edge_cases(tmp_path: Path) -> None:
    unpack(
        build(
            [
                E(".wh.foo", uid=1, gid=2),
                E("foo/.wh.bar"),  # below a whiteout of this layer: nothing to hide, ignored
                E("a/b/.wh.c"),  # parents created
                E("d/.wh..wh..opq"),  # the opaque directory is created
            ]
        ),
        tmp_path,
    )
    found = tree(tmp_path)
    assert found["foo"] == ("chr", 0, 1, 2, "0:0")
    assert found["a/b/c"] == ("chr", 0, 0, 0, "0:0")
    assert found["d"][0] == "dir"
    assert os.getxattr(tmp_path / "d", "trusted.overlay.opaque") == b"y"
    assert not any(".wh." in name for name in found)


def test_opaque_root_drops_earlier_whiteouts_and_skips_later_ones(tmp_path: Path) -> None:
    unpack(build([E(".wh.early"), E(".wh..wh..opq"), E(".wh.late"), E("kept")]), tmp_path)
    assert os.getxattr(tmp_path, "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(tmp_path)) == ["kept"]


def test_bare_whiteout_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UnpackError, match="whiteout without a name"):
        unpack(build([E("dir/.wh.")]), tmp_path)


def test_implied_parents_copy_the_topmost_lower_layer(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    for path, mode, owner in [
        (upper, 0o751, (0, 0)),
        (upper / "opt", 0o750, (7, 8)),
        (upper / "cache", 0o755, (0, 0)),
        (lower, 0o755, (0, 0)),
        (lower / "opt", 0o700, (1, 1)),
        (lower / "srv", 0o700, (2, 2)),
        (lower / "data", 0o711, (9, 9)),
        (lower / "cache/sub", 0o700, (3, 3)),
        (lower / "lnk-target", 0o700, (4, 4)),
    ]:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, *owner)
        os.chmod(path, mode)
    os.setxattr(upper / "opt", "user.note", b"from upper")
    os.setxattr(upper / "opt", "trusted.overlay.opaque", b"y")  # overlay's own: not copied
    os.setxattr(upper / "cache", "trusted.overlay.opaque", b"y")  # hides lower/cache/sub
    os.mknod(upper / "srv", stat.S_IFCHR, os.makedev(0, 0))  # whiteout hides lower/srv
    os.symlink("lnk-target", upper / "lnk")  # symlinks in lower layers are not followed
    for path in (upper / "opt", upper):
        os.utime(path, ns=(T0 * 10**9, (T0 + 5) * 10**9))

    target = tmp_path / "layer"
    target.mkdir(mode=0o700)
    unpack(
        build(
            [
                E("opt/app/bin/tool", data=b"t"),
                E("srv/x"),
                E("data/y"),
                E("cache/sub/f"),
                E("lnk/f"),
            ]
        ),
        target,
        parents=(upper, lower),
    )
    found = tree(target)
    assert found["."] == ("dir", 0o751, 0, 0, "")  # the root copies the top-most parent's
    assert found["opt"] == ("dir", 0o750, 7, 8, "")
    assert xattrs(target / "opt") == {"user.note": b"from upper"}
    assert os.stat(target / "opt").st_mtime_ns == (T0 + 5) * 10**9
    assert os.stat(target).st_mtime_ns == (T0 + 5) * 10**9
    assert found["opt/app"] == ("dir", 0o755, 0, 0, "")  # no layer has it
    assert found["srv"] == ("dir", 0o755, 0, 0, "")  # whited out above the lower one
    assert found["data"] == ("dir", 0o711, 9, 9, "")  # absent in upper: from lower
    assert found["cache"] == ("dir", 0o755, 0, 0, "")
    assert "trusted.overlay.opaque" not in xattrs(target / "cache")
    assert found["cache/sub"] == ("dir", 0o755, 0, 0, "")  # hidden by the opaque upper/cache
    assert found["lnk"] == ("dir", 0o755, 0, 0, "")  # a symlink above: defaults
    assert tree(upper)["opt"] == ("dir", 0o750, 7, 8, "")  # parents are only read


def test_root_entry_sets_root_attributes_over_the_parents(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o700)
    target = tmp_path / "layer"
    target.mkdir()
    unpack(build([D(".", 0o750, uid=3, gid=4, mtime=T0)]), target, parents=(parent,))
    assert tree(target)["."] == ("dir", 0o750, 3, 4, "")
    assert os.stat(target).st_mtime_ns == T0 * 10**9


def remove_chain(root: Path, name: str) -> None:
    """Remove root/name/name/... iteratively: deeper than PATH_MAX, and than rmtree recurses."""
    top, spare = root / name, root / ".chain"
    while top.is_dir():
        for entry in os.listdir(top):
            if entry != name:
                os.unlink(top / entry)
        if (top / name).is_dir():
            os.rename(top / name, spare)
            os.rmdir(top)
            os.rename(spare, top)
        else:
            os.rmdir(top)


def test_deep_paths_need_few_fds_and_none_leak(tmp_path: Path) -> None:
    """A path deeper than PATH_MAX from / (fine relative to the layer), under a low fd limit."""
    deep = "a/" * 2000 + "f"  # 4001 bytes: just under PATH_MAX
    parent = tmp_path / "parent"
    (parent / "a/a/a").mkdir(parents=True)
    target, second = tmp_path / "layer", tmp_path / "second"
    target.mkdir()
    second.mkdir()
    before = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        unpack(build([E(deep, data=b"deep"), E("b/" * 300 + "g")]), target, parents=(parent,))
        with pytest.raises(HostileLayerError):
            unpack(build([S("x", "/"), E("x/y")]), second)
        assert len(os.listdir("/proc/self/fd")) == before
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(2000):
            next_fd = os.open("a", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open("f", os.O_RDONLY, dir_fd=fd)
        assert os.read(file_fd, 10) == b"deep"
        os.close(file_fd)
        os.close(fd)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        remove_chain(target, "a")  # pytest's own cleanup cannot remove it


def test_target_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "leftover").write_text("x")
    with pytest.raises(UnpackError, match="not empty"):
        unpack(build([E("a")]), tmp_path)


def test_truncated_tar_is_an_error(tmp_path: Path) -> None:
    raw = build([E("big", data=b"x" * 100_000)])
    with pytest.raises(
        UnpackError, match="layer entry 'big': the archive ends inside the file's data"
    ):
        unpack(gzip.compress(raw[:50_000]), tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_header_after_the_first_entry_is_an_error(tmp_path: Path, damage: str) -> None:
    """tarfile would quietly end the archive at a bad header; Go's archive/tar refuses it."""
    raw = build([E("first", data=b"x"), E("second", data=b"y")], fmt=tarfile.USTAR_FORMAT)
    second = 1024  # first header + one data block
    if damage == "truncated":
        raw = raw[: second + 100]
    else:
        raw = raw[:second] + b"\xff" * 512 + raw[second + 512 :]
    with pytest.raises(UnpackError, match="corrupt after entry 'first'"):
        unpack(raw, tmp_path)


def test_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(UnpackError, match="not a tar archive"):
        unpack(gzip.compress(b"hello world" * 100), tmp_path)


# --- hostile layers ------------------------------------------------------------------------------


def test_cve_2007_4559_dotdot_names_are_refused(arena: Arena) -> None:
    refused(arena, [E("../outside/victim", data=b"pwned")], HostileLayerError, r"'\.\.' component")
    refused(arena, [E("a/../../outside/x")], HostileLayerError, r"'\.\.' component")


def test_cve_2007_4559_absolute_names_stay_inside(arena: Arena) -> None:
    """Choice: a leading '/' is dropped (as Docker and containerd do), not refused."""
    victim = str(arena.outside / "victim")
    layer = arena.layer()
    unpack(build([E(victim, data=b"pwned"), E("/etc/quay-unpack-test", data=b"x")]), layer)
    assert (layer / victim.lstrip("/")).read_bytes() == b"pwned"
    assert (layer / "etc/quay-unpack-test").read_bytes() == b"x"
    assert not Path("/etc/quay-unpack-test").exists()


def test_cve_2014_6407_write_through_a_symlink_of_the_same_layer(arena: Arena) -> None:
    refused(
        arena,
        [S("evil", "../outside"), E("evil/victim", data=b"pwned")],
        HostileLayerError,
        "'evil' is a symlink",
    )


def test_cve_2014_9356_absolute_symlink_then_write(arena: Arena) -> None:
    refused(
        arena,
        [S("evil", str(arena.outside)), D("evil/newdir")],
        HostileLayerError,
        "'evil' is a symlink",
    )


def test_symlink_to_a_directory_inside_is_not_walked_either(arena: Arena) -> None:
    """Choice: any symlink in a path is refused, even one that stays inside the layer."""
    refused(
        arena,
        [D("real"), S("alias", "real"), E("alias/file")],
        HostileLayerError,
        "'alias' is a symlink",
    )


def test_two_hop_symlink_chain_breakout(arena: Arena) -> None:
    """moby TestUntarSymlinkBreakout shape: dir/hop1 -> ../hop2 -> ../outside."""
    refused(
        arena,
        [D("dir"), S("dir/hop1", "../hop2"), S("hop2", "../outside"), E("dir/hop1/victim")],
        HostileLayerError,
        "'dir/hop1' is a symlink",
    )


def test_two_hop_symlink_chain_hardlink_breakout(arena: Arena) -> None:
    refused(
        arena,
        [S("hop1", "hop2"), S("hop2", str(arena.outside)), H("stolen", "hop1/victim")],
        HostileLayerError,
        "goes through the symlink 'hop1'",
    )


@pytest.mark.parametrize("name", [".", "./", "/", ""])
def test_cve_2021_29136_symlink_replacing_the_root(arena: Arena, name: str) -> None:
    refused(
        arena,
        [S(name, "../outside"), E("victim", data=b"pwned")],
        HostileLayerError,
        "CVE-2021-29136",
    )


def test_cve_2021_29136_file_or_hardlink_as_the_root(arena: Arena) -> None:
    refused(arena, [E(".", data=b"x")], HostileLayerError, "CVE-2021-29136")
    refused(arena, [E("a", data=b"x"), H("./", "a")], HostileLayerError, "CVE-2021-29136")


def test_hardlink_out_of_the_layer(arena: Arena) -> None:
    refused(arena, [H("stolen", "../outside/victim")], HostileLayerError, r"'\.\.' component")


def test_hardlink_to_an_absolute_host_path_is_not_in_the_layer(arena: Arena) -> None:
    refused(
        arena, [H("stolen", str(arena.outside / "victim"))], UnpackError, "is not in this layer"
    )
    refused(arena, [H("passwd", "/etc/passwd")], UnpackError, "is not in this layer")


def test_cve_2021_32760_hardlink_to_symlink_then_chmod(arena: Arena) -> None:
    """containerd < 1.5.4: a hardlink to a symlink, then chmod on it, followed the symlink."""
    refused(
        arena,
        [S("s", str(arena.outside / "victim")), H("h", "s", mode=0o777)],
        HostileLayerError,
        "hardlink to the symlink 's'",
    )


def test_cve_2021_32760_later_entry_never_applies_metadata_through_a_symlink(
    arena: Arena,
) -> None:
    """A symlink, then an entry of the same name: the symlink is replaced, never followed."""
    layer = arena.layer()
    unpack(
        build(
            [
                S("d", "../outside/victimdir"),
                D("d", 0o777, mtime=0),
                S("f", str(arena.outside / "victim")),
                E("f", data=b"pwned", mode=0o4777, uid=1000, mtime=0),
                S("p", str(arena.outside / "victim")),
                E("p", tarfile.FIFOTYPE, mode=0o666),
            ]
        ),
        layer,
    )
    found = tree(layer)
    assert found["d"] == ("dir", 0o777, 0, 0, "")
    assert found["f"][:4] == ("file", 0o4777, 1000, 0)
    assert found["p"][:2] == ("fifo", 0o666)


def test_cve_2024_12718_directory_metadata_through_a_symlink(arena: Arena) -> None:
    """tarfile 'data' filter bypass: mode/mtime of an outside dir changed via a symlink."""
    layer = arena.layer()
    unpack(build([S("s", str(arena.outside / "victimdir")), D("s/", 0o777, mtime=0)]), layer)
    assert tree(layer)["s"] == ("dir", 0o777, 0, 0, "")
    assert os.stat(layer / "s").st_mtime_ns == 0
    refused(
        arena,
        [S("s", str(arena.outside / "victimdir")), D("s/sub", 0o777)],
        HostileLayerError,
        "'s' is a symlink",
    )


def test_cve_2025_4517_deep_symlink_chain_escaping_past_path_max(arena: Arena) -> None:
    """The CPython PoC: a symlink chain whose lexical path stays inside, real path escapes."""
    component = "d" * 247
    steps = "abcdefghijklmnop"
    entries: list[E] = []
    path = ""
    for step in steps:
        entries.append(D(os.path.join(path, component)))
        entries.append(S(os.path.join(path, step), component))
        path = os.path.join(path, component)
    link_path = os.path.join(*steps, "l" * 254)
    entries.append(S(link_path, "../" * len(steps)))
    entries.append(S("escape", os.path.join(link_path, "../outside")))
    entries.append(E("escape/victim", data=b"pwned"))
    refused(arena, entries, HostileLayerError, "'a' is a symlink")


def test_cve_2025_4330_symlink_escape_then_hardlink_through_it(arena: Arena) -> None:
    refused(
        arena,
        [S("escape", "../outside"), H("stolen", "escape/victim")],
        HostileLayerError,
        "goes through the symlink 'escape'",
    )


@pytest.mark.parametrize(
    ("kind", "dev"),
    [(tarfile.CHRTYPE, (1, 3)), (tarfile.BLKTYPE, (8, 0)), (tarfile.CHRTYPE, (0, 0))],
)
def test_device_nodes_are_refused(arena: Arena, kind: bytes, dev: tuple[int, int]) -> None:
    refused(
        arena,
        [E("dev/x", kind, dev=dev)],
        HostileLayerError,
        "device nodes from images are refused",
    )


def test_whiteout_of_dotdot_is_refused(arena: Arena) -> None:
    """'.wh...' would name '..': replacing it must never remove the parent (or the outside)."""
    refused(arena, [E(".wh...")], HostileLayerError, r"whiteout of '\.\.'")
    refused(arena, [D("a"), E("a/.wh..")], HostileLayerError, r"whiteout of '\.'")


@pytest.mark.parametrize(
    "name", ["trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.metacopy"]
)
def test_trusted_overlay_xattrs_from_the_archive_are_refused(arena: Arena, name: str) -> None:
    refused(arena, [D("dir", xattrs={name: b"y"})], HostileLayerError, "trusted xattr")


def test_decompression_bomb(arena: Arena) -> None:
    blob = gzip.compress(build([E("bomb", data=b"\0" * (16 << 20))]), compresslevel=9)
    assert len(blob) < 64 << 10
    refused(
        arena,
        blob,
        HostileLayerError,
        "decompression bomb",
        limits=UnpackLimits(max_uncompressed_bytes=1 << 20),
    )


def test_too_many_entries(arena: Arena) -> None:
    refused(
        arena,
        [E(f"f{i}") for i in range(20)],
        HostileLayerError,
        "more than 10 entries",
        limits=UnpackLimits(max_entries=10),
    )


def test_huge_pax_header(arena: Arena) -> None:
    refused(
        arena,
        [E("a"), E("f", pax={"comment": "x" * (2 << 20)})],
        HostileLayerError,
        "exceed the 1048576-byte limit on header size",
    )


def test_huge_gnu_long_name(arena: Arena) -> None:
    refused(
        arena,
        build([E("a/" * 1000 + "f")], fmt=tarfile.GNU_FORMAT),
        HostileLayerError,
        "exceed the 1024-byte limit",
        limits=UnpackLimits(max_header_bytes=1024),
    )


def test_cve_2024_6232_quadratic_pax_header(arena: Arena) -> None:
    refused(arena, [E("f", pax={"comment": "1" * 100_000})], HostileLayerError, "CVE-2024-6232")


def test_pax_global_headers_are_ignored(tmp_path: Path) -> None:
    """As containerd and Go's archive/tar do: a global header cannot rename or decorate entries."""
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf,
        mode="w",
        format=tarfile.PAX_FORMAT,
        pax_headers={"path": "renamed", "SCHILY.xattr.user.g": "1"},
    ) as archive:
        info = tarfile.TarInfo("plain")
        info.pax_headers = {"comment": "local"}
        archive.addfile(info)
    unpack(buf.getvalue(), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["plain"]
    assert xattrs(tmp_path / "plain") == {}


def test_cve_2018_15664_swapping_a_directory_for_a_symlink_mid_unpack(arena: Arena) -> None:
    # docker cp resolved a path, then used it: a container swapping a component for a symlink in
    # between redirected the write to the host. Here another thread keeps swapping the directory
    # the layer writes into for a symlink to the sentinel tree, as fast as it can. Writes go
    # through directory fds already open, never through a path looked up again, so whatever the
    # interleaving, nothing outside the layer directory changes (the arena checks that).
    layer = arena.layer()
    entries = [D("d"), *(E(f"d/f{n}", data=b"x" * 512) for n in range(3000))]
    blob = build(entries)
    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(layer / "d", layer / "d.real")
                os.symlink(arena.outside, layer / "d")
                swaps += 1
                os.unlink(layer / "d")
                os.rename(layer / "d.real", layer / "d")

    racer = threading.Thread(target=swap)
    racer.start()
    try:
        with contextlib.suppress(UnpackError):
            unpack(blob, layer)
    finally:
        stop.set()
        racer.join()
    assert swaps > 0  # the race really ran
    assert not (arena.outside / "f0").exists()


def test_cve_2019_14271_no_name_lookups_and_no_chroot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docker cp ran in a chroot of the container and loaded the container's libnss to look up
    # names. quay never changes root and never resolves names: owners are the numeric ids.
    def forbidden(*_: object) -> None:
        raise AssertionError("the unpacker must not resolve names or change root")

    for module, name in ((pwd, "getpwnam"), (pwd, "getpwuid"), (grp, "getgrnam"),
                         (grp, "getgrgid"), (os, "chroot")):  # fmt: skip
        monkeypatch.setattr(module, name, forbidden)
    entry = E("owned", data=b"x", uid=1234, gid=5678)
    entry.pax.update({"uname": "root", "gname": "root"})  # names that would map to 0 if used
    unpack(build([entry]), tmp_path)
    info = os.lstat(tmp_path / "owned")
    assert (info.st_uid, info.st_gid) == (1234, 5678)


# --- the tar reader's own rules, end to end (issue 14) -------------------------------------------


def test_pax_path_cannot_leave_the_layer(arena: Arena) -> None:
    refused(arena, [E("decoy", data=b"x", pax={"path": "../x"})], HostileLayerError, r"'\.\.'")
    refused(
        arena,
        [E("decoy", data=b"x", pax={"path": "a/../../outside/victim"})],
        HostileLayerError,
        r"'\.\.' component",
    )
    victim = str(arena.outside / "victim")
    layer = arena.layer()
    unpack(build([E("decoy", data=b"pwned", pax={"path": victim})]), layer)
    assert (layer / victim.lstrip("/")).read_bytes() == b"pwned"  # absolute: inside the layer
    assert not (layer / "decoy").exists()


def test_pax_linkpath_of_a_hardlink_cannot_leave_the_layer(arena: Arena) -> None:
    refused(
        arena,
        [E("h", tarfile.LNKTYPE, pax={"linkpath": "../outside/victim"})],
        HostileLayerError,
        r"'\.\.' component",
    )
    refused(
        arena,
        [E("h", tarfile.LNKTYPE, pax={"linkpath": str(arena.outside / "victim")})],
        UnpackError,
        "is not in this layer",
    )


def test_pax_size_that_disagrees_with_the_header_is_refused(arena: Arena) -> None:
    # What tarfile never writes: a header size of 10 with a PAX size that covers the next entry
    # too, so a reader trusting the header sees "smuggled" and one trusting PAX does not.
    smuggled = tarstream_blocks.entry(b"smuggled", b"pwned")
    raw = (
        tarstream_blocks.pax({"size": str(10 + len(smuggled)).encode()})
        + tarstream_blocks.header(b"f", size=10)
        + tarstream_blocks.padded(b"0123456789")
        + smuggled
        + tarstream_blocks.END
    )
    size = 10 + len(smuggled)
    refused(arena, raw, HostileLayerError, f"PAX size {size} disagrees with the header's 10")


def test_gnu_long_name_split_across_blocks(tmp_path: Path) -> None:
    long = "/".join(["component-" + "n" * 190] * 6)  # 1205 bytes: three blocks of 'L' data
    link = "/".join(["target-" + "t" * 190] * 4)
    raw = build([E(long, data=b"deep"), S("l", link), H("h", long)], fmt=tarfile.GNU_FORMAT)
    assert raw.count(b"././@LongLink") == 3
    unpack(gzip.compress(raw), tmp_path)
    assert (tmp_path / long).read_bytes() == b"deep"
    assert os.readlink(tmp_path / "l") == link
    assert os.stat(tmp_path / "h").st_ino == os.stat(tmp_path / long).st_ino


def test_unknown_entry_type_is_refused(arena: Arena) -> None:
    raw = tarstream_blocks.entry(b"ok", b"1") + tarstream_blocks.header(b"odd", kind=b"Z")
    refused(arena, raw + tarstream_blocks.END, UnpackError, "unsupported tar entry type b'Z'")


def test_damaged_checksum_is_refused(arena: Arena) -> None:
    raw = bytearray(build([E("first", data=b"x"), E("second", data=b"y")]))
    second = raw.index(b"second")
    raw[second + 1] ^= 0x01  # a one-bit flip in the name
    refused(arena, bytes(raw), UnpackError, "corrupt after entry 'first': header checksum")


def small_archive() -> tuple[bytes, int]:
    """An archive of several kinds of entries, and where its end-of-archive marker ends."""
    raw = build(
        [
            D("etc"),
            E("etc/conf", data=b"c" * 700, pax={"mtime": f"{T0}.5"}),
            S("etc/link", "conf"),
            E("d/" + "n" * 120, data=b"long name"),
            H("hard", "etc/conf"),
        ]
    )
    end, pos = 0, 0
    while any(raw[pos : pos + 512]):  # walk the honest headers to the marker
        size = int(raw[pos + 124 : pos + 135], 8)
        pos += 512 + size + -size % 512
        end = pos
    return raw, end + 1024


def stored_layer(store: Store, blob: bytes, raw: bytes, name: str) -> LayerRecord:
    """``blob`` in the store as a layer whose config would name ``raw``'s digest."""
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    store.put_blob(blob, digest)
    return LayerRecord(
        digest=digest,
        size=len(blob),
        media_type="application/vnd.oci.image.layer.v1.tar",
        diff_id="sha256:" + hashlib.sha256(raw).hexdigest(),  # so only the unpacker can refuse
        chain_id="sha256:" + hashlib.sha256(name.encode()).hexdigest(),
    )


@pytest.mark.parametrize("kind", ["none", "gzip"])
def test_truncated_at_every_block_boundary_is_an_error_and_never_committed(
    tmp_path: Path, kind: str
) -> None:
    raw, end = small_archive()
    store = Store(tmp_path / "images")
    for cut in range(0, end, 512):
        layer = stored_layer(store, compress(raw[:cut], kind), raw[:cut], f"cut {cut}")
        with pytest.raises(UnpackError):
            unpack_layer(store, [layer], 0, image="truncated")
        assert not store.has_layer(layer.chain_id), cut
    assert list((tmp_path / "images" / "layers").iterdir()) == []  # no staging left either
    whole = stored_layer(store, compress(raw[:end], kind), raw[:end], "whole")
    root = unpack_layer(store, [whole], 0, image="whole")
    assert (root / "etc/conf").read_bytes() == b"c" * 700


def _fuzz_seed() -> bytes:
    return build(
        [
            D("dir", 0o750),
            E("dir/file", data=b"f" * 600, xattrs={"user.x": b"1"}),
            S("dir/up", "../outside"),  # a symlink whose later use would escape
            E("dir/" + "p" * 150, data=b"pax path"),
            H("dir/hard", "dir/file"),
            E("dir/.wh.gone"),
            E("fifo", tarfile.FIFOTYPE),
        ]
    )


FUZZ_SEED = _fuzz_seed()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutations=st.lists(
        st.tuples(st.integers(0, len(FUZZ_SEED) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    fix=st.booleans(),
    cut=st.none() | st.integers(0, len(FUZZ_SEED)),
)
def test_fuzz_mutated_layers_apply_inside_or_raise_our_error(
    mutations: list[tuple[int, int]], fix: bool, cut: int | None
) -> None:
    # Byte replacements in an honest layer, with the mutated headers' checksums made right again
    # half the time so the damage reaches the fields. Whatever comes out, the layer is applied or
    # refused with our own error, and nothing beside the layer directory changes.
    raw = bytearray(FUZZ_SEED)
    for offset, value in mutations:
        raw[offset] = value
    if fix:
        for start in range(0, len(raw), 512):
            block = raw[start : start + 512]
            if len(block) == 512 and block[257:262] == b"ustar":
                block[148:156] = b" " * 8
                raw[start + 148 : start + 156] = b"%06o\0 " % sum(block)
    blob = bytes(raw if cut is None else raw[:cut])
    with tempfile.TemporaryDirectory(prefix="quay-fuzz-") as scratch:
        root = Path(scratch)
        fuzz = Arena(root, root / "outside")
        (fuzz.outside / "victimdir").mkdir(parents=True)
        (fuzz.outside / "victim").write_text("precious\n")
        before = fuzz.snapshot()
        with contextlib.suppress(UnpackError):
            unpack(blob, fuzz.layer())
        assert fuzz.snapshot() == before
        assert sorted(os.listdir(root)) == ["layer1", "outside"]
