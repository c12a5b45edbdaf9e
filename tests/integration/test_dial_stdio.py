"""``quayctl system dial-stdio``, the far end of quayctl --host (docs/remote.md), as a real
process: bytes relayed both ways, the end of stdin passed on as a half-close, the agent's end
ending it, a missing socket said with the host's name; and quayctl's HTTP client over it (the
same session class ssh gets, here with dial-stdio as the command) against the real API server,
a followed stream included.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quayd.agent.api import ApiServer
from quayd.cli import client
from quayd.cli.remote import SshSession
from tests.integration.test_api import READ_ONLY, Agent, LoopThread
from tests.support.agent import QUAYCTL

pytestmark = pytest.mark.integration


def serve_once(path: Path, handle: Callable[[socket.socket], None]) -> threading.Thread:
    """A unix server that takes one connection and gives it to ``handle``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def accept() -> None:
        with listener:
            connection, _ = listener.accept()
            with connection:
                handle(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


def dial(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(QUAYCTL), "system", "dial-stdio", "--socket", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_both_ways_with_the_end_of_input_as_a_half_close(tmp_path: Path) -> None:
    received = bytearray()

    def echo_after_the_end(connection: socket.socket) -> None:
        while chunk := connection.recv(65536):  # until the half-close
            received.extend(chunk)
        connection.sendall(b"got " + str(len(received)).encode() + b" bytes\n" + bytes(received))

    path = tmp_path / "peer.sock"
    server = serve_once(path, echo_after_the_end)
    payload = os.urandom(4 * 1024 * 1024)  # more than any pipe or socket buffer, both ways
    process = dial(path)
    out, err = process.communicate(payload, timeout=30)
    server.join(5)
    assert process.returncode == 0, err
    assert bytes(received) == payload
    assert out == f"got {len(payload)} bytes\n".encode() + payload


def test_the_agents_end_ends_it_while_stdin_stays_open(tmp_path: Path) -> None:
    path = tmp_path / "peer.sock"
    serve_once(path, lambda connection: connection.sendall(b"bye\n"))
    with dial(path) as process:  # stdin stays open until the end of the block
        assert process.stdout is not None
        assert process.stdout.read() == b"bye\n"  # stdout closed: the relay is over
        assert process.wait(10) == 0


def test_no_agent_is_said_with_the_host_and_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "quayd.sock"
    done = subprocess.run(
        [str(QUAYCTL), "system", "dial-stdio", "--socket", str(path)],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"quayctl system dial-stdio: quayd is not running on {socket.gethostname()}, or {path} "
        "is not its socket: No such file or directory\n"
    )


class DialConnector:
    """The client's connector with dial-stdio as its command: what ssh runs on the far host,
    run here, so the relay and the client's session are real end to end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sessions: list[SshSession] = []

    @property
    def where(self) -> str:
        return f"dial-stdio {self.path}"

    def open(self, timeout: float | None) -> SshSession:
        argv = [str(QUAYCTL), "system", "dial-stdio", "--socket", str(self.path)]
        self.sessions.append(SshSession(self.where, argv, timeout))
        return self.sessions[-1]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, Agent]]:
    loop = LoopThread()
    agent = Agent()
    server = ApiServer(tmp_path / "quayd.sock", agent.handlers(), read_only=READ_ONLY)
    loop.run(server.start())
    try:
        yield server, agent
    finally:
        loop.run(server.close())
        loop.stop()


def test_the_client_over_dial_stdio_calls_and_follows(api: tuple[ApiServer, Agent]) -> None:
    server, agent = api
    connector = DialConnector(server.path)
    assert client.request(connector, "GET", "/v1/status") == agent.payload()
    with pytest.raises(client.AgentError) as missing:
        client.request(connector, "GET", "/v1/units/nope")
    assert missing.value.code == "not-found"
    events = client.stream(connector, "/v1/events?follow=true", timeout=10)
    assert [next(events)["seq"] for _ in range(3)] == [1, 2, 3]
    assert not agent.stream_closed.wait(0.5)  # following, through the relay
    events.close()  # our end closed: dial-stdio half-closes, the agent stops following
    assert agent.stream_closed.wait(5)
    for session in connector.sessions:  # every relay ended by itself, none left running
        assert session.process.poll() == 0


def test_the_client_names_a_far_socket_with_no_agent(tmp_path: Path) -> None:
    connector = DialConnector(tmp_path / "quayd.sock")
    with pytest.raises(client.AgentUnreachableError) as raised:
        client.request(connector, "GET", "/v1/status")
    assert str(raised.value).startswith(
        f"on dial-stdio {tmp_path}/quayd.sock: quayctl system dial-stdio: quayd is not running on "
    )
