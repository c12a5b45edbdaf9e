"""The agent's API socket for real: an ApiServer on a unix socket, raw clients and `quayctl`.

The server runs on an asyncio loop in a thread of the test process; quayctl runs as a user runs
it, the installed entry point in a subprocess, so the lean dispatch (no pydantic, no httpx) is
what is measured and tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from quayd.agent.api import MAX_LINE, ApiServer, ApiStartError, RequestError
from quayd.cli import client

pytestmark = pytest.mark.integration

QUAYCTL = Path(sys.executable).with_name("quayctl")
NOW = time.time()
NOBODY = 65534

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def unit(name: str, state: str, **fields: Any) -> dict[str, Any]:
    live = state in ("starting", "running", "stopping")
    return {
        "name": name,
        "state": state,
        "ready": state == "running",
        "detail": "",
        "pid": 4242 if live else None,
        "started_at": NOW - 312 if live else None,
        "restarts": 0,
        "next_attempt": None,
        "image": "registry.example/web:1",
        "findings": [],
        "status_text": None,
        **fields,
    }


class Agent:
    """What the handlers answer from; tests change ``units`` between calls."""

    def __init__(self) -> None:
        self.units = [unit("web", "running", status_text="serving")]
        self.restarted: list[str] = []
        self.release = threading.Event()

    def payload(self) -> dict[str, Any]:
        return {
            "agent": {
                "pid": os.getpid(),
                "version": "0.1.0",
                "started_at": NOW - 7380,
                "config_dir": "/etc/quay.d",
                "passes": 42,
                "last_pass_at": NOW - 1,
            },
            "units": self.units,
        }

    def handlers(self) -> dict[str, Handler]:
        async def status(params: dict[str, Any]) -> Any:
            return self.payload()

        async def restart(params: dict[str, Any]) -> Any:
            name = params.get("name")
            if not isinstance(name, str):
                raise RequestError("bad-request", "restart needs a unit name")
            self.restarted.append(name)
            return {"restarted": name}

        async def boom(params: dict[str, Any]) -> Any:
            raise RuntimeError("the handler broke")

        async def not_json(params: dict[str, Any]) -> Any:
            return {"when": object()}

        async def slow(params: dict[str, Any]) -> Any:
            await asyncio.to_thread(self.release.wait, 10)
            return "done"

        return {
            "status": status,
            "restart": restart,
            "boom": boom,
            "not-json": not_json,
            "slow": slow,
        }


class LoopThread:
    """An asyncio loop in a thread: the server lives there, the test calls it like a client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def agent() -> Iterator[Agent]:
    state = Agent()
    yield state
    state.release.set()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def server(loop: LoopThread, agent: Agent, run_dir: Path) -> Iterator[ApiServer]:
    api = ApiServer(run_dir / "quayd.sock", agent.handlers(), read_only={"status", "slow"})
    loop.run(api.start())
    yield api
    loop.run(api.close())


class Connection:
    """A raw client: lines in, lines out, on one connection."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def send(self, line: bytes) -> None:
        self.sock.sendall(line)

    def reply(self) -> Any:
        line = self.file.readline()
        assert line.endswith(b"\n"), line
        return json.loads(line)

    def call(self, method: str, params: Any = None) -> Any:
        self.send(json.dumps({"method": method, "params": params or {}}).encode() + b"\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def connection(server: ApiServer) -> Iterator[Connection]:
    conn = Connection(server.path)
    yield conn
    conn.close()


def quayctl(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUAYCTL), "--run-dir", str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def error(code: str) -> Callable[[Any], bool]:
    return lambda reply: reply["ok"] is False and reply["error"]["code"] == code


# --- quayctl status and ping ---------------------------------------------------------------------


@pytest.mark.usefixtures("server")
def test_status_prints_the_table_and_exits_0_when_all_runs(agent: Agent, run_dir: Path) -> None:
    agent.units.append(unit("job", "exited", detail="exited with status 0"))
    done = quayctl(run_dir, "status")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == f"quayd {os.getpid()} up 2h03m, 2 units: 1 running, 1 exited, 0 invalid"
    assert lines[1].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "DETAIL"]
    assert lines[2].split() == ["job", "exited", "-", "-", "0", "exited", "with", "status", "0"]
    web = lines[3].split()
    # The uptime is counted from NOW (set at import) to when quayctl formats it: a loaded
    # machine may take a second or more between the two.
    assert web[3] in ("5m12s", "5m13s", "5m14s", "5m15s"), web
    assert web[:3] + web[4:] == ["web", "running", "4242", "0", "serving"]


@pytest.mark.usefixtures("server")
def test_status_exits_3_when_a_unit_is_not_running(agent: Agent, run_dir: Path) -> None:
    agent.units.append(unit("worker", "backoff", restarts=2, next_attempt=time.time() + 30))
    done = quayctl(run_dir, "status")
    assert done.returncode == 3
    assert re.search(r"next attempt in (30|29)s$", done.stdout.splitlines()[-1])
    # Named units: only those count.
    assert quayctl(run_dir, "status", "web").returncode == 0
    assert quayctl(run_dir, "status", "worker").returncode == 3


@pytest.mark.usefixtures("server")
def test_status_json_is_the_payload(agent: Agent, run_dir: Path) -> None:
    agent.units.append(unit("db", "starting", findings=["db.toml:3: bad"]))
    done = quayctl(run_dir, "status", "--json")
    assert done.returncode == 3
    assert json.loads(done.stdout) == agent.payload()
    only_db = json.loads(quayctl(run_dir, "status", "--json", "db").stdout)
    assert only_db == {**agent.payload(), "units": [agent.units[1]]}


@pytest.mark.usefixtures("server")
def test_an_unknown_unit_exits_4(run_dir: Path) -> None:
    done = quayctl(run_dir, "status", "web", "nope")
    assert done.returncode == 4
    assert done.stderr == "quayctl status: the agent has no unit 'nope'\n"
    assert done.stdout.splitlines()[2].startswith("web ")


def test_no_agent_exits_4_and_names_the_socket(tmp_path: Path) -> None:
    for command in ("status", "ping"):
        done = quayctl(tmp_path, command)
        assert (done.returncode, done.stdout) == (4, "")
        assert done.stderr == (
            f"quayctl {command}: quayd is not running, or {tmp_path}/quayd.sock is not its "
            "socket (see --run-dir): No such file or directory\n"
        )


def test_a_dead_agents_socket_exits_4(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_over:
        left_over.bind(str(tmp_path / "quayd.sock"))  # bound, never listening: refused
        done = quayctl(tmp_path, "status")
    assert done.returncode == 4
    assert "quayd is not running" in done.stderr
    assert "Connection refused" in done.stderr


@pytest.mark.usefixtures("server")
def test_ping(run_dir: Path) -> None:
    done = quayctl(run_dir, "ping")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"quayd {os.getpid()} is up\n", "")


@pytest.mark.usefixtures("server")
def test_the_run_dir_comes_from_the_settings_file(run_dir: Path, tmp_path: Path) -> None:
    settings = tmp_path / "quayd.toml"
    settings.write_text(f'run_dir = "{run_dir}"\n')
    done = subprocess.run(
        [str(QUAYCTL), "--config", str(settings), "ping"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, f"quayd {os.getpid()} is up\n")
    # A settings file that does not say where: the full loader reports it, as for any command.
    settings.write_text('run_dir = "relative"\n')
    done = subprocess.run(
        [str(QUAYCTL), "--config", str(settings), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"{settings}:1: run_dir = ")


@pytest.mark.usefixtures("server")
def test_status_imports_no_pydantic_httpx_or_other_quayd_modules(run_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(QUAYCTL), "--run-dir", str(run_dir), "status"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "quayd.cli.client" in imported
    assert not {m for m in imported if m.split(".")[0] in ("pydantic", "httpx", "tomli_w")}
    assert {m for m in imported if m.startswith("quayd")} == {
        "quayd",
        "quayd.cli",
        "quayd.cli.quayctl",
        "quayd.cli.client",
        "quayd.cli.status",
    }


# --- the protocol --------------------------------------------------------------------------------


def test_several_requests_on_one_connection(connection: Connection, agent: Agent) -> None:
    assert connection.call("status") == {"ok": True, "result": agent.payload()}
    agent.units.clear()
    assert connection.call("status")["result"]["units"] == []
    assert connection.call("ping")["result"]["pid"] == os.getpid()
    # Pipelined: both lines sent at once, answered in order.
    connection.send(b'{"method": "ping"}\n{"method": "restart", "params": {"name": "web"}}\n')
    assert connection.reply()["ok"] is True
    assert connection.reply() == {"ok": True, "result": {"restarted": "web"}}


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        (b"{nope\n", "bad-request", "not a JSON line"),
        (b"\xff\xfe\n", "bad-request", "not a JSON line"),
        (b"[1, 2]\n", "bad-request", 'a request is {"method"'),
        (b'{"params": {}}\n', "bad-request", 'a request is {"method"'),
        (b'{"method": 7}\n', "bad-request", 'a request is {"method"'),
        (b'{"method": "status", "params": [1]}\n', "bad-request", "the params of status must be"),
        (b'{"method": "restart", "params": {}}\n', "bad-request", "restart needs a unit name"),
        (b'{"method": "reboot"}\n', "unknown-method", 'there is no method "reboot"; known: boom'),
        (b'{"method": "boom"}\n', "failed", "boom failed: the handler broke"),
        (b'{"method": "not-json"}\n', "failed", "the result is not JSON"),
        (b"[" * 100_000 + b"\n", "bad-request", "not a JSON line"),  # too deep for json
    ],
)
def test_a_bad_request_gets_an_error_and_the_connection_goes_on(
    connection: Connection, line: bytes, code: str, message: str
) -> None:
    connection.send(line)
    reply = connection.reply()
    assert error(code)(reply), reply
    assert reply["error"]["message"].startswith(message)
    assert connection.call("status")["ok"] is True


def test_a_line_over_1_mib_is_refused_and_the_connection_closed(connection: Connection) -> None:
    request = json.dumps({"method": "status", "params": {"pad": ""}}).encode()
    fits = request.replace(b'""', b'"' + b"x" * (MAX_LINE - len(request)) + b'"')
    assert len(fits) == MAX_LINE
    connection.send(fits + b"\n")
    assert connection.reply()["ok"] is True
    connection.send(fits + b"x\n")
    assert connection.reply() == {
        "ok": False,
        "error": {"code": "bad-request", "message": "a request line is at most 1048576 bytes"},
    }
    assert connection.file.readline() == b""


def test_a_handler_failure_never_stops_the_server(server: ApiServer, agent: Agent) -> None:
    for _ in range(3):
        assert error("failed")(_call(server.path, "boom"))
    assert client.call(server.path, "status") == agent.payload()


def _call(path: Path, method: str) -> Any:
    conn = Connection(path)
    try:
        return conn.call(method)
    finally:
        conn.close()


def test_a_slow_handler_holds_only_its_own_connection(server: ApiServer, agent: Agent) -> None:
    slow = Connection(server.path)
    try:
        slow.send(b'{"method": "slow"}\n')
        assert client.call(server.path, "status") == agent.payload()
        agent.release.set()
        assert slow.reply() == {"ok": True, "result": "done"}
    finally:
        slow.close()


def test_client_errors(server: ApiServer) -> None:
    with pytest.raises(client.AgentError) as caught:
        client.call(server.path, "boom")
    assert (caught.value.code, caught.value.message) == ("failed", "boom failed: the handler broke")
    with pytest.raises(client.AgentError, match="unknown-method"):
        client.call(server.path, "reboot")
    assert client.call(server.path, "restart", {"name": "db"}) == {"restarted": "db"}
    with pytest.raises(client.AgentUnreachableError, match=r"did not answer .* within 0\.2s"):
        client.call(server.path, "slow", timeout=0.2)


def test_a_peer_that_is_not_root_may_read_but_not_steer(
    server: ApiServer, agent: Agent, run_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    # The real gate is the socket's mode (0660, root's); opened here so that nobody can connect
    # at all and SO_PEERCRED is what decides.
    os.chmod(server.path, 0o666)
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect('quayd.sock')\n"  # relative: pytest's tmp dirs are root's, mode 0700
        's.sendall(b\'{"method": "restart", "params": {"name": "web"}}\\n\''
        ' b\'{"method": "status"}\\n\')\n'
        "f = s.makefile('rb')\n"
        "sys.stdout.buffer.write(f.readline() + f.readline())\n"
    )
    done = subprocess.run(
        [os.path.realpath(sys.executable), "-I", "-c", code],
        cwd=run_dir,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        check=True,
        timeout=30,
    )
    forbidden, status = (json.loads(line) for line in done.stdout.splitlines())
    assert forbidden == {
        "ok": False,
        "error": {
            "code": "forbidden",
            "message": '"restart" changes the agent: only root may call it',
        },
    }
    assert status["ok"] is True
    assert agent.restarted == []


# --- the socket file -----------------------------------------------------------------------------


def test_the_socket_is_0660_and_removed_on_close(loop: LoopThread, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "run" / "quayd.sock"
    api = ApiServer(path, {})
    old_umask = os.umask(0o077)  # the mode does not depend on the umask
    try:
        loop.run(api.start())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(path.stat().st_mode)
    held = Connection(path)  # an open connection does not hold close() up
    try:
        loop.run(api.close())
    finally:
        held.close()
    assert not path.exists()


def test_a_stale_socket_is_replaced(loop: LoopThread, tmp_path: Path) -> None:
    path = tmp_path / "quayd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(path))
    api = ApiServer(path, {})
    loop.run(api.start())
    try:
        assert client.call(path, "ping")["pid"] == os.getpid()
    finally:
        loop.run(api.close())


def test_a_live_agent_or_a_file_is_never_replaced(
    loop: LoopThread, server: ApiServer, tmp_path: Path
) -> None:
    with pytest.raises(ApiStartError, match="another agent answers on"):
        loop.run(ApiServer(server.path, {}).start())
    assert client.call(server.path, "ping")["pid"] == os.getpid()
    not_a_socket = tmp_path / "file.sock"
    not_a_socket.write_text("keep me")
    with pytest.raises(ApiStartError, match="is not a socket"):
        loop.run(ApiServer(not_a_socket, {}).start())
    assert not_a_socket.read_text() == "keep me"


def test_close_leaves_a_newer_agents_socket(loop: LoopThread, tmp_path: Path) -> None:
    path = tmp_path / "quayd.sock"
    first = ApiServer(path, {})
    loop.run(first.start())
    path.unlink()  # as a second agent would after deciding the first was gone
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as newer:
        newer.bind(str(path))
        loop.run(first.close())
        assert path.exists()


def test_ping_is_built_in(tmp_path: Path) -> None:
    async def ping(params: Mapping[str, Any]) -> Any:
        return None

    with pytest.raises(ValueError, match="built into"):
        ApiServer(tmp_path / "s", {"ping": ping})
