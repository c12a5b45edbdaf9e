"""Fixtures shared by the unit, integration and e2e tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# Skips are printed by reason; under CI=true one outside tests/support/skips.py fails the run.
pytest_plugins = ["tests.support.skips"]

SD_NOTIFY_SOURCE = Path(__file__).parent / "support" / "sd_notify.c"


@pytest.fixture(scope="session")
def sd_notify(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static ``sd_notify MESSAGE [PROGRAM ARGS…]`` binary to copy into test root filesystems."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build tests/support/sd_notify.c")
    binary = tmp_path_factory.mktemp("helper") / "sd_notify"
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(binary), str(SD_NOTIFY_SOURCE)],
        check=True,
        capture_output=True,
    )
    return binary
