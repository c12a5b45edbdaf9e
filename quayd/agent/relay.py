"""The agent's relay of an ad-hoc container's output (``quayctl run``), to its log and clients.

The container's stdout and stderr are pipes (``Executor.start(pipes=True)``); the relay reads
both on the agent's loop and writes each to the unit's log (journald's stream or its log file,
whole lines, so the two never split a line) and, as frames (:mod:`quayd.agent.frames`), to every
client attached on ``RUN_DIR/attach.sock``. Reading stops while a client is slow to take a
frame, so a container writing faster than its client reads waits, as under ``docker run``.

Output written before the first client attached (``quayctl run`` attaches right after the
container started) is kept for it when the run asked for a client (``attach``): up to
:data:`REPLAY_MAX` bytes, then reading waits for the client (:data:`ATTACH_WAIT` at most, then
the output goes to the log only); with ``-d`` nothing is kept (``quayctl logs`` has it). With
``-i`` the container's stdin is a pipe too, fed with what a client sends on its connection; the
client's end of input closes it. With a terminal (``-t``) the relay reads the pty's master
instead, one stream; its clients write their input to the master themselves. Once the container
ended (:meth:`Relay.finish`) and its pipes
are drained, each client gets the exit frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from typing import Any

from quayd.agent.frames import STDERR, STDOUT, LineSplitter, encode, encode_exit
from quayd.agent.logs import logger
from quayd.reconcile.executor import Pipes

REPLAY_MAX = 1024 * 1024
"""Bytes of output kept for a client that has not attached yet; beyond, the container's writes
wait for it (at most :data:`ATTACH_WAIT`)."""
ATTACH_WAIT = 10.0
"""Seconds the output waits for a client announced but not attached (then: the log only)."""
DRAIN_TIMEOUT = 2.0
"""Seconds the pipes may stay open once the container's init ended (then the exit is sent)."""
_CHUNK = 65536

log = logger("quayd.relay")


class Relay:
    def __init__(self, name: str, pipes: Pipes, *, hold: bool) -> None:
        self.name = name
        self._pipes = pipes
        self._hold = hold
        self._stdin = pipes.stdin
        self._replay: list[bytes] = []
        self._replay_size = 0
        self._clients: list[socket.socket] = []
        self._attached = False
        self._lock = asyncio.Lock()
        self._pumps: list[asyncio.Task[None]] = []
        self._ended: dict[str, Any] | None = None
        self._done = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        self._log_lost = 0
        self._closed = False
        self._attach_seen = asyncio.Event()
        if pipes.stderr is not None:  # pipes; a terminal's master (stderr None) is shared
            os.set_blocking(pipes.stdout, False)  # with its clients: left as it is
            os.set_blocking(pipes.stderr, False)
        os.set_blocking(pipes.log, False)  # a stalled journald must never stall the loop
        if self._stdin is not None:
            os.set_blocking(self._stdin, False)

    @property
    def awaited(self) -> bool:
        """A client was announced (``quayctl run`` without -d) and has not attached yet."""
        return self._hold and not self._attached

    @property
    def interactive(self) -> bool:
        return self._stdin is not None

    def start(self) -> None:
        self._pumps = [asyncio.create_task(self._pump(self._pipes.stdout, STDOUT))]
        if self._pipes.stderr is not None:
            self._pumps.append(asyncio.create_task(self._pump(self._pipes.stderr, STDERR)))

    def finish(self, ended: dict[str, Any]) -> None:
        """The container ended: drain what its pipes still hold, then send ``ended``."""
        if self._ended is not None:
            return
        self._ended = ended
        self._closer = asyncio.create_task(self._complete())

    async def serve(self, connection: socket.socket, *, announce: bool = True) -> None:
        """One attached client (its ``NAME\\n`` already read): ``*`` and a newline (unless
        ``announce`` is false: a terminal's client got ``+`` and the master), the output kept
        for it, then live frames; its bytes go to the container's stdin. Returns once it got
        the exit frame, or went away."""
        loop = asyncio.get_running_loop()
        if announce:
            await loop.sock_sendall(connection, b"*\n")
        async with self._lock:
            replay, self._replay, self._replay_size = self._replay, [], 0
            self._attached = True
            self._attach_seen.set()
            try:
                for frame in replay:
                    await loop.sock_sendall(connection, frame)
            except OSError:
                return
            self._clients.append(connection)
        feeding = asyncio.create_task(self._feed(connection))
        try:
            await self._done.wait()
            async with self._lock:
                if connection in self._clients:
                    self._clients.remove(connection)
                    with contextlib.suppress(OSError):
                        await loop.sock_sendall(connection, encode_exit(self._ended or {}))
        finally:
            feeding.cancel()

    def close(self) -> None:
        """Stop relaying (the agent stops, or the unit went before it started)."""
        for task in (*self._pumps, self._closer):
            if task is not None:
                task.cancel()
        self._close_fds()
        self._done.set()

    def _close_fds(self) -> None:
        self._close_stdin()
        if not self._closed:
            self._closed = True
            for fd in (self._pipes.stdout, self._pipes.stderr, self._pipes.log):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    async def _pump(self, fd: int, stream: int) -> None:
        splitter = LineSplitter()
        while data := await _read(fd):
            self._log(splitter.feed(data))
            await self._deliver(encode(stream, data))
        self._log(splitter.flush())

    async def _deliver(self, frame: bytes) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self._lock:
                if not (self._hold and not self._attached):
                    for client in list(self._clients):
                        try:
                            await loop.sock_sendall(client, frame)
                        except OSError:  # it went away; the container goes on
                            self._clients.remove(client)
                    return
                if self._replay_size + len(frame) <= REPLAY_MAX:
                    self._replay.append(frame)
                    self._replay_size += len(frame)
                    return
            # Kept output is full: the container waits for its client, as on a full pipe
            # (outside the lock, which the client's attach takes), a while.
            try:
                await asyncio.wait_for(self._attach_seen.wait(), ATTACH_WAIT)
            except TimeoutError:
                if not self._attached:
                    log.warning("its client did not attach; its output goes to the log only",
                                unit=self.name)  # fmt: skip
                    self._hold = False

    def _log(self, data: bytes) -> None:
        if not data:
            return
        try:
            written = os.write(self._pipes.log, data)
        except BlockingIOError:
            written = 0
        except OSError as error:
            log.warning("cannot write an ad-hoc unit's log", unit=self.name, error=str(error))
            return
        if written < len(data):
            if not self._log_lost:
                log.warning("the log took no more; output dropped from it", unit=self.name)
            self._log_lost += len(data) - written

    async def _feed(self, connection: socket.socket) -> None:
        """The client's bytes to the container's stdin; its end of input closes stdin."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(connection, _CHUNK)
            except OSError:
                return
            if not data:
                self._close_stdin()
                return
            if self._stdin is None:
                continue  # no -i: its input is dropped
            try:
                await _write_all(self._stdin, data)
            except OSError:  # the container closed its stdin
                self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            with contextlib.suppress(OSError):
                os.close(self._stdin)
            self._stdin = None

    async def _complete(self) -> None:
        timeout = DRAIN_TIMEOUT + (ATTACH_WAIT if self.awaited else 0.0)
        try:
            await asyncio.wait_for(asyncio.gather(*self._pumps), timeout)
        except (TimeoutError, OSError) as error:
            log.info("an ad-hoc unit's pipes outlived it", unit=self.name, error=repr(error))
        self._close_fds()
        if self._log_lost:
            log.warning("output dropped from the log", unit=self.name, bytes=self._log_lost)
        self._done.set()


async def _read(fd: int) -> bytes:
    """The next bytes of a pipe or a terminal's master, once it is readable (so a master left
    blocking never blocks the loop: only the agent reads it); b"" at its end (a master reads
    EIO once the container's side is closed)."""
    loop = asyncio.get_running_loop()
    while True:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        try:
            return os.read(fd, _CHUNK)
        except BlockingIOError:
            continue
        except OSError as error:
            if error.errno == errno.EIO:
                return b""
            raise


async def _write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
