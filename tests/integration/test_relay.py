"""The agent's relay of an ad-hoc container's output (quayd/agent/relay.py) over real pipes, a
real unix socket pair as its client and a file as its log: what a writer sends reaches the
client as frames, stdout and stderr apart, and the log as whole lines; output written before the
client came is kept for it and, past what is kept, the writer waits for it; the client's bytes
reach stdin and its end of input closes it; the exit frame comes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from quayd.agent import relay as relay_module
from quayd.agent.frames import EXIT, STDERR, STDOUT, FrameReader, decode_exit
from quayd.agent.relay import Relay
from quayd.reconcile.executor import Pipes

pytestmark = pytest.mark.integration


class Container:
    """The container's side of the pipes (what its process would write and read)."""

    def __init__(self, log: Path, *, stdin: bool) -> None:
        out_r, self.stdout = os.pipe()
        err_r, self.stderr = os.pipe()
        self.stdin: int | None = None
        stdin_w = None
        if stdin:
            self.stdin, stdin_w = os.pipe()
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.pipes = Pipes(stdout=out_r, stderr=err_r, stdin=stdin_w, log=log_fd)

    def end(self) -> None:
        for fd in (self.stdout, self.stderr, self.stdin):
            if fd is not None:
                os.close(fd)


async def read_frames(client: socket.socket) -> list[tuple[int, bytes]]:
    """Everything the client gets until the exit frame (the ``*`` line first)."""
    loop = asyncio.get_running_loop()
    assert await loop.sock_recv(client, 2) == b"*\n"
    reader = FrameReader()
    frames: list[tuple[int, bytes]] = []
    while not frames or frames[-1][0] != EXIT:
        data = await loop.sock_recv(client, 65536)
        assert data, f"hung up before the exit frame: {frames!r}"
        frames += reader.feed(data)
    return frames


def joined(frames: list[tuple[int, bytes]], stream: int) -> bytes:
    return b"".join(payload for kind, payload in frames if kind == stream)


async def attached(relay: Relay) -> tuple[socket.socket, asyncio.Task[None]]:
    """A client's end, and the agent serving the other (closed once served, as the agent's)."""
    agent_end, client = socket.socketpair()
    agent_end.setblocking(False)
    client.setblocking(False)

    async def serve() -> None:
        with agent_end:
            await relay.serve(agent_end)

    return client, asyncio.create_task(serve())


def test_frames_stdout_and_stderr_apart_and_the_log_in_lines(tmp_path: Path) -> None:
    async def main() -> tuple[list[tuple[int, bytes]], bool]:
        container = Container(tmp_path / "log", stdin=False)
        relay = Relay("try", container.pipes, hold=True)
        relay.start()
        os.write(container.stdout, b"early out\n")  # before the client came: kept for it
        os.write(container.stderr, b"early err\nhalf ")
        await asyncio.sleep(0.05)
        assert relay.awaited
        client, serving = await attached(relay)
        reading = asyncio.create_task(read_frames(client))
        await asyncio.sleep(0.05)
        os.write(container.stdout, b"late out")
        os.write(container.stderr, b"a line\n")
        container.end()
        relay.finish({"code": 3})
        frames = await asyncio.wait_for(reading, 5)
        await asyncio.wait_for(serving, 5)
        client.close()
        return frames, relay.awaited

    frames, awaited = asyncio.run(main())
    assert not awaited
    assert joined(frames, STDOUT) == b"early out\nlate out"
    assert joined(frames, STDERR) == b"early err\nhalf a line\n"
    assert decode_exit(frames[-1][1]) == {"code": 3}
    lines = (tmp_path / "log").read_bytes().splitlines()
    assert sorted(lines) == [b"early err", b"early out", b"half a line", b"late out"]


def test_past_what_is_kept_the_writer_waits_for_its_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "REPLAY_MAX", 100_000)
    size = 1_000_000  # ten times what is kept, and more than a pipe holds

    async def main() -> tuple[list[tuple[int, bytes]], int]:
        container = Container(tmp_path / "log", stdin=False)
        relay = Relay("big", container.pipes, hold=True)
        relay.start()
        os.set_blocking(container.stdout, False)
        written = 0
        for _ in range(200):  # write what goes in, as a container would until it blocks
            with contextlib.suppress(BlockingIOError):
                written += os.write(container.stdout, b"x" * (size - written))
            if written == size:
                break
            await asyncio.sleep(0.01)
        blocked_at = written
        client, serving = await attached(relay)
        reading = asyncio.create_task(read_frames(client))
        os.set_blocking(container.stdout, True)
        rest = b"x" * (size - written)
        await asyncio.to_thread(os.write, container.stdout, rest)
        container.end()
        relay.finish({"code": 0})
        frames = await asyncio.wait_for(reading, 10)
        await asyncio.wait_for(serving, 5)
        client.close()
        return frames, blocked_at

    frames, blocked_at = asyncio.run(main())
    assert blocked_at < size  # it waited for the client
    assert len(joined(frames, STDOUT)) == size  # and nothing was lost


def test_stdin_from_the_client_and_its_end_of_input(tmp_path: Path) -> None:
    async def main() -> dict[str, Any]:
        container = Container(tmp_path / "log", stdin=True)
        relay = Relay("cat", container.pipes, hold=True)
        relay.start()
        client, serving = await attached(relay)
        loop = asyncio.get_running_loop()
        assert await loop.sock_recv(client, 2) == b"*\n"
        await loop.sock_sendall(client, b"hi\n")
        client.shutdown(socket.SHUT_WR)
        assert container.stdin is not None
        got = await asyncio.to_thread(os.read, container.stdin, 100)
        at_end = await asyncio.to_thread(os.read, container.stdin, 100)
        container.end()
        relay.finish({"code": 0})
        await asyncio.wait_for(serving, 5)
        client.close()
        return {"got": got, "at_end": at_end}

    assert asyncio.run(main()) == {"got": b"hi\n", "at_end": b""}
