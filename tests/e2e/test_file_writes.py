"""Each way a person or a tool writes a unit file: the agent ends with the right container and
the right status, in each test host.

The writes are made by one Python process inside the host (:data:`WRITE`), with the system calls
each way makes: a rename into place (Ansible), open-truncate-write-close (``cat >``, Python's
``write_text``), the same in two chunks 200 ms apart (a slow writer: the agent may read the
file half-written, and must read it again once it is complete), an append, ``cp`` over it,
delete and recreate, a drop-in replaced both ways, an invalid version written in place (the
last good container keeps running, status lists the unit as invalid and exits 3), and a write
that no inotify event reports (through a hard link outside the config directory). The container
that runs is checked through its own environment (``/proc/PID/environ``), not the agent's word.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from quayd.agent.agent import RESYNC_SECONDS
from tests.support.agent import (
    HOSTS,
    IMAGE,
    RUN_DIR,
    Deployment,
    deployed,
    running,
    wait_until,
)
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

NAME = "app"
HEAD = f"""[container]
image = "{IMAGE}"
command = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
stop_timeout = "2s"
[restart]
backoff = "1s"
[container.env]
"""
"""The unit without its env values: each test ends the file with its own, so an append adds one."""

WRITE = r"""
import os, subprocess, sys, tempfile, time
path, how, text = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(os.path.dirname(path), exist_ok=True)
if how == "rename":
    temporary = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
    os.rename(temporary, path)
elif how == "in-place":
    with open(path, "w") as handle:  # O_TRUNC: the same inode, truncated, rewritten
        handle.write(text)
elif how == "chunks":
    with open(path, "w") as handle:
        half = len(text) // 2
        handle.write(text[:half])
        handle.flush()
        time.sleep(0.2)
        handle.write(text[half:])
elif how == "append":
    with open(path, "a") as handle:
        handle.write(text)
elif how == "cp":
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
    subprocess.run(["cp", handle.name, path], check=True)
    os.unlink(handle.name)
elif how == "recreate":
    os.unlink(path)
    with open(path, "w") as handle:
        handle.write(text)
else:
    raise SystemExit(f"unknown way {how}")
"""


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    unit = HEAD + 'VERSION = "0"\n'
    with deployed(sd_notify, {NAME: unit}, host=request.param) as deployment:
        wait_until("app running", lambda: _environ(deployment).get("VERSION") == "0")
        yield deployment


def _write(deployment: Deployment, how: str, text: str, path: str | None = None) -> None:
    deployment.host.python(WRITE, path or deployment.path(NAME), how, text)


def _environ(deployment: Deployment) -> dict[str, str]:
    """The environment of the container that runs for app (empty when none runs)."""
    pid = deployment.running_pid(NAME)
    if pid is None:
        return {}
    done = deployment.host.run(["cat", f"/proc/{pid}/environ"], check=False)
    if done.returncode != 0:
        return {}  # it ended meanwhile
    pairs = (item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
    return dict(pairs)


def _status(deployment: Deployment, *names: str) -> subprocess.CompletedProcess[str]:
    return deployment.host.run(
        [deployment.quayctl, "--run-dir", RUN_DIR, "status", *names], check=False
    )


def _converged(deployment: Deployment, version: str, *, timeout: float = 30.0, **env: str) -> None:
    """The container with ``version`` (and ``env``) runs, and status says all is well."""
    wanted = {"VERSION": version, **env}
    wait_until(
        f"app running with {wanted}",
        lambda: all(_environ(deployment).get(k) == v for k, v in wanted.items()),
        timeout,
    )
    wait_until("status 0", lambda: _status(deployment).returncode == 0)
    unit = deployment.units()[NAME]
    assert unit["state"] == "running"
    assert unit["findings"] == []


@pytest.mark.parametrize("how", ["rename", "in-place", "chunks", "cp", "recreate"])
def test_each_way_of_writing_the_file_ends_with_the_right_container(
    deployment: Deployment, how: str
) -> None:
    version = f"{how}-{deployment.status()['agent']['passes']}"  # a new value each time
    before = deployment.running_pid(NAME)
    _write(deployment, how, HEAD + f'VERSION = "{version}"\n')
    _converged(deployment, version)
    assert deployment.running_pid(NAME) != before


def test_an_append_ends_with_the_right_container(deployment: Deployment) -> None:
    _write(deployment, "in-place", HEAD + 'VERSION = "base"\n')
    _converged(deployment, "base")
    _write(deployment, "append", 'EXTRA = "appended"\n')
    _converged(deployment, "base", EXTRA="appended")


def test_a_new_file_written_each_way_starts_its_unit(deployment: Deployment) -> None:
    for how in ("in-place", "cp", "chunks"):
        name = f"new-{how}"
        _write(deployment, how, HEAD + 'VERSION = "1"\n', deployment.path(name))
        running(deployment, name)
        deployment.delete(name)
        _gone(deployment, name)


def _gone(deployment: Deployment, name: str) -> None:
    wait_until(f"{name} gone", lambda: name not in deployment.units())


@pytest.mark.parametrize("how", ["rename", "in-place", "cp"])
def test_a_replaced_drop_in_ends_with_the_right_container(deployment: Deployment, how: str) -> None:
    _write(deployment, "in-place", HEAD + 'VERSION = "main"\n')
    _converged(deployment, "main")
    dropin = str(deployment.config_dir / f"{NAME}.toml.d" / "10-version.toml")
    for version in (f"{how}-a", f"{how}-b"):  # written, then replaced
        _write(deployment, how, f'[container.env]\nVERSION = "{version}"\n', dropin)
        _converged(deployment, version)
    deployment.host.delete(dropin)
    _converged(deployment, "main")


def test_an_invalid_version_written_in_place_is_reported_and_the_last_good_keeps_running(
    deployment: Deployment,
) -> None:
    _write(deployment, "in-place", HEAD + 'VERSION = "good"\n')
    _converged(deployment, "good")
    pid = deployment.running_pid(NAME)
    path = deployment.path(NAME)
    broken = HEAD.replace('stop_timeout = "2s"', 'stop_timeout = "2s"\nfrobnicate = true')
    _write(deployment, "in-place", broken + 'VERSION = "bad"\n')
    done = wait_until(
        "status exits 3", lambda: d if (d := _status(deployment, NAME)).returncode == 3 else None
    )
    line = broken.splitlines().index("frobnicate = true") + 1
    assert f"{path}:{line}: container.frobnicate" in done.stdout  # file, line and key
    row = next(r for r in done.stdout.splitlines() if r.startswith(f"{NAME} "))
    assert "invalid (running)" in row
    assert ": 1 unit: 0 running, 1 invalid" in done.stdout.splitlines()[0]
    assert deployment.running_pid(NAME) == pid  # the last good version, untouched
    assert _environ(deployment)["VERSION"] == "good"
    _write(deployment, "in-place", HEAD + 'VERSION = "fixed"\n')
    _converged(deployment, "fixed")


def test_a_change_no_event_reported_is_applied_by_the_next_pass(
    deployment: Deployment,
) -> None:
    """Written through a hard link outside the config directory: the same file, but inotify's
    watch on the directory reports nothing. The next pass (a timer's, at the latest the resync
    every RESYNC_SECONDS) reads every file, so it sees the new bytes."""
    _write(deployment, "in-place", HEAD + 'VERSION = "evented"\n')
    _converged(deployment, "evented")
    link = str(deployment.host.scratch / "elsewhere" / f"{NAME}.toml")
    deployment.host.run(["mkdir", "-p", str(deployment.host.scratch / "elsewhere")])
    deployment.host.run(["ln", "-f", deployment.path(NAME), link])
    try:
        _write(deployment, "in-place", HEAD + 'VERSION = "unevented"\n', link)
        _converged(deployment, "unevented", timeout=RESYNC_SECONDS + 15)
    finally:
        deployment.host.delete(link)
