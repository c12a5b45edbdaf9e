"""Store.sweep_leftovers: what a killed pull left goes at the agent's start, unless a pull runs."""

from __future__ import annotations

from pathlib import Path

from quayd.images.store import Store


def test_staging_dirs_and_temporary_files_are_swept(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    staging = store.stage_layer()
    (staging / "root" / "half-written").write_bytes(b"x")
    temporary = store.root / ".images.json.1234.tmp"
    temporary.write_bytes(b"{")
    removed = store.sweep_leftovers()
    assert sorted(removed) == sorted([str(staging), str(temporary)])
    assert not staging.exists()
    assert not temporary.exists()
    assert store.sweep_leftovers() == []


def test_nothing_is_swept_while_a_pull_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    other = Store(tmp_path / "images")  # another process's store: its own lock file open
    with other.pull_guard():
        staging = other.stage_layer()
        assert store.sweep_leftovers() == []
        assert staging.exists()
    assert store.sweep_leftovers() == [str(staging)]
