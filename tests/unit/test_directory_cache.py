"""load_directory with a LoadCache: unchanged files are not parsed again; results never differ."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from quayd.units import directory
from quayd.units.directory import LoadCache, load_directory
from tests.support.units import MINIMAL, write_tree


def _age(root: Path) -> None:
    """Make every file older than the racy window, as files are between two edits."""
    old = time.time() - 10
    for path in root.rglob("*"):
        os.utime(path, (old, old))
    time.sleep(directory.RACY_NANOSECONDS / 1e9)  # ctime is now; let the window pass


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    parsed: list[str] = []
    real = directory.load_files

    def counting(files: directory.UnitFiles) -> directory.LoadedUnit | directory.InvalidUnit:
        parsed.append(files.name)
        return real(files)

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
    _age(tmp_path)
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
    _age(tmp_path)
    cache = LoadCache()
    load_directory(tmp_path, cache)
    parsed = _count_parses(monkeypatch)
    (tmp_path / "web.toml").write_text(MINIMAL + "[restart]\npolicy = 'no'\n")
    snapshot = load_directory(tmp_path, cache)
    assert parsed == ["web"]
    assert snapshot.units["web"].unit.restart.policy == "no"
    write_tree(tmp_path, {"db.toml.d/10-x.toml": "[restart]\npolicy = 'on-failure'\n"})
    snapshot = load_directory(tmp_path, cache)
    assert sorted(parsed[1:]) == ["db", "web"]  # web: still within the racy window, read again
    assert snapshot.units["db"].unit.restart.policy == "on-failure"


def test_a_file_changed_within_the_racy_window_is_read_again_even_with_the_same_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, same coarse timestamps: only its age tells the cache not to trust it."""
    write_tree(tmp_path, {"web.toml": MINIMAL + "[restart]\npolicy = 'no'\n"})
    cache = LoadCache()
    assert load_directory(tmp_path, cache).units["web"].unit.restart.policy == "no"
    assert len(cache) == 0
    stat = (tmp_path / "web.toml").stat()
    (tmp_path / "web.toml").write_text(MINIMAL + "[restart]\npolicy = 'ab'\n")
    os.utime(tmp_path / "web.toml", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    found = load_directory(tmp_path, cache)
    assert "web" in found.invalid  # the new content, not a remembered "no"


def test_removed_units_are_forgotten_and_rules_across_units_still_apply(tmp_path: Path) -> None:
    ports = "[network]\nports = ['8080:80']\n"
    write_tree(tmp_path, {"web.toml": MINIMAL + ports, "db.toml": MINIMAL})
    _age(tmp_path)
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
