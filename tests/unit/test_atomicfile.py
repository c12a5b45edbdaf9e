"""Files replaced whole: the old content or the new, the mode asked for, no temporary left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quayd.atomicfile import replace_file


@pytest.mark.parametrize("durable", [True, False])
def test_a_file_is_replaced_whole_with_its_mode(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "leases.json"
    target.write_text("old")
    replace_file(target, b"x" * 300_000, mode=0o600, durable=durable)
    assert target.read_bytes() == b"x" * 300_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["leases.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "quay.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        replace_file(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["quay.json"]
