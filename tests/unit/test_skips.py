"""The skip policy: allowed reasons pass, any other fails a run under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import skips

REPO = Path(__file__).parents[2]


ALLOWED = {"no /dev/kvm": "the VM host needs KVM"}
"""A policy with one allowed cause (the project's own list is empty)."""
HOOK = f"from tests.support import skips\nskips.ALLOWED.update({ALLOWED!r})\n"


@pytest.fixture
def one_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skips, "ALLOWED", dict(ALLOWED))


def test_the_project_allows_no_skip() -> None:
    assert skips.ALLOWED == {}
    assert not skips.allowed("no /dev/kvm: the VM host needs KVM")


def test_only_listed_causes_are_allowed(one_allowed: None) -> None:
    assert skips.allowed("no /dev/kvm: the VM host needs KVM")
    assert not skips.allowed("/lib/systemd/systemd is missing (apt-get install systemd)")
    assert not skips.allowed("needs root")


def test_the_summary_counts_each_reason_and_marks_the_unexpected(one_allowed: None) -> None:
    lines = skips.summary(["no /dev/kvm: x", "no crun", "no crun"])
    assert lines == ["UNEXPECTED    2  no crun", "allowed       1  no /dev/kvm: x"]


def _run(tmp_path: Path, reason: str, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(HOOK)
    (tmp_path / "test_one.py").write_text(
        f"import pytest\n\ndef test_it():\n    pytest.skip({reason!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "QUAY_STRICT_SKIPS")}
    env |= {"CI": ci, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.skips", "-c", os.devnull,
         "-p", "no:cacheprovider", str(tmp_path / "test_one.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "ci", "code"),
    [
        ("no crun", "true", 1),
        ("no crun", "", 0),
        ("no /dev/kvm: none here", "true", 0),
    ],
)
def test_a_run_fails_under_ci_only_for_an_unexpected_skip(
    tmp_path: Path, reason: str, ci: str, code: int
) -> None:
    done = _run(tmp_path, reason, ci)
    assert done.returncode == code, done.stdout + done.stderr
    assert reason in done.stdout  # printed by reason either way
