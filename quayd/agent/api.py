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
import errno
import grp
import inspect
import json
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import structlog

from quayd import __version__
from quayd.agent import request_schema

Handler = Callable[[dict[str, Any]], Awaitable[Any] | AsyncIterator[Any]]
"""``async def h(params) -> result``; a streaming one may also be an async generator function."""

SOCKET_NAME = "quayd.sock"
"""The socket's name in the run directory (``quayd.cli.client.SOCKET_NAME`` says the same)."""
SOCKET_MODE = 0o660
GROUP = "quay"
"""The group whose members may call the read-only handlers."""
MAX_BODY = 1024 * 1024
"""The largest request body; a larger one (announced or counted as it arrives) is answered 413."""
BODY_TIMEOUT = 10.0
"""Seconds a client has to send its body once the headers are in; then 408."""
LINGERING_TIME = 2.0
"""Seconds the server goes on reading (and dropping) an unread request body before hanging up."""
SHUTDOWN_TIMEOUT = 2.0
"""Seconds :meth:`ApiServer.close` lets running handlers finish before they are cancelled."""
KEEP_ALIVE_TIMEOUT = 75.0
"""Seconds an idle connection (or one sending a request's head) is kept before it is closed."""
_POLL = 0.25  # how often a quiet stream checks that its client is still there
_READ_SIZE = 64 * 1024
_JSON = "application/json; charset=utf-8"


class Route(NamedTuple):
    method: str
    path: str
    handler: str


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/ping", "ping"),
    Route("GET", "/v1/status", "status"),
    Route("GET", "/v1/units/{name}", "show"),
    Route("GET", "/v1/plan", "plan"),
    Route("POST", "/v1/plan", "plan_dir"),
    Route("GET", "/v1/events", "events"),
    Route("POST", "/v1/units/{name}/start", "start"),
    Route("POST", "/v1/units/{name}/stop", "stop"),
    Route("POST", "/v1/units/{name}/restart", "restart"),
    Route("POST", "/v1/units/{name}/exec", "exec"),
    Route("POST", "/v1/units/{name}/remove", "remove"),
    Route("POST", "/v1/units/{name}/kill", "kill"),
    Route("POST", "/v1/run", "run"),
    Route("POST", "/v1/reload", "reload"),
    Route("POST", "/v1/images/pull", "image_pull"),
    Route("POST", "/v1/update", "update"),
)
"""Every route and the name of the handler that answers it (a missing handler answers 501)."""

STREAMING = frozenset({"events", "image_pull"})
"""Handlers that return an async iterator of JSON objects, streamed as NDJSON."""

READ_ONLY = frozenset({"ping", "status", "show", "plan", "events"})
"""The handlers that change nothing (the default of ``read_only``)."""

HTTP_STATUS = {
    "bad-request": 400,
    "forbidden": 403,
    "not-found": 404,
    "method-not-allowed": 405,
    "timeout": 408,
    "conflict": 409,
    "too-large": 413,
    "failed": 500,
    "not-implemented": 501,
}
"""The HTTP status of each error code; a :class:`RequestError` with another code gets 400."""
_CODE_OF_STATUS = {status: code for code, status in HTTP_STATUS.items()}

log = structlog.get_logger("quayd.api")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python names it from 3.?
_MAX_PEER_GROUPS = 256


class RequestError(Exception):
    """Raised by a handler to answer with a chosen code (``bad-request`` for bad params)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ApiStartError(Exception):
    """The socket cannot be served: its path is taken by a live agent or by something else."""


@dataclass(frozen=True)
class Peer:
    """Who called, as the kernel recorded it when the client connected."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


@dataclass(frozen=True)
class _Reply:
    """A whole answer: JSON with a length (streams are written as they go instead)."""

    status: int
    body: bytes
    close: bool = False
    headers: tuple[tuple[str, str], ...] = ()


class _RequestFailedError(Exception):
    """Raised while reading a request: answered with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _ClientGoneError(Exception):
    pass


_END: Any = object()


class _Connection:
    """One client's connection: h11's state machine, fed from and writing to asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.SERVER)
        self.busy = False  # between a request's head and the end of its answer
        self.head = False  # the request is HEAD: its answer has no body
        self._peer: Peer | None = None
        self._peer_known = False

    def peer(self) -> Peer | None:
        """The client's credentials (fixed when it connected, so read once)."""
        if not self._peer_known:
            self._peer = _peer(self.writer.get_extra_info("socket"))
            self._peer_known = True
        return self._peer

    async def next_event(self) -> Any:
        """h11's next event, reading as much as it needs (EOF is fed to it as ``b""``)."""
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.http.receive_data(await self.reader.read(_READ_SIZE))

    async def send(self, *events: Any) -> None:
        for event in events:
            data = self.http.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def read_body(self) -> bytes:
        """The request's whole body; :class:`_RequestFailedError` once it passes MAX_BODY."""
        if self.http.they_are_waiting_for_100_continue:
            await self.send(
                h11.InformationalResponse(status_code=100, headers=[], reason="Continue")
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            if not isinstance(event, h11.Data):  # h11 raises on an early EOF; this is a guard
                raise ConnectionResetError("the client went away while sending its body")
            size += len(event.data)
            if size > MAX_BODY:
                raise _RequestFailedError(
                    "too-large", f"a request body is at most {MAX_BODY} bytes"
                )
            chunks.append(event.data)

    async def reply(self, reply: _Reply) -> None:
        headers = [
            ("Content-Type", _JSON),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
        ]
        if reply.close:
            headers.append(("Connection", "close"))
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=HTTPStatus(reply.status).phrase
        )
        await self.send(
            response, h11.Data(data=b"" if self.head else reply.body), h11.EndOfMessage()
        )

    def gone(self) -> bool:
        """The client hung up (or its connection broke)."""
        return self.writer.is_closing() or self.reader.at_eof()

    async def linger(self) -> bool:
        """Read and drop what is left of the request's body; False if it does not end in time."""
        try:
            async with asyncio.timeout(LINGERING_TIME):
                while self.sending_body():
                    if not isinstance(await self.next_event(), h11.Data | h11.EndOfMessage):
                        return False
        except TimeoutError:
            return False
        return True

    def sending_body(self) -> bool:
        return self.http.their_state is h11.SEND_BODY


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
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
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
        self._gid = _group_id(self.group)
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
                self._on_connection, sock=sock, backlog=128, limit=_READ_SIZE
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
        conn = _Connection(reader, writer)
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

    async def _converse(self, conn: _Connection) -> None:
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

    async def _answer(self, conn: _Connection, request: h11.Request) -> None:
        method = request.method.decode("ascii")
        raw_path, query = _split_target(request.target.decode("latin-1"))
        conn.head = method == "HEAD"
        reply = await self._reply(conn, request, method, raw_path, query)
        if reply is not None:
            await conn.reply(reply)

    async def _reply(
        self, conn: _Connection, request: h11.Request, method: str, raw_path: str, query: str
    ) -> _Reply | None:
        """The answer to the request; None when it was a stream, already written."""
        path = unquote(raw_path)
        found = _route(method, raw_path, path)
        if isinstance(found, _Reply):
            return found
        route, path_params = found
        name = route.handler
        refusal = self._refusal(name, method, path, conn.peer())
        if refusal is not None:
            return refusal
        handler = self._handlers.get(name)
        if handler is None:
            return _error_reply(
                "not-implemented", f"{method} {route.path}: this agent has no {name!r}"
            )
        try:
            params = await _params(conn, request, path_params, query)
        except _RequestFailedError as error:
            close = error.code in ("timeout", "too-large")  # the rest of the body is not wanted
            return _error_reply(error.code, error.message, close=close)
        refused = request_schema.problem(name, params)
        if refused is not None:
            return _error_reply("bad-request", f"{method} {route.path}: {refused}")
        return await self._call(conn, name, handler, params)

    async def _call(
        self, conn: _Connection, name: str, handler: Handler, params: dict[str, Any]
    ) -> _Reply | None:
        """Run the handler: its result as a reply, or its stream written (then None)."""
        try:
            result = handler(params)
            if inspect.isawaitable(result):
                result = await result
        except RequestError as error:
            return _error_reply(error.code, error.message)
        except Exception as error:
            log.exception("API handler failed", handler=name)
            return _error_reply("failed", f"{name} failed: {error or type(error).__name__}")
        if name in STREAMING:
            if not isinstance(result, AsyncIterator):
                log.error("API handler returned no async iterator", handler=name)
                return _error_reply("failed", f"{name} failed: it returned no stream")
            await self._stream(conn, name, result)
            return None
        try:
            return _Reply(200, _encode(result))
        except (TypeError, ValueError, RecursionError) as error:
            log.error("API result is not JSON", handler=name, error=str(error))
            return _error_reply("failed", f"{name} failed: the result is not JSON: {error}")

    def _refusal(self, name: str, method: str, path: str, peer: Peer | None) -> _Reply | None:
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
        return _error_reply(
            "forbidden",
            f"permission denied: {who} may not call {method} {path} (needs "
            f"root, or membership of group {self.group} for read-only calls)",
        )

    # --- streams ---------------------------------------------------------------------------------

    async def _stream(self, conn: _Connection, name: str, items: AsyncIterator[Any]) -> None:
        """Write each item as a line of JSON until the iterator ends or the client goes away."""
        headers = [("Content-Type", "application/x-ndjson"), ("Transfer-Encoding", "chunked")]
        try:
            await conn.send(h11.Response(status_code=200, headers=headers, reason="OK"))
            await self._stream_items(conn, name, items)
            await conn.send(h11.EndOfMessage())
        except (_ClientGoneError, ConnectionError):
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
    async def _end_stream(conn: _Connection, code: str, message: str) -> None:
        """The last line of a stream that failed: ``{"error": {...}}``."""
        with contextlib.suppress(ConnectionError):
            line = _encode(_error_body(code, message)) + b"\n"
            await conn.send(h11.Data(data=line), h11.EndOfMessage())

    async def _stream_items(self, conn: _Connection, name: str, items: AsyncIterator[Any]) -> None:
        while True:
            item = await self._next_while_connected(conn, items)
            if item is _END:
                return
            try:
                line = _encode(item)
            except (TypeError, ValueError, RecursionError) as error:
                log.error("API stream item is not JSON", handler=name, error=str(error))
                message = f"{name} failed: an item is not JSON: {error}"
                await conn.send(h11.Data(data=_encode(_error_body("failed", message)) + b"\n"))
                return
            await conn.send(h11.Data(data=line + b"\n"))

    async def _next_while_connected(self, conn: _Connection, items: AsyncIterator[Any]) -> Any:
        """The next item, :data:`_END` at the end or when the server closes;
        :class:`_ClientGoneError` once the client left."""

        async def following() -> Any:
            try:
                return await anext(items)
            except StopAsyncIteration:
                return _END

        waiting = asyncio.ensure_future(following())
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=_POLL)
                if done:
                    return waiting.result()
                if self._closing:
                    return _END
                if conn.gone():
                    raise _ClientGoneError
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(BaseException):
                    await waiting


async def _refuse_bad_http(conn: _Connection, error: h11.RemoteProtocolError) -> None:
    """Answer a request h11 cannot read with 400 (or its status), if an answer may still go."""
    if conn.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    status = error.error_status_hint
    code = _CODE_OF_STATUS.get(status, "bad-request")
    with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
        await conn.reply(
            _error_reply(code, f"not a request this server reads: {error}", close=True)
        )


def _split_target(target: str) -> tuple[str, str]:
    """The raw path and the query of a request target (origin-form, or absolute-form)."""
    if not target.startswith("/") and "://" in target:
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path, query


def _route(method: str, raw_path: str, path: str) -> tuple[Route, dict[str, str]] | _Reply:
    """The route for ``method`` and the path's parameters, or the 404 or 405 to answer."""
    segments = [unquote(segment) for segment in raw_path.split("/")]
    allowed: list[str] = []
    for route, pattern in _PATTERNS:
        params = _match(pattern, segments)
        if params is None:
            continue
        if route.method == method:
            return route, params
        allowed.append(route.method)
    if not allowed:
        return _error_reply("not-found", f"there is no route {path} (see docs/api.md)")
    methods = ", ".join(sorted(set(allowed)))
    return _error_reply(
        "method-not-allowed",
        f"{method} is not allowed on {path}; allowed: {methods}",
        headers=(("Allow", methods),),
    )


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    """The parameters if ``segments`` fit ``pattern`` (a ``{name}`` takes one non-empty one)."""
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


_PATTERNS = tuple((route, tuple(route.path.split("/"))) for route in ROUTES)


async def _close_iterator(items: AsyncIterator[Any], name: str) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("API stream: closing the iterator failed", handler=name)


async def _params(
    conn: _Connection, request: h11.Request, found: dict[str, str], query: str
) -> dict[str, Any]:
    """Path parameters, then query parameters, then the body object's members (the body wins)."""
    params: dict[str, Any] = dict(found)
    params.update(_query(query))
    length = _content_length(request)
    if length is not None and length > MAX_BODY:
        raise _RequestFailedError("too-large", f"a request body is at most {MAX_BODY} bytes")
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await conn.read_body()
    except TimeoutError:
        raise _RequestFailedError(
            "timeout", f"the body did not arrive within {BODY_TIMEOUT:g}s"
        ) from None
    if not raw.strip():
        return params
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise _RequestFailedError("bad-request", f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise _RequestFailedError("bad-request", "the body must be a JSON object")
    for key in sorted(found.keys() & body.keys()):
        raise _RequestFailedError(
            "bad-request", f"{key!r} is in the path; the body may not repeat it"
        )
    params.update(body)
    return params


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 checked that it is a number
    return None


def _query(text: str) -> dict[str, Any]:
    """The query parameters: ``follow`` as a boolean, ``since`` as a number, others as text."""
    query: dict[str, Any] = dict(parse_qsl(text, keep_blank_values=True))
    if "follow" in query:
        value = query["follow"].lower()
        if value not in ("true", "false", "1", "0", "yes", "no", ""):
            raise _RequestFailedError("bad-request", f"follow={query['follow']}: true or false")
        query["follow"] = value in ("true", "1", "yes", "")
    if "since" in query:
        try:
            query["since"] = int(query["since"])
        except ValueError:
            raise _RequestFailedError(
                "bad-request", f"since={query['since']}: a sequence number"
            ) from None
    return query


async def _ping(params: dict[str, Any]) -> dict[str, Any]:
    del params
    return {"pid": os.getpid(), "version": __version__}


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _error_reply(
    code: str, message: str, *, close: bool = False, headers: tuple[tuple[str, str], ...] = ()
) -> _Reply:
    return _Reply(
        HTTP_STATUS.get(code, 400),
        _encode(_error_body(code, message)),
        close=close,
        headers=headers,
    )


def _encode(value: Any) -> bytes:
    """Compact JSON on one line (``json.dumps`` escapes newlines inside strings)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _peer(sock: Any) -> Peer | None:
    """The calling process's credentials, from its connection's socket; None if unknown."""
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid, uid, gid = _PEERCRED.unpack(creds)
    return Peer(pid=pid, uid=uid, gid=gid, groups=_peer_groups(sock, pid))


def _peer_groups(sock: Any, pid: int) -> frozenset[int]:
    """Supplementary groups: ``SO_PEERGROUPS`` (as at connect()), else ``/proc/PID/status``."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * _MAX_PEER_GROUPS)
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError as error:
        if error.errno not in (errno.ERANGE, errno.ENOPROTOOPT, errno.EINVAL):
            return frozenset()
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()
