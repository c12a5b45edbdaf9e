"""The pure parts of quayctl run and exec -it: the runtime's exec command line, exit statuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from quayd.cli.terminal import runtime_settings, status_of
from quayd.isolation.exec_io import process_file
from quayd.isolation.runtime import OciRuntime, RuntimeCommandError


def test_exec_argv_as_the_agent_runs_the_runtime() -> None:
    crun = OciRuntime("crun", run_dir=Path("/run/quay"), systemd_cgroup=True)
    assert crun.exec_argv("web", "/proc/self/fd/5", tty=True) == [
        "crun", "--root", "/run/quay/crun", "--systemd-cgroup", "exec", "--tty",
        "--process", "/proc/self/fd/5", "web",
    ]  # fmt: skip
    runc = OciRuntime("runc", run_dir=Path("/srv/run"), systemd_cgroup=False)
    assert runc.exec_argv("db", "/proc/self/fd/3") == [
        "runc", "--root", "/srv/run/runc", "exec", "--process", "/proc/self/fd/3", "db",
    ]  # fmt: skip


def test_exec_argv_refuses_what_the_runtime_would_misread() -> None:
    crun = OciRuntime("crun")
    with pytest.raises(RuntimeCommandError):
        crun.exec_argv("--help", "/proc/self/fd/3")
    with pytest.raises(RuntimeCommandError):
        crun.exec_process("web", [])


def test_process_file_is_an_inheritable_memfd_holding_the_process() -> None:
    fd = process_file({"args": ["sh"], "noNewPrivileges": True})
    try:
        assert os.get_inheritable(fd)
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:quay-exec-process")
        with open(f"/proc/self/fd/{fd}", "rb") as file:
            assert json.load(file) == {"args": ["sh"], "noNewPrivileges": True}
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("ended", "status"),
    [
        ({"code": 0, "signal": None}, 0),
        ({"code": 3, "signal": None}, 3),
        ({"code": None, "signal": "SIGKILL"}, 137),
        ({"code": None, "signal": "SIGHUP"}, 129),
        ({"code": None, "signal": 15}, 143),
        ({"code": None, "signal": None}, 1),
    ],
)
def test_status_of_an_exit(ended: dict[str, object], status: int) -> None:
    assert status_of(ended) == status


def test_runtime_settings(tmp_path: Path) -> None:
    assert runtime_settings(tmp_path / "missing.toml") == ("crun", "auto")
    settings = tmp_path / "quayd.toml"
    settings.write_text('runtime = "runc"\ncgroup_driver = "cgroupfs"\n')
    assert runtime_settings(settings) == ("runc", "cgroupfs")
    settings.write_text("not toml [")
    assert runtime_settings(settings) == ("crun", "auto")
