"""The pure parts of quayctl run and exec -it: the runtime's exec command line, exit statuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from quayd.cli.terminal import runtime_settings, status_of
from quayd.isolation.runtime import OciRuntime, RuntimeCommandError


def test_exec_argv_as_the_agent_runs_the_runtime() -> None:
    crun = OciRuntime("crun", run_dir=Path("/run/quay"), systemd_cgroup=True)
    assert crun.exec_argv("web", ["sh"], tty=True) == [
        "crun", "--root", "/run/quay/crun", "--systemd-cgroup", "exec", "--tty", "web", "sh",
    ]  # fmt: skip
    runc = OciRuntime("runc", run_dir=Path("/srv/run"), systemd_cgroup=False)
    assert runc.exec_argv("db", ["cat", "-"]) == [
        "runc", "--root", "/srv/run/runc", "exec", "db", "cat", "-",
    ]  # fmt: skip


def test_exec_argv_refuses_what_the_runtime_would_misread() -> None:
    crun = OciRuntime("crun")
    with pytest.raises(RuntimeCommandError):
        crun.exec_argv("--help", ["sh"])
    with pytest.raises(RuntimeCommandError):
        crun.exec_argv("web", [])


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
