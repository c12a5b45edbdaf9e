"""exec_process: an exec's OCI process is the container's own with only the exec's parts changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quayd.isolation.exec_process import ExecProcessError, exec_process
from quayd.isolation.spec import EtcFiles, ImageDefaults, SpecInputs, build_spec
from quayd.isolation.users import ResolvedUser
from quayd.units.model import Unit


def container_spec(**container: Any) -> dict[str, Any]:
    unit = Unit.model_validate(
        {"container": {"image": "busybox", **container}, "network": {"mode": "none"}}
    )
    etc = Path("/etc-files")
    return build_spec(
        SpecInputs(
            name="web",
            unit=unit,
            image=ImageDefaults(cmd=("httpd", "-f"), env=("FROM_IMAGE=1",)),
            rootfs=Path("/rootfs"),
            netns=None,
            user=ResolvedUser(uid=1000, gid=1000, additional_gids=(10,), home="/home/app"),
            env_files={},
            etc_files=EtcFiles(etc / "hostname", etc / "hosts", etc / "resolv.conf"),
            volumes_dir=Path("/volumes"),
            notify_socket_dir=Path("/notify"),
            cgroup_driver="systemd",
            seccomp=None,
            terminal=True,
            console_size=(24, 80),
        )
    )


def test_an_exec_gets_the_containers_privileges_limits_user_and_environment() -> None:
    spec = container_spec(cap_add=["NET_RAW"], workdir="/srv", env={"MODE": "prod"})
    process = exec_process(spec, ["sh", "-c", "id"])
    base = spec["process"]
    assert process["args"] == ["sh", "-c", "id"]
    assert process["noNewPrivileges"] is True
    assert process["capabilities"] == base["capabilities"]
    assert "CAP_NET_RAW" in process["capabilities"]["effective"]
    assert process["rlimits"] == base["rlimits"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10]}
    assert process["cwd"] == "/srv"
    assert "MODE=prod" in process["env"]
    assert "FROM_IMAGE=1" in process["env"]
    # The first process's terminal is not an exec's; nor is its readiness socket.
    assert process["terminal"] is False
    assert "consoleSize" not in process
    assert not [e for e in process["env"] if e.startswith("NOTIFY_SOCKET=")]
    assert any(e.startswith("NOTIFY_SOCKET=") for e in base["env"])
    assert spec["process"]["args"] == ["httpd", "-f"]  # the spec itself is left alone


def test_env_cwd_user_and_terminal_of_the_exec_replace_the_containers() -> None:
    spec = container_spec(env={"MODE": "prod"})
    process = exec_process(
        spec, ["sh"], env={"MODE": "debug", "EXTRA": "x"}, cwd="/tmp", user="0:5", terminal=True
    )
    assert [e for e in process["env"] if e.startswith("MODE=")] == ["MODE=debug"]
    assert "EXTRA=x" in process["env"]
    assert process["cwd"] == "/tmp"
    assert process["user"] == {"uid": 0, "gid": 5}
    assert process["terminal"] is True
    assert exec_process(spec, ["sh"], user="7")["user"] == {"uid": 7, "gid": 7}


def test_no_new_privileges_is_set_even_when_the_spec_leaves_it_out() -> None:
    process = exec_process({"process": {"args": ["x"], "cwd": "/"}}, ["true"])
    assert process["noNewPrivileges"] is True
    kept = exec_process({"process": {"noNewPrivileges": False}}, ["true"])
    assert kept["noNewPrivileges"] is False  # the container's own choice, whatever it is


@pytest.mark.parametrize(
    ("spec", "argv", "options", "message"),
    [
        pytest.param({}, ["sh"], {}, "no process", id="no-process"),
        pytest.param({"process": "x"}, ["sh"], {}, "no process", id="process-not-object"),
        pytest.param({"process": {}}, [], {}, "needs a command", id="no-argv"),
        pytest.param({"process": {}}, ["sh"], {"user": "app"}, "numbers", id="user-name"),
        pytest.param({"process": {}}, ["sh"], {"user": "1:x"}, "numbers", id="user-gid-name"),
        pytest.param({"process": {}}, ["sh"], {"user": "4294967295"}, "above", id="user-minus-1"),
        pytest.param({"process": {}}, ["sh"], {"cwd": "tmp"}, "not absolute", id="relative-cwd"),
        pytest.param({"process": {}}, ["sh"], {"env": {"A=B": "1"}}, "name", id="env-name"),
        pytest.param({"process": {}}, ["sh"], {"env": {"A": "\0"}}, "name", id="env-nul"),
    ],
)
def test_unusable_requests_are_refused(
    spec: dict[str, Any], argv: list[str], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ExecProcessError, match=message):
        exec_process(spec, argv, **options)
