"""The container init in the spec (pure), and finding the host's static init."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation.init import INIT_PATH, find_init
from quayd.isolation.spec import ImageDefaults
from tests.unit.test_spec import make_unit, spec_of

TINI = Path("/usr/bin/tini-static")


def init_mounts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in spec["mounts"] if m["destination"] == INIT_PATH]


def test_the_init_runs_the_command_as_pid_1_bound_read_only_on_dev() -> None:
    image = ImageDefaults(entrypoint=("/entry",), cmd=("serve", "--port", "80"))
    spec = spec_of(image=image, init_binary=TINI)
    assert spec["process"]["args"] == [INIT_PATH, "--", "/entry", "serve", "--port", "80"]
    assert init_mounts(spec) == [
        {
            "destination": INIT_PATH,
            "type": "bind",
            "source": str(TINI),
            "options": ["bind", "rprivate", "nosuid", "nodev", "ro"],
        }
    ]
    # After the /dev tmpfs it lands on.
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations.index("/dev") < destinations.index(INIT_PATH)


@pytest.mark.parametrize(
    ("container", "binary"),
    [
        pytest.param({"init": False}, TINI, id="init-false"),
        pytest.param({}, None, id="no-init-on-the-host"),
    ],
)
def test_without_the_init_the_command_is_pid_1(container: dict[str, Any], binary: Path) -> None:
    spec = spec_of(
        make_unit(container=container), image=ImageDefaults(cmd=("sh",)), init_binary=binary
    )
    assert spec["process"]["args"] == ["sh"]
    assert init_mounts(spec) == []


def test_find_init_takes_the_first_executable_regular_file(tmp_path: Path) -> None:
    missing, directory, plain, tini = (tmp_path / n for n in ("missing", "dir", "plain", "tini"))
    directory.mkdir()
    plain.write_bytes(b"")
    tini.write_bytes(b"")
    os.chmod(tini, 0o755)
    assert find_init([missing, directory, plain, tini]) == tini
    assert find_init([missing, plain]) is None
