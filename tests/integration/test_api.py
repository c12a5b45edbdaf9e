"""The control API for real: an ApiServer (asyncio + h11) on a unix socket, raw clients, `quayctl`.

The server runs on an asyncio loop in a thread of the test process, with fake handlers; quayctl
runs as a user runs it, the installed entry point in a subprocess, so the lean dispatch (no
pydantic, no httpx, no h11) is what is measured and tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import http.client
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from quayd.agent import api_connection
from quayd.agent.api import MAX_BODY, ROUTES, ApiServer, ApiStartError, Handler, RequestError
from quayd.cli import client

pytestmark = pytest.mark.integration

QUAYCTL = Path(sys.executable).with_name("quayctl")
NOW = time.time()
NOBODY = 65534


def unit(name: str, state: str, **fields: Any) -> dict[str, Any]:
    live = state in ("starting", "running", "stopping")
    return {
        "name": name,
        "state": state,
        "ready": state == "running",
        "detail": "",
        "pid": 4242 if live else None,
        "started_at": time.time() - 312.2 if live else None,
        "restarts": 0,
        "next_attempt": None,
        "image": "registry.example/web:1",
        "findings": [],
        "status_text": None,
        **fields,
    }


class Agent:
    """What the handlers answer from; tests change it between calls."""

    def __init__(self) -> None:
        self.units = [unit("web", "running", status_text="serving")]
        # Counted from the fixture's time, in the middle of a minute: the header says 2h03m
        # even on a slow machine (the suite may run long after this module was imported).
        self.started_at = time.time() - 7380 - 30
        self.actions: list[dict[str, Any]] = []
        self.restarted: list[str] = []
        self.release = threading.Event()
        self.stream_closed = threading.Event()

    def payload(self) -> dict[str, Any]:
        return {
            "agent": {
                "pid": os.getpid(),
                "version": "0.1.0",
                "started_at": self.started_at,
                "config_dir": "/etc/quay.d",
                "passes": 42,
                "last_pass_at": self.started_at + 7409,
            },
            "units": self.units,
        }

    def handlers(self) -> dict[str, Handler]:
        async def status(params: dict[str, Any]) -> Any:
            return self.payload()

        async def plan(params: dict[str, Any]) -> Any:
            return {"actions": self.actions, "wake_at": None}

        async def show(params: dict[str, Any]) -> Any:
            """Unit names that misbehave on purpose: boom, odd, slow."""
            name = params["name"]
            if name == "boom":
                raise RuntimeError("the handler broke")
            if name == "odd":
                return {"when": object()}
            if name == "slow":
                await asyncio.to_thread(self.release.wait, 10)
                return "done"
            for known in self.units:
                if known["name"] == name:
                    return known
            raise RequestError("not-found", f"there is no unit {name!r}")

        async def restart(params: dict[str, Any]) -> Any:
            self.restarted.append(params["name"])
            return {"restarted": params["name"]}

        async def exec_(params: dict[str, Any]) -> Any:
            return {"params": params}

        async def events(params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
            return self.events(int(params.get("since", 0)), follow=params.get("follow") is True)

        return {
            "status": status,
            "plan": plan,
            "show": show,
            "restart": restart,
            "exec": exec_,
            "events": events,
        }

    async def events(self, since: int, *, follow: bool) -> AsyncIterator[dict[str, Any]]:
        try:
            for seq in range(since + 1, since + 4):
                yield {"seq": seq, "at": NOW, "unit": "web", "kind": "started", "message": "up"}
            if follow:
                await asyncio.Event().wait()  # until the client goes away
        finally:
            self.stream_closed.set()


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
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
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


READ_ONLY = {"status", "plan", "show", "events"}


@pytest.fixture
def server(loop: LoopThread, agent: Agent, run_dir: Path) -> Iterator[ApiServer]:
    api = ApiServer(run_dir / "quayd.sock", agent.handlers(), read_only=READ_ONLY)
    loop.run(api.start())
    yield api
    loop.run(api.close())


def connect(path: Path, timeout: float = 10) -> client.UnixHTTPConnection:
    return client.UnixHTTPConnection(str(path), timeout=timeout)


def exchange(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    conn.request(method, target, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    assert response.getheader("Content-Type", "").startswith("application/json"), data
    return response.status, json.loads(data)


def call(path: Path, method: str, target: str, body: bytes | None = None) -> tuple[int, Any]:
    conn = connect(path)
    try:
        return exchange(conn, method, target, body)
    finally:
        conn.close()


def quayctl(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUAYCTL), "--run-dir", str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- quayctl status, ping, plan ------------------------------------------------------------------


@pytest.mark.usefixtures("server")
def test_status_prints_the_table_and_exits_0_when_all_runs(agent: Agent, run_dir: Path) -> None:
    agent.units.append(unit("job", "exited", detail="exited with status 0"))
    done = quayctl(run_dir, "status")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"quayd 0.1.0 (pid {os.getpid()}), up 2h03m, /etc/quay.d: 2 units: 1 running, 1 exited,"
        " 0 invalid"
    )
    assert lines[1].split() == [
        "NAME", "STATE", "HEALTH", "IMAGE", "IP", "PORTS", "RESTARTS", "UPTIME", "DETAIL"
    ]  # fmt: skip
    job = ["job", "exited", "-", "registry.example/web:1", "-", "-", "0", "-"]
    assert lines[2].split() == [*job, "exited", "with", "status", "0"]
    web = lines[3].split()
    # The uptime is counted from the fixture's time to when quayctl formats it: a loaded
    # machine may take a second or more between the two.
    assert web[7] in ("5m12s", "5m13s", "5m14s", "5m15s"), web
    assert web[:7] + web[8:] == [
        "web",
        "running",
        "-",
        "registry.example/web:1",
        "-",
        "-",
        "0",
        "serving",
    ]
    assert "\x1b" not in done.stdout  # no colour in a pipe


@pytest.mark.usefixtures("server")
def test_status_exits_3_when_a_unit_is_not_running(agent: Agent, run_dir: Path) -> None:
    agent.units.append(unit("worker", "backoff", restarts=2, next_attempt=time.time() + 30))
    done = quayctl(run_dir, "status")
    assert done.returncode == 3
    assert re.search(r"  next attempt in (30|29)s$", done.stdout.splitlines()[-1])
    # Named units: only those count.
    assert quayctl(run_dir, "status", "web").returncode == 0
    assert quayctl(run_dir, "status", "worker").returncode == 3


@pytest.mark.usefixtures("server")
def test_status_json_is_the_payload(agent: Agent, run_dir: Path) -> None:
    agent.units.append(
        unit("db", "starting", findings=["db.toml:3: bad"], health="starting", held=False)
    )
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
    for command in ("status", "ping", "plan"):
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


def test_a_peer_that_is_not_http_exits_4(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(tmp_path / "quayd.sock"))
        other.listen()

        def answer() -> None:
            conn, _ = other.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"hello, not HTTP\n")

        thread = threading.Thread(target=answer)
        thread.start()
        done = quayctl(tmp_path, "status")
        thread.join(10)
    assert done.returncode == 4
    assert done.stderr.startswith(f"quayctl status: cannot talk to quayd on {tmp_path}/quayd.sock")


@pytest.mark.usefixtures("server")
def test_ping(run_dir: Path) -> None:
    done = quayctl(run_dir, "ping")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"quayd {os.getpid()} is up\n", "")


@pytest.mark.usefixtures("server")
def test_plan(agent: Agent, run_dir: Path) -> None:
    done = quayctl(run_dir, "plan")
    assert (done.returncode, done.stdout, done.stderr) == (0, "nothing to do\n", "")
    agent.actions += [
        {
            "kind": "stop",
            "why": "replace",
            "unit": "web",
            "reason": "unit changed: replacing the container",
        },
        {"kind": "pull", "unit": "db", "reason": "image missing"},
        {"kind": "stop", "why": "failure", "unit": "job", "reason": "not ready within 5s"},
    ]
    done = quayctl(run_dir, "plan")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "replace web: unit changed: replacing the container\n"
        "pull db: image missing\n"
        "stop job: not ready within 5s\n"
    )
    done = quayctl(run_dir, "plan", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"actions": agent.actions, "wake_at": None}


def test_a_plan_route_without_handler_exits_4(loop: LoopThread, run_dir: Path) -> None:
    api = ApiServer(run_dir / "quayd.sock", {})
    loop.run(api.start())
    try:
        done = quayctl(run_dir, "plan")
    finally:
        loop.run(api.close())
    assert done.returncode == 4
    assert done.stderr == ("quayctl plan: GET /v1/plan: this agent has no 'plan'\n")


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
@pytest.mark.parametrize(
    "command",
    [["status"], ["plan"], ["show", "web"], ["events"], ["wait", "web"], ["restart", "web"]],
)
def test_the_lean_commands_import_no_pydantic_httpx_aiohttp(
    run_dir: Path, command: list[str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(QUAYCTL), "--run-dir", str(run_dir), *command],
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
    heavy = ("pydantic", "httpx", "aiohttp", "h11", "tomli_w", "structlog", "asyncio")
    assert not {m for m in imported if m.split(".")[0] in heavy}
    assert "quayd.cli.control" in imported
    assert {m for m in imported if m.startswith("quayd")} <= {
        "quayd",
        "quayd.cli",
        "quayd.cli.quayctl",
        "quayd.cli.client",
        "quayd.cli.status",
        "quayd.cli.control",
        "quayd.cli.run_parser",  # run's and attach's options: argparse only
    }


# --- HTTP ----------------------------------------------------------------------------------------


def test_routes_answer_json_on_one_kept_alive_connection(server: ApiServer, agent: Agent) -> None:
    conn = connect(server.path)
    try:
        assert exchange(conn, "GET", "/v1/status") == (200, agent.payload())
        agent.units.clear()
        assert exchange(conn, "GET", "/v1/status") == (200, {**agent.payload(), "units": []})
        assert exchange(conn, "GET", "/v1/ping") == (200, {"pid": os.getpid(), "version": "0.1.0"})
        assert exchange(conn, "POST", "/v1/units/web/restart") == (200, {"restarted": "web"})
        # An error does not end the connection either.
        assert exchange(conn, "GET", "/v1/units/db")[0] == 404
        assert exchange(conn, "GET", "/v1/plan") == (200, {"actions": [], "wake_at": None})
    finally:
        conn.close()
    assert agent.restarted == ["web"]


def test_params_merge_path_query_and_body_and_the_body_wins(server: ApiServer) -> None:
    body = json.dumps({"argv": ["true"], "timeout": 5}).encode()
    status, reply = call(server.path, "POST", "/v1/units/web/exec?timeout=query&argv=q", body)
    assert status == 200
    assert reply == {"params": {"name": "web", "argv": ["true"], "timeout": 5}}
    # No body, an empty one and whitespace are all "no params".
    for empty in (None, b"", b" \n"):
        assert call(server.path, "POST", "/v1/units/web/exec", empty) == (
            200,
            {"params": {"name": "web"}},
        )


@pytest.mark.parametrize(
    ("target", "body", "message"),
    [
        ("/v1/units/web/exec", {"argv": ["true"], "timout": 5}, "unknown parameter 'timout'"),
        ("/v1/units/web/exec?extra=1", {"argv": ["true"]}, "unknown parameter 'extra'"),
        ("/v1/units/web/exec", {"name": "db"}, "'name' is in the path"),
        ("/v1/units/web/exec", {"argv": "true"}, "argv must be a list of strings"),
        ("/v1/units/web/exec", {"argv": ["a\0b"]}, "argv holds a NUL"),
        ("/v1/units/web/exec", {"timeout": -1}, "timeout must be a number of seconds"),
        ("/v1/units/web/exec", {"timeout": True}, "timeout must be a number of seconds"),
        ("/v1/units/web/exec?timeout=5", None, "timeout must be a number of seconds"),
        ("/v1/units/web%00/exec", None, "name holds a NUL"),
    ],
)
def test_parameters_the_handler_does_not_take_are_refused_before_it_runs(
    server: ApiServer, target: str, body: Any, message: str
) -> None:
    raw = json.dumps(body).encode() if body is not None else None
    status, reply = call(server.path, "POST", target, raw)
    assert status == 400, reply
    assert reply["error"]["code"] == "bad-request"
    assert message in reply["error"]["message"]


@pytest.mark.parametrize(
    ("method", "target", "body", "status", "code", "message"),
    [
        ("POST", "/v1/units/web/exec", b"{nope", 400, "bad-request", "the body is not JSON"),
        ("POST", "/v1/units/web/exec", b"\xff\xfe", 400, "bad-request", "the body is not JSON"),
        ("POST", "/v1/units/web/exec", b"[1, 2]", 400, "bad-request", "the body must be a JSON"),
        ("POST", "/v1/units/web/exec", b'"x"', 400, "bad-request", "the body must be a JSON"),
        ("POST", "/v1/units/web/exec", b"[" * 100_000, 400, "bad-request", "the body is not"),
        ("GET", "/v1/units/nope", None, 404, "not-found", "there is no unit 'nope'"),
        ("GET", "/v1/nothing", None, 404, "not-found", "there is no route /v1/nothing"),
        ("GET", "/", None, 404, "not-found", "there is no route /"),
        ("GET", "/v1/reload", None, 405, "method-not-allowed", "GET is not allowed on /v1/rel"),
        ("DELETE", "/v1/status", None, 405, "method-not-allowed", "DELETE is not allowed"),
        ("POST", "/v1/units/web/stop", None, 501, "not-implemented", "POST /v1/units/{name}/"),
        ("POST", "/v1/reload", None, 501, "not-implemented", "POST /v1/reload: this agent has"),
        ("GET", "/v1/units/boom", None, 500, "failed", "show failed: the handler broke"),
        ("GET", "/v1/units/odd", None, 500, "failed", "show failed: the result is not JSON"),
        ("GET", "/v1/events?follow=maybe", None, 400, "bad-request", "follow=maybe: true or"),
        ("GET", "/v1/events?since=x", None, 400, "bad-request", "since=x: a sequence number"),
    ],
)
def test_a_bad_request_gets_a_json_error_and_the_server_goes_on(  # noqa: PLR0917
    server: ApiServer,
    agent: Agent,
    method: str,
    target: str,
    body: bytes | None,
    status: int,
    code: str,
    message: str,
) -> None:
    got, reply = call(server.path, method, target, body)
    assert (got, set(reply), reply["error"]["code"]) == (status, {"error"}, code), reply
    assert reply["error"]["message"].startswith(message), reply
    assert call(server.path, "GET", "/v1/status") == (200, agent.payload())


def test_a_body_over_1_mib_is_refused_with_413(server: ApiServer) -> None:
    def padded(size: int) -> bytes:
        body = json.dumps({"argv": [""]}).encode()
        return body.replace(b'""', b'"' + b"x" * (size - len(body)) + b'"')

    fits = padded(MAX_BODY)
    assert len(fits) == MAX_BODY == 1024 * 1024
    assert call(server.path, "POST", "/v1/units/web/exec", fits)[0] == 200
    status, reply = call(server.path, "POST", "/v1/units/web/exec", padded(MAX_BODY + 1))
    assert (status, reply["error"]["code"]) == (413, "too-large")
    assert reply["error"]["message"] == "a request body is at most 1048576 bytes"
    # Chunked, with no length announced: the server counts as it reads.
    conn = connect(server.path)
    try:
        conn.putrequest("POST", "/v1/units/web/exec")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(3):
                conn.send(b"80000\r\n" + b" " * 0x80000 + b"\r\n")
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "too-large"
    finally:
        conn.close()


def test_a_body_that_never_comes_does_not_hold_a_handler_forever(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_connection, "BODY_TIMEOUT", 1.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(30)
        raw.connect(str(server.path))
        raw.sendall(
            b"POST /v1/units/web/exec HTTP/1.1\r\nHost: quay\r\nContent-Length: 10\r\n\r\n{"
        )
        # The server answers 408 after BODY_TIMEOUT; meanwhile others are served.
        assert call(server.path, "GET", "/v1/ping")[0] == 200
        response = http.client.HTTPResponse(raw)
        response.begin()
        status, reply = response.status, json.loads(response.read())
    assert (status, reply["error"]["code"]) == (408, "timeout")
    assert reply["error"]["message"] == "the body did not arrive within 1s"


def test_an_unknown_transfer_coding_is_the_clients_error_not_ours(server: ApiServer) -> None:
    """h11 hints 501 (RFC 9112 allows it); bad input gets a 400 of ours all the same."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(30)
        raw.connect(str(server.path))
        raw.sendall(b"POST /v1/plan HTTP/1.1\r\nHost: quay\r\nTransfer-Encoding: gzip\r\n\r\n")
        response = http.client.HTTPResponse(raw)
        response.begin()
        status, reply = response.status, json.loads(response.read())
    assert (status, reply["error"]["code"]) == (400, "bad-request")
    assert reply["error"]["message"].startswith("not a request this server reads:")
    assert call(server.path, "GET", "/v1/ping")[0] == 200


def test_a_handler_failure_never_stops_the_server(server: ApiServer, agent: Agent) -> None:
    for _ in range(3):
        assert call(server.path, "GET", "/v1/units/boom")[0] == 500
    assert client.request(server.path, "GET", "/v1/status") == agent.payload()


def test_a_slow_handler_holds_only_its_own_connection(server: ApiServer, agent: Agent) -> None:
    slow = connect(server.path)
    try:
        slow.request("GET", "/v1/units/slow")
        assert client.request(server.path, "GET", "/v1/status") == agent.payload()
        agent.release.set()
        response = slow.getresponse()
        assert (response.status, json.loads(response.read())) == (200, "done")
    finally:
        slow.close()


def test_client_errors(server: ApiServer, agent: Agent) -> None:
    with pytest.raises(client.AgentError) as caught:
        client.request(server.path, "GET", "/v1/units/boom")
    assert (caught.value.code, caught.value.message, caught.value.status) == (
        "failed",
        "show failed: the handler broke",
        500,
    )
    with pytest.raises(client.AgentError, match="not-found") as caught:
        client.request(server.path, "GET", "/v1/units/nope")
    assert caught.value.status == 404
    assert client.request(server.path, "POST", "/v1/units/db/restart", {}) == {"restarted": "db"}
    with pytest.raises(client.AgentUnreachableError, match=r"did not answer .* within 0\.2s"):
        client.request(server.path, "GET", "/v1/units/slow", timeout=0.2)
    agent.release.set()


# --- streams -------------------------------------------------------------------------------------


def test_a_stream_delivers_its_items_as_ndjson_then_ends(server: ApiServer, agent: Agent) -> None:
    conn = connect(server.path)
    try:
        conn.request("GET", "/v1/events?since=10")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/x-ndjson"
        assert response.getheader("Transfer-Encoding") == "chunked"
        lines = response.read().splitlines()
    finally:
        conn.close()
    assert [json.loads(line)["seq"] for line in lines] == [11, 12, 13]
    assert agent.stream_closed.wait(5)
    items = list(client.stream(server.path, "/v1/events?follow=false"))
    assert items == [
        {"seq": seq, "at": NOW, "unit": "web", "kind": "started", "message": "up"}
        for seq in (1, 2, 3)
    ]


def test_a_client_that_goes_away_mid_stream_closes_the_iterator(
    server: ApiServer, agent: Agent
) -> None:
    events = client.stream(server.path, "/v1/events?follow=true", timeout=10)
    assert [next(events)["seq"] for _ in range(3)] == [1, 2, 3]
    assert not agent.stream_closed.wait(0.5)  # following: the stream stays open
    events.close()  # hangs up
    assert agent.stream_closed.wait(5)
    assert client.request(server.path, "GET", "/v1/ping")["pid"] == os.getpid()


def test_closing_the_server_ends_its_streams(loop: LoopThread, agent: Agent, run_dir: Path) -> None:
    api = ApiServer(run_dir / "quayd.sock", agent.handlers(), read_only=READ_ONLY)
    loop.run(api.start())
    events = client.stream(api.path, "/v1/events?follow=1", timeout=10)
    try:
        assert [next(events)["seq"] for _ in range(3)] == [1, 2, 3]
        started = time.monotonic()
        loop.run(api.close())
        assert time.monotonic() - started < 2
        assert agent.stream_closed.wait(5)
        assert list(events) == []  # the end, not a hang
    finally:
        events.close()


def test_a_stream_that_fails_ends_with_an_error_line(loop: LoopThread, run_dir: Path) -> None:
    async def events(params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield {"seq": 1}
        raise RuntimeError("the journal is gone")

    api = ApiServer(run_dir / "quayd.sock", {"events": events})
    loop.run(api.start())
    try:
        got: list[dict[str, Any]] = []
        with pytest.raises(client.AgentError, match="events failed: the journal is gone"):
            got.extend(client.stream(api.path, "/v1/events"))
        assert got == [{"seq": 1}]
    finally:
        loop.run(api.close())


# --- access --------------------------------------------------------------------------------------


@pytest.fixture
def quay_group() -> Iterator[tuple[str, int]]:
    """A throwaway group standing for `quay`, deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a group and to connect as another user")
    name = f"qt{uuid.uuid4().hex[:10]}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=True, capture_output=True)


ASK_AS_ANOTHER_USER = """\
import http.client, json, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect("quayd.sock")  # relative: pytest's tmp dirs are root's, mode 0700
out = []
for method, target in json.loads(sys.argv[1]):
    conn = Conn("quay", timeout=10)
    try:
        conn.request(method, target)
        response = conn.getresponse()
        out.append([response.status, json.loads(response.read())])
    except OSError as error:
        out.append([None, error.strerror])
    finally:
        conn.close()
print(json.dumps(out))
"""


def ask_as_nobody(
    run_dir: Path, calls: list[tuple[str, str]], groups: list[int]
) -> list[tuple[int | None, Any]]:
    done = subprocess.run(
        [os.path.realpath(sys.executable), "-I", "-c", ASK_AS_ANOTHER_USER, json.dumps(calls)],
        cwd=run_dir,
        user=NOBODY,
        group=NOBODY,
        extra_groups=groups,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [tuple(answer) for answer in json.loads(done.stdout)]


@pytest.fixture
def group_server(
    loop: LoopThread, agent: Agent, run_dir: Path, quay_group: tuple[str, int]
) -> Iterator[ApiServer]:
    api = ApiServer(
        run_dir / "quayd.sock", agent.handlers(), read_only=READ_ONLY, group=quay_group[0]
    )
    loop.run(api.start())
    yield api
    loop.run(api.close())


def test_the_socket_is_0660_and_belongs_to_the_group(
    group_server: ApiServer, quay_group: tuple[str, int]
) -> None:
    info = group_server.path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (0, quay_group[1])


def test_a_group_member_may_read_but_not_steer(
    group_server: ApiServer, agent: Agent, run_dir: Path, quay_group: tuple[str, int]
) -> None:
    calls = [
        ("GET", "/v1/status"),
        ("GET", "/v1/ping"),
        ("GET", "/v1/units/web"),
        ("POST", "/v1/units/web/restart"),
        ("POST", "/v1/reload"),  # refused before it is found missing
    ]
    with structlog.testing.capture_logs() as logs:
        answers = ask_as_nobody(run_dir, calls, [quay_group[1]])
    assert answers[:3] == [(200, agent.payload()), (200, answers[1][1]), (200, agent.units[0])]
    for status, reply in answers[3:]:
        assert status == 403
        assert reply["error"]["code"] == "forbidden"
        assert re.fullmatch(
            rf"permission denied: uid {NOBODY} \(pid \d+\) may not call POST /v1/\S+ \(needs "
            rf"root, or membership of group {quay_group[0]} for read-only calls\)",
            reply["error"]["message"],
        )
    assert agent.restarted == []
    refused = [e for e in logs if e["event"] == "API call refused"]
    assert [(e["handler"], e["uid"], e["log_level"]) for e in refused] == [
        ("restart", NOBODY, "warning"),
        ("reload", NOBODY, "warning"),
    ]


def test_a_stranger_cannot_connect_nor_call(
    group_server: ApiServer, agent: Agent, run_dir: Path
) -> None:
    # The socket's mode keeps strangers out...
    assert ask_as_nobody(run_dir, [("GET", "/v1/status")], []) == [(None, "Permission denied")]
    # ...and, the mode opened, SO_PEERCRED does: even read-only calls are refused.
    os.chmod(group_server.path, 0o666)
    answers = ask_as_nobody(run_dir, [("GET", "/v1/status"), ("GET", "/v1/ping")], [])
    assert [(status, reply["error"]["code"]) for status, reply in answers] == [
        (403, "forbidden"),
        (403, "forbidden"),
    ]
    assert client.request(group_server.path, "GET", "/v1/status") == agent.payload()  # root


def test_without_the_group_the_socket_is_roots_alone(
    loop: LoopThread, agent: Agent, run_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    api = ApiServer(run_dir / "quayd.sock", agent.handlers(), group="no-such-group-for-quay")
    loop.run(api.start())
    try:
        info = api.path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o660, 0, os.getgid())
        os.chmod(api.path, 0o666)
        answers = ask_as_nobody(run_dir, [("GET", "/v1/status")], [])
        assert answers[0][0] == 403
    finally:
        loop.run(api.close())


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
    held = connect(path)  # an open, idle connection does not hold close() up
    try:
        assert exchange(held, "GET", "/v1/ping")[0] == 200
        started = time.monotonic()
        loop.run(api.close())
        assert time.monotonic() - started < 2
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
        assert client.request(path, "GET", "/v1/ping")["pid"] == os.getpid()
    finally:
        loop.run(api.close())


def test_a_live_agent_or_a_file_is_never_replaced(
    loop: LoopThread, server: ApiServer, tmp_path: Path
) -> None:
    with pytest.raises(ApiStartError, match="another agent answers on"):
        loop.run(ApiServer(server.path, {}).start())
    assert client.request(server.path, "GET", "/v1/ping")["pid"] == os.getpid()
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
    async def ping(params: dict[str, Any]) -> Any:
        return None

    with pytest.raises(ValueError, match="built into"):
        ApiServer(tmp_path / "s", {"ping": ping})


def test_the_route_table_is_the_documented_one() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    openapi = (Path(__file__).parents[2] / "docs" / "openapi.yaml").read_text()
    for route in ROUTES:
        assert f"{route.method} {route.path}" in docs, route
        assert f"  {route.path}:" in openapi, route
        assert f"    {route.method.lower()}:" in openapi
