"""quayctl run and exec -it against the real agent, driven through a pty in the systemd test host.

``quayctl run --rm -it IMAGE sh`` gets a working shell (sized as the terminal, following its
resizes), exits with the shell's status, and leaves nothing behind: no unit, container, lease
or file in the config directory. ``quayctl exec -it`` gives a shell in a unit's container.
``quayctl run -p`` without -t publishes the port while it runs; stop and rm end it. An agent
restart ends ad-hoc containers instead of adopting them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import (
    IMAGE,
    QUAYCTL,
    RUN_DIR,
    SERVE,
    WEB_BASE,
    Deployment,
    deployed,
    running,
    wait_until,
)
from tests.support.systemd_host import CONTAINER_TEST_MARKS
from tests.support.terminal import drive

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

WEB = WEB_BASE
CTL = [str(QUAYCTL), "--run-dir", RUN_DIR]


@pytest.fixture(scope="module")
def deployment(sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, {"web": WEB}) as deployment:
        running(deployment, "web")
        yield deployment


def config_files(deployment: Deployment) -> dict[str, str]:
    return {
        str(path.relative_to(deployment.config_dir)): path.read_text()
        for path in sorted(deployment.config_dir.rglob("*"))
        if path.is_file()
    }


def events(deployment: Deployment) -> list[dict[str, Any]]:
    lines = deployment.host.python(
        "import json\n"
        "from quayd.cli.client import stream\n"
        f"for e in stream('{RUN_DIR}/quayd.sock', '/v1/events?follow=false'):\n"
        "    print(json.dumps(e))\n"
    ).stdout.splitlines()
    return [json.loads(line) for line in lines]


def leftovers(deployment: Deployment, name: str) -> list[str]:
    """Anything left of unit ``name``: its runtime state, container directory, lease, veth."""
    found = []
    if deployment.host.run(["test", "-e", f"{RUN_DIR}/crun/{name}"], check=False).returncode == 0:
        found.append("runtime state")
    if (deployment.state_dir / "containers" / name).exists():
        found.append("container directory")
    leases = deployment.state_dir / "net" / "leases.json"
    if leases.exists() and f'"{name}"' in leases.read_text():
        found.append("lease")
    return found


def test_run_it_gives_a_working_shell_and_leaves_nothing(deployment: Deployment) -> None:
    before = config_files(deployment)
    session = deployment.host.call(
        drive,
        argv=[*CTL, "run", "--rm", "-it", IMAGE, "sh"],
        size=[24, 80],
        steps=[
            {"expect": "# ", "send": "stty size\n"},
            {"expect": "24 80", "resize": [30, 100]},
            {"expect": "# ", "send": "stty size\n"},
            {"expect": "30 100", "send": "echo hello-$((6*7))\n"},
            {"expect": "hello-42", "send": "exit 3\n"},
        ],
        timeout=60,
    )
    assert session["failed_step"] is None, session["output"]
    assert session["status"] == 3, session["output"]
    started = [e for e in events(deployment) if e["kind"] == "started"]
    name = started[-1]["unit"]
    assert name.startswith("run-")
    ended = [e for e in events(deployment) if e["unit"] == name and e["kind"] == "exited"]
    assert ended
    assert ended[-1]["message"] == "exited 3"
    wait_until(f"{name} gone", lambda: name not in deployment.units(), timeout=20)
    assert config_files(deployment) == before
    wait_until(f"nothing left of {name}", lambda: not leftovers(deployment, name), timeout=10)
    assert deployment.running_pid("web")  # the file's unit is untouched


def test_exec_it_gives_a_shell_in_a_unit(deployment: Deployment) -> None:
    session = deployment.host.call(
        drive,
        argv=[*CTL, "exec", "-it", "web", "sh"],
        size=[24, 80],
        steps=[
            {"expect": "# ", "send": "hostname\n"},
            {"expect": "web\r\n", "send": "exit 5\n"},
        ],
        timeout=30,
    )
    assert session["failed_step"] is None, session["output"]
    assert session["status"] == 5, session["output"]


def test_run_without_a_terminal_publishes_its_port(deployment: Deployment) -> None:
    host = deployment.host
    done = host.run(
        [*CTL, "run", "-p", "9090:80", "--name", "web2", IMAGE, "sh", "-c", SERVE], check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "web2\n", "")
    running(deployment, "web2")
    assert deployment.units()["web2"]["ports"] == ["9090:80"]

    def served() -> str:
        fetched = host.run(
            ["busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:9090/"], check=False
        )
        return fetched.stdout.strip()

    assert wait_until("web2 served on 9090", served, timeout=10) == "hello"
    taken = host.run([*CTL, "run", "--name", "web2", IMAGE, "true"], check=False)
    assert taken.returncode == 1
    assert "exists already" in taken.stderr
    clash = host.run([*CTL, "run", "-p", "9090:80", IMAGE, "true"], check=False)
    assert clash.returncode == 1
    assert "published by web2" in clash.stderr
    not_adhoc = host.run([*CTL, "rm", "web"], check=False)
    assert not_adhoc.returncode == 1
    assert "delete the file" in not_adhoc.stderr

    assert host.run([*CTL, "stop", "web2"], check=False).returncode == 0
    wait_until("web2 stopped", lambda: deployment.unit_state("web2") == "stopped")
    holds = deployment.state_dir / "holds.json"
    assert "web2" not in json.loads(holds.read_text())["held"]  # ad-hoc: never written
    assert host.run([*CTL, "rm", "web2"], check=False).returncode == 0
    wait_until("web2 gone", lambda: "web2" not in deployment.units(), timeout=20)
    wait_until("nothing left of web2", lambda: not leftovers(deployment, "web2"), timeout=10)
    assert served() == ""
    assert "web2.toml" not in config_files(deployment)


def test_an_agent_restart_ends_ad_hoc_containers(deployment: Deployment) -> None:
    host = deployment.host
    done = host.run([*CTL, "run", "--name", "sleeper", IMAGE, "sleep", "600"], check=False)
    assert done.returncode == 0, done.stderr
    pid = running(deployment, "sleeper")
    host.systemctl("restart", "quayd")
    wait_until("the new agent", lambda: deployment.status().get("agent"))
    wait_until("sleeper ended", lambda: not deployment.alive(pid), timeout=15)
    wait_until("sleeper gone", lambda: "sleeper" not in deployment.units(), timeout=15)
    wait_until("nothing left of sleeper", lambda: not leftovers(deployment, "sleeper"))
    assert deployment.running_pid("web")
