"""`pip install .` into a fresh venv gives working `quayd` and `quayctl` commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with quay installed from a copy of the source tree (no editable install)."""
    work = tmp_path_factory.mktemp("install")
    source = work / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "__pycache__", ".*_cache"
        ),
    )
    venv = work / "venv"
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(source)],
        check=True,
    )
    return venv / "bin"


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_both_commands_answer_help(installed: Path, tmp_path: Path) -> None:
    for command in ("quayd", "quayctl"):
        result = run([str(installed / command), "--help"], tmp_path)
        assert result.returncode == 0, result.stderr
        assert "--config-dir DIR" in result.stdout


def test_installed_quayctl_validates_the_examples(installed: Path, tmp_path: Path) -> None:
    settings = tmp_path / "quayd.toml"
    settings.write_text("")
    examples = REPO / "examples" / "etc-quay.d"
    result = run(
        [str(installed / "quayctl"), "--config", str(settings), "validate", str(examples)], tmp_path
    )
    assert (result.returncode, result.stdout) == (0, "4 unit(s) checked, all valid\n")


def test_installed_quayctl_explains_a_bad_file(installed: Path, tmp_path: Path) -> None:
    bad = tmp_path / "web.toml"
    bad.write_text('[container]\nimagee = "x"\n[resources]\nmemory = "lots"\n')
    settings = tmp_path / "quayd.toml"
    settings.write_text("")
    result = run(
        [str(installed / "quayctl"), "--config", str(settings), "validate", str(bad)], tmp_path
    )
    assert result.returncode == 1
    assert f'{bad}:2: container.imagee = "x": unknown key; did you mean "image"?' in result.stderr
    assert f'{bad}:4: resources.memory = "lots": not a size; accepted: a size such as' in (
        result.stderr
    )
