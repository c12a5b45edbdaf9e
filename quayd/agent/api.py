"""The agent's API socket: one JSON request per line in, one JSON reply per line out.

Why a line of JSON over a unix socket, and not HTTP: ``quayctl status`` must answer in tens of
milliseconds with the standard library alone (an HTTP client costs more to import than the whole
call takes), and a unix socket brings its own access control: the file is root's with mode 0660,
and the kernel says who is calling (``SO_PEERCRED``), with no token to issue or leak.

The protocol (``quayd.cli.client`` is its client)::

    -> {"method": "status", "params": {}}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": {"code": "unknown-method", "message": "..."}}

Error codes: ``bad-request`` (not JSON, not a request object, a line over 1 MiB, or a handler's
:class:`RequestError`), ``unknown-method``, ``forbidden`` (a method that changes the agent, called
by a user other than root or the agent's own), ``failed`` (the handler raised; the server goes
on). A connection may carry any number of requests, answered in order. ``ping`` is built in: it
proves the agent's loop turns, whatever state the handlers are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from quayd import __version__

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

SOCKET_NAME = "quayd.sock"
"""The socket's name in the run directory (``quayd.cli.client.SOCKET_NAME`` says the same)."""
SOCKET_MODE = 0o660
MAX_LINE = 1024 * 1024
"""The longest request line, newline excluded. Requests are small; this bounds a client's memory."""

log = logging.getLogger("quayd.api")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class RequestError(Exception):
    """Raised by a handler to answer with a chosen code (``bad-request`` for bad params)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ApiStartError(Exception):
    """The socket cannot be served: its path is taken by a live agent or by something else."""


class ApiServer:
    """Serve ``handlers`` on the unix socket ``path``.

    ``read_only`` names the methods any caller may use; every other method is refused to peers
    that are neither root nor the agent's own user. The socket's mode (0660, root's) already keeps
    strangers out: this check only stops a member of the socket's group from steering the agent.
    """

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        read_only: Collection[str] = ("status",),
    ) -> None:
        if "ping" in handlers:
            raise ValueError('"ping" is built into the API server')
        self.path = path
        self._handlers: dict[str, Handler] = {"ping": _ping, **handlers}
        self._read_only = frozenset(read_only) | {"ping"}
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind and listen. A socket file left by a dead agent is replaced; a live one is not."""
        if self._listener is not None:
            raise RuntimeError("the API server is already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind() creates the file with the socket inode's mode less the umask: set it first, so
            # the path is never wider than 0660, not even between bind() and chmod().
            os.fchmod(sock.fileno(), SOCKET_MODE)
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, SOCKET_MODE)  # exactly 0660, whatever the umask took away
            info = os.stat(self.path)
            self._identity = (info.st_dev, info.st_ino)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            self._remove_own_socket()
            raise
        self._listener = sock
        asyncio.get_running_loop().add_reader(sock, self._accept)

    async def close(self) -> None:
        """Stop listening, end open connections, and remove the socket file if it is still ours."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        asyncio.get_running_loop().remove_reader(listener)
        listener.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        self._remove_own_socket()

    async def _remove_stale(self) -> None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ApiStartError(f"{self.path} exists and is not a socket; not removing it")
        try:
            _, writer = await asyncio.open_unix_connection(os.fspath(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # nobody listens: a crashed agent's leftover
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise ApiStartError(f"another agent answers on {self.path}")

    def _remove_own_socket(self) -> None:
        """Unlink the socket only if it is the one we bound: a newer agent may have replaced it."""
        if self._identity is None:
            return
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                self.path.unlink()
        self._identity = None

    def _accept(self) -> None:
        """Accept every waiting connection; the loop calls this when the listener is readable.

        Not ``asyncio.start_unix_server``: its connections become tasks that close() cannot see
        before they first run, and on 3.11 one accepted just before close() leaks its transport.
        Here accepting is synchronous, each connection's task is registered as it is made, and
        its socket is closed when the task ends, however it ends (even cancelled before it ran).
        """
        loop = asyncio.get_running_loop()
        while self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and the like: pause rather than spin on it
                log.warning("API socket: cannot accept a connection: %s", error)
                loop.remove_reader(self._listener)
                loop.call_later(0.5, self._listen_again)
                return
            task = loop.create_task(self._serve(conn))
            self._connections.add(task)
            task.add_done_callback(functools.partial(self._forget, conn))

    def _listen_again(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener, self._accept)

    def _forget(self, conn: socket.socket, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        conn.close()  # a no-op once the stream closed it

    async def _serve(self, conn: socket.socket) -> None:
        uid = _peer_uid(conn)
        reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_LINE)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # asyncio's LimitOverrunError, as readline() reports it
                    # Resynchronising inside a runaway line is guesswork: answer, then hang up.
                    reply = _error("bad-request", f"a request line is at most {MAX_LINE} bytes")
                    await _send(writer, reply)
                    break
                if not line:
                    break
                await _send(writer, await self._dispatch(line, uid))
        except ConnectionError:
            pass  # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes, uid: int) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as error:
            return _error("bad-request", f"not a JSON line: {error}")
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error("bad-request", 'a request is {"method": "NAME", "params": {...}}')
        method: str = request["method"]
        params = request.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return _error("bad-request", f"the params of {method} must be a JSON object")
        handler = self._handlers.get(method)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return _error("unknown-method", f'there is no method "{method}"; known: {known}')
        if method not in self._read_only and uid not in (0, os.geteuid()):
            return _error("forbidden", f'"{method}" changes the agent: only root may call it')
        try:
            result = await handler(params)
        except RequestError as error:
            return _error(error.code, error.message)
        except Exception as error:
            log.exception("API method %s failed", method)
            return _error("failed", f"{method} failed: {error or type(error).__name__}")
        return {"ok": True, "result": result}


async def _ping(params: dict[str, Any]) -> dict[str, Any]:
    del params
    return {"pid": os.getpid(), "version": __version__}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _encode(reply: dict[str, Any]) -> bytes:
    """One line: ``json.dumps`` escapes every newline inside strings, so the reply cannot split."""
    try:
        text = json.dumps(reply, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as error:
        log.error("API reply is not JSON: %s", error)
        text = json.dumps(_error("failed", f"the result is not JSON: {error}"))
    return text.encode() + b"\n"


async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    writer.write(_encode(reply))
    await writer.drain()


def _peer_uid(conn: socket.socket) -> int:
    """The uid of the process that connected, as the kernel recorded it at connect()."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _, uid, _ = _PEERCRED.unpack(creds)
    return int(uid)
