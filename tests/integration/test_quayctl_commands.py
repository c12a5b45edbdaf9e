"""quayctl's agent commands end to end: a fake agent on a real ApiServer, quayctl a subprocess.

The fixtures (the loop thread, the socket's run dir, the server) are test_api's; this module's
``agent`` fixture gives the server an agent that also answers show, stop, start, restart, exec,
reload and events as the real one does (docs/api.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from quayd.agent.api import Handler, RequestError
from tests.integration import test_api
from tests.integration.test_api import NOW, QUAYCTL, Agent, LoopThread, quayctl, unit

# test_api's fixtures, used here as they are there (this module's `agent` stands in for its own)
loop = test_api.loop
run_dir = test_api.run_dir
server = test_api.server

pytestmark = pytest.mark.integration

AGENT_COMMANDS = [
    ["show", "web"],
    ["events"],
    ["wait", "web"],
    ["start", "web"],
    ["stop", "web"],
    ["restart", "web"],
    ["exec", "web", "--", "true"],
    ["rm", "run-1a2b3c"],
    ["reload"],
]


class ControlAgent(Agent):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.kept: list[dict[str, Any]] = [
            {"seq": 1, "at": NOW, "unit": "web", "kind": "started", "message": "pid 4242"},
            {"seq": 2, "at": NOW, "unit": "job", "kind": "exited", "message": "exited 1"},
        ]
        self.new_events: asyncio.Queue[dict[str, Any]] | None = None

    def find(self, name: str) -> dict[str, Any]:
        for known in self.units:
            if known["name"] == name:
                return known
        raise RequestError("not-found", f"no unit {name!r} (quayctl status lists them)")

    def handlers(self) -> dict[str, Handler]:
        handlers = super().handlers()

        async def show(params: dict[str, Any]) -> Any:
            summary = self.find(params["name"])
            return {
                **summary,
                "unit": {"container": {"image": "busybox:1.36"}, "restart": {"policy": "always"}},
                "container": {
                    "id": summary["name"],
                    "pid": 4242,
                    "scope": f"quay-{summary['name']}.scope",
                    "started_at": NOW - 60,
                    "ready_at": NOW - 59.5,
                },
                "limits": {"memory": 64 * 1024 * 1024, "cpus": None, "pids": 32},
                "usage": {"memory_bytes": 3 * 1024 * 1024, "cpu_seconds": 1.5, "pids": 2},
                "health": None,
                "exits": [],
            }

        def steer(verb: str) -> Handler:
            async def handler(params: dict[str, Any]) -> Any:
                name = self.find(params["name"])["name"]
                self.calls.append((verb, name))
                if name == "busy":
                    raise RequestError("conflict", f"{name} is starting; try again in a moment")
                return {"unit": name, "message": f"{name}: {verb} planned"}

            return handler

        async def exec_(params: dict[str, Any]) -> Any:
            self.find(params["name"])
            self.calls.append(("exec", params))
            argv = params["argv"]
            if argv[0] == "fail":
                return {"code": int(argv[1]), "stdout": "out\n", "stderr": "err\n"}
            return {"code": 0, "stdout": " ".join(argv) + "\n", "stderr": ""}

        async def reload(params: dict[str, Any]) -> Any:
            self.calls.append(("reload", None))
            return {"passes": 43}

        async def run(params: dict[str, Any]) -> Any:
            self.calls.append(("run", params))
            if params.get("name") == "web":
                raise RequestError("conflict", "a unit 'web' exists already")
            if params.get("argv") == ["nope"]:
                raise RequestError("command-not-found", "executable file `nope` not found")
            if params.get("argv") == ["/etc/passwd"]:
                raise RequestError("command-not-executable", "open executable: Permission denied")
            return {"unit": params.get("name") or "run-1a2b3c", "pid": 4242, "tty": False}

        async def events(params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
            since = int(params.get("since", 0))
            follow = params.get("follow") is True
            if follow:
                self.new_events = asyncio.Queue()

            async def stream() -> AsyncIterator[dict[str, Any]]:
                for event in self.kept:
                    if event["seq"] > since:
                        yield event
                while follow and self.new_events is not None:
                    yield await self.new_events.get()

            return stream()

        return {
            **handlers,
            "show": show,
            "start": steer("start"),
            "stop": steer("stop"),
            "restart": steer("restart"),
            "exec": exec_,
            "reload": reload,
            "events": events,
            "run": run,
            "remove": steer("remove"),
        }


@pytest.fixture
def agent() -> Iterator[ControlAgent]:
    state = ControlAgent()
    yield state
    state.release.set()


def later(seconds: float, change: Any) -> threading.Timer:
    timer = threading.Timer(seconds, change)
    timer.start()
    return timer


# --- show ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
def test_show(agent: ControlAgent, run_dir: Path) -> None:
    agent.units[0].update(ip="10.88.0.2", ports=["8080:80"], digest="sha256:" + "ab" * 32)
    done = quayctl(run_dir, "show", "web")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == "web: running, ready"
    assert f"image      registry.example/web:1@sha256:{'ab' * 32}" in lines
    assert "scope      quay-web.scope" in lines
    assert "memory     3.0 MiB (limit 64.0 MiB)" in lines
    assert "pids       2 (limit 32)" in lines
    assert lines[-3:] == [
        "config",
        '  container.image = "busybox:1.36"',
        '  restart.policy = "always"',
    ]
    reply = json.loads(quayctl(run_dir, "show", "web", "--json").stdout)
    assert reply["usage"] == {"memory_bytes": 3 * 1024 * 1024, "cpu_seconds": 1.5, "pids": 2}
    done = quayctl(run_dir, "show", "nope")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "quayctl show: no unit 'nope' (quayctl status lists them)\n"


# --- start, stop, restart, reload, exec ----------------------------------------------------------


@pytest.mark.usefixtures("server")
@pytest.mark.parametrize("verb", ["start", "stop", "restart"])
def test_steering(agent: ControlAgent, run_dir: Path, verb: str) -> None:
    done = quayctl(run_dir, verb, "web")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"web: {verb} planned\n", "")
    assert json.loads(quayctl(run_dir, verb, "web", "--json").stdout)["unit"] == "web"
    assert agent.calls == [(verb, "web"), (verb, "web")]
    done = quayctl(run_dir, verb, "nope")
    assert (done.returncode, done.stderr) == (
        1,
        f"quayctl {verb}: no unit 'nope' (quayctl status lists them)\n",
    )
    agent.units.append(unit("busy", "starting"))
    done = quayctl(run_dir, verb, "busy")
    assert (done.returncode, done.stderr) == (
        1,
        f"quayctl {verb}: conflict: busy is starting; try again in a moment\n",
    )


@pytest.mark.usefixtures("server")
def test_reload(agent: ControlAgent, run_dir: Path) -> None:
    done = quayctl(run_dir, "reload")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "reloaded: the agent re-read its units (pass 43)\n"
    assert json.loads(quayctl(run_dir, "reload", "--json").stdout) == {"passes": 43}


@pytest.mark.usefixtures("server")
def test_exec(agent: ControlAgent, run_dir: Path) -> None:
    done = quayctl(run_dir, "exec", "web", "--", "cat", "/etc/hostname")
    assert (done.returncode, done.stdout, done.stderr) == (0, "cat /etc/hostname\n", "")
    assert agent.calls[-1] == (
        "exec",
        {"name": "web", "argv": ["cat", "/etc/hostname"], "timeout": 60.0},
    )
    done = quayctl(run_dir, "exec", "--timeout", "5", "web", "--", "fail", "3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert agent.calls[-1][1]["timeout"] == 5.0
    done = quayctl(run_dir, "exec", "web", "--", "fail", "-9")  # killed by SIGKILL
    assert done.returncode == 137
    done = subprocess.run(
        [str(QUAYCTL), "--run-dir", str(run_dir), "exec", "-it", "web", "--", "sh"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "-t needs a terminal" in done.stderr
    assert quayctl(run_dir, "exec", "nope", "--", "true").returncode == 1


@pytest.mark.usefixtures("server")
def test_run_d_prints_the_name(agent: ControlAgent, run_dir: Path) -> None:
    done = quayctl(run_dir, "run", "-d", "-p", "9090:80", "localhost/busybox:1.36", "httpd", "-f")
    assert (done.returncode, done.stdout, done.stderr) == (0, "run-1a2b3c\n", "")
    assert agent.calls[-1] == (
        "run",
        {
            "image": "localhost/busybox:1.36",
            "ports": ["9090:80"],
            "tty": False,
            "rm": False,
            "attach": False,
            "argv": ["httpd", "-f"],
        },
    )
    done = quayctl(run_dir, "run", "--rm", "-d", "--name", "try", "localhost/busybox:1.36")
    assert (done.returncode, done.stdout) == (0, "try\n")
    assert agent.calls[-1][1] == {
        "image": "localhost/busybox:1.36",
        "ports": [],
        "tty": False,
        "rm": True,
        "attach": False,
        "name": "try",
    }
    done = quayctl(run_dir, "run", "--name", "web", "localhost/busybox:1.36")
    assert (done.returncode, done.stderr) == (
        125,
        "quayctl run: conflict: a unit 'web' exists already\n",
    )
    assert quayctl(run_dir, "run", "localhost/busybox:1.36", "nope").returncode == 127
    assert quayctl(run_dir, "run", "localhost/busybox:1.36", "/etc/passwd").returncode == 126
    done = quayctl(run_dir, "run", "-t", "localhost/busybox:1.36", "sh")
    assert done.returncode == 125
    assert "-t needs a terminal" in done.stderr
    done = quayctl(run_dir, "rm", "web")
    assert (done.returncode, done.stdout) == (0, "web: remove planned\n")
    assert agent.calls[-1:] == [("remove", "web")]


# --- events --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
def test_events(agent: ControlAgent, run_dir: Path) -> None:
    clock = time.strftime("%H:%M:%S", time.localtime(NOW))
    done = quayctl(run_dir, "events")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{clock} web started: pid 4242\n{clock} job exited: exited 1\n"
    done = quayctl(run_dir, "events", "--json", "--since", "1")
    assert [json.loads(line) for line in done.stdout.splitlines()] == agent.kept[1:]


@pytest.mark.usefixtures("server")
def test_events_follow(agent: ControlAgent, run_dir: Path, loop: LoopThread) -> None:
    with subprocess.Popen(
        [str(QUAYCTL), "--run-dir", str(run_dir), "events", "-f", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    ) as follower:
        try:
            assert follower.stdout is not None
            assert json.loads(follower.stdout.readline())["seq"] == 1
            assert json.loads(follower.stdout.readline())["seq"] == 2
            new = {"seq": 3, "at": NOW, "unit": "web", "kind": "held", "message": "stopped"}
            queue = agent.new_events
            assert queue is not None
            loop.loop.call_soon_threadsafe(queue.put_nowait, new)
            assert json.loads(follower.stdout.readline()) == new
        finally:
            follower.terminate()
            follower.wait(10)


# --- wait ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
def test_wait_until_ready(agent: ControlAgent, run_dir: Path) -> None:
    agent.units.append(unit("db", "starting", ready=False, detail="waiting for port 5432"))
    timer = later(0.6, lambda: agent.units[1].update(state="running", ready=True))
    started = time.monotonic()
    done = quayctl(run_dir, "wait", "web", "db")
    timer.join()
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert time.monotonic() - started >= 0.5


@pytest.mark.usefixtures("server")
def test_wait_fails_as_soon_as_a_unit_fails(agent: ControlAgent, run_dir: Path) -> None:
    agent.units.append(unit("db", "starting", ready=False))
    timer = later(0.4, lambda: agent.units[1].update(state="backoff", detail="exited 1"))
    done = quayctl(run_dir, "wait", "--timeout", "20", "db")
    timer.join()
    assert (done.returncode, done.stderr) == (1, "quayctl wait: failed: db (backoff: exited 1)\n")


@pytest.mark.usefixtures("server")
def test_wait_times_out(agent: ControlAgent, run_dir: Path) -> None:
    agent.units.append(unit("db", "waiting", detail="requires cache"))
    started = time.monotonic()
    done = quayctl(run_dir, "wait", "--timeout", "0.5", "web", "db")
    assert time.monotonic() - started < 10
    assert (done.returncode, done.stderr) == (
        2,
        "quayctl wait: timed out after 0.5s; not ready: db (waiting: requires cache)\n",
    )


@pytest.mark.usefixtures("server")
def test_wait_for_an_unknown_unit_exits_4(run_dir: Path) -> None:
    done = quayctl(run_dir, "wait", "--timeout", "0.5", "web", "nope")
    assert (done.returncode, done.stderr) == (
        4,
        "quayctl wait: the agent has no unit 'nope' (none came within 0.5s; is nope.toml in "
        "its config directory?)\n",
    )


@pytest.mark.usefixtures("server")
def test_wait_waits_for_a_unit_whose_file_the_agent_has_not_read_yet(
    agent: ControlAgent, run_dir: Path
) -> None:
    """Ansible writes the file, then waits: the agent's pass may not have come yet."""
    later = threading.Timer(1.0, lambda: agent.units.append(unit("new", "running")))
    later.start()
    try:
        done = quayctl(run_dir, "wait", "--timeout", "20", "new")
    finally:
        later.cancel()
    assert (done.returncode, done.stderr) == (0, "")


# --- status --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
def test_a_held_unit_is_stopped_and_fine(agent: ControlAgent, run_dir: Path) -> None:
    agent.units.append(
        unit("db", "stopped", held=True, detail="stopped by an operator; `quayctl start db`")
    )
    done = quayctl(run_dir, "status")
    assert done.returncode == 0
    assert done.stdout.splitlines()[2].split()[:2] == ["db", "stopped"]


# --- unreachable ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", AGENT_COMMANDS, ids=lambda c: c[0])
def test_no_agent_exits_4(tmp_path: Path, command: list[str]) -> None:
    done = quayctl(tmp_path, *command)
    assert (done.returncode, done.stdout) == (4, "")
    assert done.stderr == (
        f"quayctl {command[0]}: quayd is not running, or {tmp_path}/quayd.sock is not its "
        "socket (see --run-dir): No such file or directory\n"
    )


def test_run_without_an_agent_exits_125(tmp_path: Path) -> None:
    done = quayctl(tmp_path, "run", "localhost/busybox:1.36")
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr == (
        f"quayctl run: quayd is not running, or {tmp_path}/quayd.sock is not its "
        "socket (see --run-dir): No such file or directory\n"
    )
    done = quayctl(tmp_path, "attach", "run-1a2b3c")
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr.startswith(f"quayctl attach: cannot attach to run-1a2b3c at {tmp_path}")


# --- logs ----------------------------------------------------------------------------------------


def logs(state_dir: Path, *args: str) -> list[str]:
    return [str(QUAYCTL), "--state-dir", str(state_dir), "logs", "--file", *args]


def test_logs_from_the_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "web.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    done = subprocess.run(
        logs(tmp_path, "web"), capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout.count("\n")) == (0, 30)
    done = subprocess.run(
        logs(tmp_path, "-n", "2", "web"), capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout) == (0, "line 28\nline 29\n")
    done = subprocess.run(
        logs(tmp_path, "db"), capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"quayctl logs: no log file {tmp_path}/logs/db.log")
    done = subprocess.run(
        logs(tmp_path, "--since=-1h", "web"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--since needs journald" in done.stderr


def read_line(stream: Any, timeout: float = 10) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert box, "no line within the timeout"
    return box[0]


def test_logs_follow_appends_and_survives_truncation(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "web.log"
    log.parent.mkdir()
    log.write_text("".join(f"old {i}\n" for i in range(20)))
    with subprocess.Popen(
        logs(tmp_path, "-f", "web"), stdout=subprocess.PIPE, text=True
    ) as follower:
        try:
            assert follower.stdout is not None
            assert [read_line(follower.stdout) for _ in range(10)] == [
                f"old {i}\n" for i in range(10, 20)
            ]
            with log.open("a") as writer:
                writer.write("new 1\n")
            assert read_line(follower.stdout) == "new 1\n"
            # Trimmed as the agent does where the filesystem cannot collapse: emptied in place.
            with log.open("r+") as cut:
                cut.truncate(0)
            time.sleep(0.5)
            with log.open("a") as writer:
                writer.write("after truncation\n")
            assert read_line(follower.stdout) == "after truncation\n"
            with log.open("a") as writer:
                writer.write("".join(f"more {i}\n" for i in range(60)))
            assert [read_line(follower.stdout) for _ in range(60)][-1] == "more 59\n"
            # Collapsed: the front dropped in place, the rest kept, more appended.
            data = log.read_bytes()
            log.write_bytes(data[6:] + b"new 2\n")
            assert read_line(follower.stdout) == "new 2\n"
            assert follower.poll() is None
        finally:
            follower.terminate()
            follower.wait(10)
    assert os.path.exists(log)
