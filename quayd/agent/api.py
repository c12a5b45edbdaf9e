"""The agent's control API: HTTP/1.1+JSON on a unix socket (``RUN_DIR/quayd.sock``).

docs/api.md describes every route for its callers (docs/openapi.yaml says the same as OpenAPI);
``quayd.cli.client`` is quayctl's client. The server is this module's own, small: asyncio streams
carry the bytes, h11 (sans-I/O) parses requests and frames replies, and this module does the rest
(routing, access, bodies, streams). It replaced aiohttp, whose import alone cost 10.5 MiB of RSS
for a dozen routes on a unix socket. This module maps HTTP onto the agent's handlers:

* A handler is ``async (params) -> result``; ``params`` merges the path parameters, the query
  parameters and the JSON body object (the body wins). The result is sent as JSON with status 200.
  A handler named in :data:`STREAMING` returns an async iterator of objects instead (or is an
  async generator function), sent as NDJSON (one object per line, flushed each) over a chunked
  response until the iterator ends or the client goes away (the iterator is then closed). An
  error once the stream has begun ends it with one last line, ``{"error": {...}}`` (a
  :class:`RequestError` raised by the iterator gives its own code and message).
* Before a handler runs, its parameters are checked against :mod:`request_schema` (known keys,
  values of the right kinds, no NUL): bad input is a 400 of ours, never a handler's exception.
* Errors are ``{"error": {"code": CODE, "message": TEXT}}`` with the HTTP status of the code
  (:data:`HTTP_STATUS`). A handler chooses one by raising :class:`RequestError`; any other
  exception is logged and answered ``failed`` (500), and the server goes on. A request that is
  not HTTP/1.1 as h11 reads it (no ``Host``, a bad request line) is answered 400 and the
  connection closed.
* Access: the socket file is mode 0660, ``root:quay`` (the group when it exists), and each
  request's peer is checked with ``SO_PEERCRED``: root (or the agent's own user) may call
  everything; members of the group ``quay`` may call the read-only handlers; anyone else is
  refused (403) and the refusal is logged.
* Connections are kept alive between requests (idle ones for :data:`KEEP_ALIVE_TIMEOUT`). A body
  left unread (a refused call, a 413) is read and dropped for :data:`LINGERING_TIME` so the
  client, still sending, gets to read the answer; then the connection goes on or is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import h11
import structlog

from quayd import __version__
from quayd.agent import request_schema
from quayd.agent.api_connection import (
    BODY_TIMEOUT,
    END,
    LINGERING_TIME,
    MAX_BODY,
    READ_SIZE,
    ClientGoneError,
    Connection,
    Reply,
    RequestFailedError,
    encode,
    error_body,
    error_reply,
    read_params,
)
from quayd.agent.api_peers import Peer, group_id
from quayd.agent.api_routes import (
    HTTP_STATUS,
    READ_ONLY,
    ROUTES,
    STREAMING,
    Route,
    RouteMiss,
    find_route,
    split_target,
)

__all__ = [
    "BODY_TIMEOUT",
    "HTTP_STATUS",
    "LINGERING_TIME",
    "MAX_BODY",
    "READ_ONLY",
    "ROUTES",
    "STREAMING",
    "ApiServer",
    "ApiStartError",
    "Handler",
    "Peer",
    "RequestError",
    "Route",
]

Handler = Callable[[dict[str, Any]], Awaitable[Any] | AsyncIterator[Any]]
"""``async def h(params) -> result``; a streaming one may also be an async generator function."""

SOCKET_NAME = "quayd.sock"
"""The socket's name in the run directory (``quayd.cli.client.SOCKET_NAME`` says the same)."""
SOCKET_MODE = 0o660
GROUP = "quay"
"""The group whose members may call the read-only handlers."""
SHUTDOWN_TIMEOUT = 2.0
"""Seconds :meth:`ApiServer.close` lets running handlers finish before they are cancelled."""
KEEP_ALIVE_TIMEOUT = 75.0
"""Seconds an idle connection (or one sending a request's head) is kept before it is closed."""
_POLL = 0.25  # how often a quiet stream checks that its client is still there


_CODE_OF_STATUS = {status: code for code, status in HTTP_STATUS.items()}

log = structlog.get_logger("quayd.api")


class RequestError(Exception):
    """Raised by a handler to answer with a chosen code (``bad-request`` for bad params)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ApiStartError(Exception):
    """The socket cannot be served: its path is taken by a live agent or by something else."""


class ApiServer:
    """Serve ``handlers`` over HTTP on the unix socket ``path`` (see the module's docstring).

    ``read_only`` names the handlers that members of ``group`` may call; ``ping`` is built in
    and always read-only.
    """

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        read_only: Collection[str] = READ_ONLY,
        group: str = GROUP,
    ) -> None:
        if "ping" in handlers:
            raise ValueError('"ping" is built into the API server')
        self.path = path
        self.group = group
        self._handlers: dict[str, Handler] = {"ping": _ping, **handlers}
        self._read_only = frozenset(read_only) | {"ping"}
        self._gid: int | None = None
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None
        self._connections: dict[asyncio.Task[Any], Connection] = {}
        self._closing = False

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

    # --- the socket ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve. A socket file left by a dead agent is replaced; a live one is not."""
        if self._server is not None:
            raise RuntimeError("the API server is already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._remove_stale()
        self._gid = group_id(self.group)
        self._closing = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind() creates the file with the socket inode's mode less the umask: set it first, so
            # the path is never wider than 0660, not even between bind() and chmod().
            os.fchmod(sock.fileno(), SOCKET_MODE)
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, SOCKET_MODE)  # exactly 0660, whatever the umask took away
            info = os.stat(self.path)
            self._identity = (info.st_dev, info.st_ino)
            self._give_to_group()
            self._server = await asyncio.start_unix_server(
                self._on_connection, sock=sock, backlog=128, limit=READ_SIZE
            )
        except BaseException:
            sock.close()
            self._remove_own_socket()
            raise

    async def close(self) -> None:
        """Stop serving, end open streams and connections, remove the socket file if still ours.

        Idle connections are closed at once, streams end (cleanly: their last chunk is sent), and
        other running handlers get :data:`SHUTDOWN_TIMEOUT` to finish before they are cancelled.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        for task, conn in list(self._connections.items()):
            if not conn.busy:
                task.cancel()
        running = list(self._connections)
        if running:
            await asyncio.wait(running, timeout=SHUTDOWN_TIMEOUT)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()
        self._remove_own_socket()

    def _give_to_group(self) -> None:
        if self._gid is None:
            return
        try:
            os.chown(self.path, -1, self._gid)
        except PermissionError as error:  # an unprivileged agent outside the group
            log.warning("API socket: cannot give it to its group", group=self.group, error=error)

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

    # --- connections -----------------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = Connection(reader, writer)
        self._connections[task] = conn
        try:
            await self._converse(conn)
        except ConnectionError:
            pass  # the client went away
        except Exception:
            log.exception("API connection failed")
        finally:
            del self._connections[task]
            writer.close()

    async def _converse(self, conn: Connection) -> None:
        """Answer the connection's requests one after the other, until either side closes it."""
        while not self._closing:
            conn.busy = False
            try:
                async with asyncio.timeout(KEEP_ALIVE_TIMEOUT):
                    request = await conn.next_event()
            except TimeoutError:
                return
            except h11.RemoteProtocolError as error:
                await _refuse_bad_http(conn, error)
                return
            if not isinstance(request, h11.Request):
                return  # ConnectionClosed: the client is done
            conn.busy = True
            try:
                await self._answer(conn, request)
                if not await conn.linger():
                    return
            except h11.RemoteProtocolError as error:  # a broken body
                await _refuse_bad_http(conn, error)
                return
            if conn.http.our_state is not h11.DONE or conn.http.their_state is not h11.DONE:
                return  # we said Connection: close, or a stream did not end
            conn.http.start_next_cycle()

    # --- requests --------------------------------------------------------------------------------

    async def _answer(self, conn: Connection, request: h11.Request) -> None:
        method = request.method.decode("ascii")
        raw_path, query = split_target(request.target.decode("latin-1"))
        conn.head = method == "HEAD"
        reply = await self._reply(conn, request, method, raw_path, query)
        if reply is not None:
            await conn.reply(reply)

    async def _reply(
        self, conn: Connection, request: h11.Request, method: str, raw_path: str, query: str
    ) -> Reply | None:
        """The answer to the request; None when it was a stream, already written."""
        path = unquote(raw_path)
        found = _route(method, raw_path, path)
        if isinstance(found, Reply):
            return found
        route, path_params = found
        name = route.handler
        refusal = self._refusal(name, method, path, conn.peer())
        if refusal is not None:
            return refusal
        handler = self._handlers.get(name)
        if handler is None:
            return error_reply(
                "not-implemented", f"{method} {route.path}: this agent has no {name!r}"
            )
        try:
            params = await read_params(conn, request, path_params, query)
        except RequestFailedError as error:
            close = error.code in ("timeout", "too-large")  # the rest of the body is not wanted
            return error_reply(error.code, error.message, close=close)
        refused = request_schema.problem(name, params)
        if refused is not None:
            return error_reply("bad-request", f"{method} {route.path}: {refused}")
        return await self._call(conn, name, handler, params)

    async def _call(
        self, conn: Connection, name: str, handler: Handler, params: dict[str, Any]
    ) -> Reply | None:
        """Run the handler: its result as a reply, or its stream written (then None)."""
        try:
            result = handler(params)
            if inspect.isawaitable(result):
                result = await result
        except RequestError as error:
            return error_reply(error.code, error.message)
        except Exception as error:
            log.exception("API handler failed", handler=name)
            return error_reply("failed", f"{name} failed: {error or type(error).__name__}")
        if name in STREAMING:
            if not isinstance(result, AsyncIterator):
                log.error("API handler returned no async iterator", handler=name)
                return error_reply("failed", f"{name} failed: it returned no stream")
            await self._stream(conn, name, result)
            return None
        try:
            return Reply(200, encode(result))
        except (TypeError, ValueError, RecursionError) as error:
            log.error("API result is not JSON", handler=name, error=str(error))
            return error_reply("failed", f"{name} failed: the result is not JSON: {error}")

    def _refusal(self, name: str, method: str, path: str, peer: Peer | None) -> Reply | None:
        """None when the peer may call ``name``; else the 403 to answer (and the log line)."""
        if peer is not None:
            if peer.uid in (0, os.geteuid()):
                return None
            in_group = self._gid is not None and (peer.gid == self._gid or self._gid in peer.groups)
            if in_group and name in self._read_only:
                return None
        who = "an unknown peer" if peer is None else f"uid {peer.uid} (pid {peer.pid})"
        log.warning(
            "API call refused",
            handler=name,
            method=method,
            path=path,
            uid=None if peer is None else peer.uid,
            pid=None if peer is None else peer.pid,
        )
        return error_reply(
            "forbidden",
            f"permission denied: {who} may not call {method} {path} (needs "
            f"root, or membership of group {self.group} for read-only calls)",
        )

    # --- streams ---------------------------------------------------------------------------------

    async def _stream(self, conn: Connection, name: str, items: AsyncIterator[Any]) -> None:
        """Write each item as a line of JSON until the iterator ends or the client goes away."""
        headers = [("Content-Type", "application/x-ndjson"), ("Transfer-Encoding", "chunked")]
        try:
            await conn.send(h11.Response(status_code=200, headers=headers, reason="OK"))
            await self._stream_items(conn, name, items)
            await conn.send(h11.EndOfMessage())
        except (ClientGoneError, ConnectionError):
            pass  # nobody to tell
        except RequestError as error:  # the handler's own verdict, e.g. a pull that failed
            log.warning("API stream ended with an error", handler=name, error=error.message)
            await self._end_stream(conn, error.code, error.message)
        except Exception as error:  # the iterator failed: say so on the stream, then end it
            log.exception("API stream failed", handler=name)
            await self._end_stream(
                conn, "failed", f"{name} failed: {error or type(error).__name__}"
            )
        finally:
            await _close_iterator(items, name)

    @staticmethod
    async def _end_stream(conn: Connection, code: str, message: str) -> None:
        """The last line of a stream that failed: ``{"error": {...}}``."""
        with contextlib.suppress(ConnectionError):
            line = encode(error_body(code, message)) + b"\n"
            await conn.send(h11.Data(data=line), h11.EndOfMessage())

    async def _stream_items(self, conn: Connection, name: str, items: AsyncIterator[Any]) -> None:
        while True:
            item = await self._next_while_connected(conn, items)
            if item is END:
                return
            try:
                line = encode(item)
            except (TypeError, ValueError, RecursionError) as error:
                log.error("API stream item is not JSON", handler=name, error=str(error))
                message = f"{name} failed: an item is not JSON: {error}"
                await conn.send(h11.Data(data=encode(error_body("failed", message)) + b"\n"))
                return
            await conn.send(h11.Data(data=line + b"\n"))

    async def _next_while_connected(self, conn: Connection, items: AsyncIterator[Any]) -> Any:
        """The next item, :data:`END` at the end or when the server closes;
        :class:`ClientGoneError` once the client left."""

        async def following() -> Any:
            try:
                return await anext(items)
            except StopAsyncIteration:
                return END

        waiting = asyncio.ensure_future(following())
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=_POLL)
                if done:
                    return waiting.result()
                if self._closing:
                    return END
                if conn.gone():
                    raise ClientGoneError
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(BaseException):
                    await waiting


async def _refuse_bad_http(conn: Connection, error: h11.RemoteProtocolError) -> None:
    """Answer a request h11 cannot read with 400 (or its 4xx status), if an answer may still go.
    h11 hints 501 for a transfer coding it does not know (RFC 9112 allows that): the request is
    the client's fault all the same, and bad input never gets a 5xx from us."""
    if conn.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    status = error.error_status_hint
    code = _CODE_OF_STATUS.get(status, "bad-request") if status < 500 else "bad-request"
    with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
        await conn.reply(error_reply(code, f"not a request this server reads: {error}", close=True))


def _route(method: str, raw_path: str, path: str) -> tuple[Route, dict[str, str]] | Reply:
    """The route for ``method`` and the path's parameters, or the 404 or 405 to answer."""
    found = find_route(method, raw_path)
    if not isinstance(found, RouteMiss):
        return found
    if not found.allowed:
        return error_reply("not-found", f"there is no route {path} (see docs/api.md)")
    methods = ", ".join(found.allowed)
    return error_reply(
        "method-not-allowed",
        f"{method} is not allowed on {path}; allowed: {methods}",
        headers=(("Allow", methods),),
    )


async def _close_iterator(items: AsyncIterator[Any], name: str) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("API stream: closing the iterator failed", handler=name)


async def _ping(params: dict[str, Any]) -> dict[str, Any]:
    del params
    return {"pid": os.getpid(), "version": __version__}
