"""load_directory with a LoadCache: files with the same bytes are not parsed again; results never
differ, and a change is never missed whatever the file's metadata says."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from quayd.units import directory, loader
from quayd.units.directory import LoadCache, load_directory
from quayd.units.findings import Finding, QuayConfigError
from quayd.units.loader import MAX_FILE_SIZE
from tests.support.units import MINIMAL, write_tree


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    parsed: list[str] = []
    real = directory.load_files

    def counting(
        files: directory.UnitFiles, contents: Sequence[bytes] | None = None
    ) -> directory.LoadedUnit | directory.InvalidUnit:
        parsed.append(files.name)
        return real(files, contents)

    monkeypatch.setattr(directory, "load_files", counting)
    return parsed


def test_unchanged_files_are_not_parsed_again_and_the_snapshot_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": MINIMAL,
            "db.toml": MINIMAL + "[network]\nports = ['8080:80']\n",
            "bad.toml": "[container]\nimage = 3\n",
            "web.toml.d/10-env.toml": "[container]\nenv = { A = '1' }\n",
        },
    )
    parsed = _count_parses(monkeypatch)
    cache = LoadCache()
    first = load_directory(tmp_path, cache)
    assert sorted(parsed) == ["bad", "db", "web"]
    again = load_directory(tmp_path, cache)
    assert sorted(parsed) == ["bad", "db", "web"]  # nothing parsed the second time
    assert again == first == load_directory(tmp_path)
    assert [str(f) for f in again.findings] == [str(f) for f in first.findings]


def test_a_changed_file_or_drop_in_is_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path, {"web.toml": MINIMAL, "db.toml": MINIMAL})
    cache = LoadCache()
    load_directory(tmp_path, cache)
    parsed = _count_parses(monkeypatch)
    (tmp_path / "web.toml").write_text(MINIMAL + "[restart]\npolicy = 'no'\n")
    snapshot = load_directory(tmp_path, cache)
    assert parsed == ["web"]
    assert snapshot.units["web"].unit.restart.policy == "no"
    write_tree(tmp_path, {"db.toml.d/10-x.toml": "[restart]\npolicy = 'on-failure'\n"})
    snapshot = load_directory(tmp_path, cache)
    assert parsed[1:] == ["db"]  # web's bytes did not change
    assert snapshot.units["db"].unit.restart.policy == "on-failure"


def test_a_rewrite_in_place_with_the_same_size_inode_and_timestamps_is_seen(
    tmp_path: Path,
) -> None:
    """What a cache keyed on (inode, size, mtime, ctime) misses on a filesystem with coarse
    timestamps: the key the same, the content not."""
    path = tmp_path / "web.toml"
    write_tree(tmp_path, {"web.toml": MINIMAL + "[restart]\npolicy = 'no'\n"})
    old = os.stat(path)
    cache = LoadCache()
    assert load_directory(tmp_path, cache).units["web"].unit.restart.policy == "no"
    assert len(cache) == 1  # cached at once: no racy window to wait out
    with path.open("r+") as handle:  # opened, truncated, rewritten: same inode
        handle.truncate(0)
        handle.write(MINIMAL + "[restart]\npolicy = 'ab'\n")
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    new = os.stat(path)
    assert (new.st_ino, new.st_size, new.st_mtime_ns) == (old.st_ino, old.st_size, old.st_mtime_ns)
    found = load_directory(tmp_path, cache)
    assert "web" in found.invalid  # the new content, not a remembered "no"


def test_a_half_written_file_is_read_again_once_complete(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    write_tree(tmp_path, {"web.toml": MINIMAL})
    cache = LoadCache()
    assert "web" in load_directory(tmp_path, cache).units
    text = MINIMAL + "[restart]\npolicy = 'no'\n"
    path.write_text(text[:10])  # seen mid-write
    assert "web" in load_directory(tmp_path, cache).invalid
    path.write_text(text)
    assert load_directory(tmp_path, cache).units["web"].unit.restart.policy == "no"


def test_an_unreadable_file_is_not_cached_and_is_read_once_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path, {"web.toml": MINIMAL, "web.toml.d/10-x.toml": "[restart]\n"})
    cache = LoadCache()
    assert "web" in load_directory(tmp_path, cache).units
    real = loader.read_bytes

    def failing(path: Path) -> bytes:
        if path.name == "10-x.toml":
            raise QuayConfigError([Finding(file=path, message="cannot read the file: EIO")])
        return real(path)

    monkeypatch.setattr(directory, "read_bytes", failing)
    (finding,) = load_directory(tmp_path, cache).invalid["web"].findings
    assert "cannot read" in finding.message
    monkeypatch.setattr(directory, "read_bytes", real)
    assert "web" in load_directory(tmp_path, cache).units  # not a remembered failure


def test_removed_units_are_forgotten_and_rules_across_units_still_apply(tmp_path: Path) -> None:
    ports = "[network]\nports = ['8080:80']\n"
    write_tree(tmp_path, {"web.toml": MINIMAL + ports, "db.toml": MINIMAL})
    cache = LoadCache()
    assert set(load_directory(tmp_path, cache).units) == {"web", "db"}
    assert len(cache) == 2
    (tmp_path / "db.toml").write_text(MINIMAL + ports)  # now both publish 8080
    snapshot = load_directory(tmp_path, cache)
    assert set(snapshot.invalid) == {"web", "db"}  # web's cached result, judged afresh
    (tmp_path / "db.toml").unlink()
    snapshot = load_directory(tmp_path, cache)
    assert set(snapshot.units) == {"web"}
    assert len(cache) == 1


@pytest.mark.parametrize(
    ("size", "too_big"), [(0, False), (1, False), (MAX_FILE_SIZE, False), (MAX_FILE_SIZE + 1, True)]
)
def test_read_bytes_reads_the_whole_file_and_one_byte_past_the_limit_at_most(
    tmp_path: Path, size: int, too_big: bool
) -> None:
    path = tmp_path / "web.toml"
    path.write_bytes(b"#" * (size + 10 if too_big else size))
    data = loader.read_bytes(path)
    assert data == b"#" * (MAX_FILE_SIZE + 1 if too_big else size)


def test_read_bytes_reads_what_a_file_holds_when_it_grows_while_read(tmp_path: Path) -> None:
    """A FIFO has no size to read up to: the reads go on until the end, as a growing file's."""
    fifo = tmp_path / "web.toml"
    os.mkfifo(fifo)
    text = b"[container]\n" * 1000  # more than the first read's 4 KiB

    def writer() -> None:
        with fifo.open("wb") as handle:
            handle.write(text)

    thread = threading.Thread(target=writer)
    thread.start()
    assert loader.read_bytes(fifo) == text
    thread.join()
