"""The agent's control API: HTTP+JSON on a unix socket (``RUN_DIR/quayd.sock``), served by aiohttp.

docs/api.md describes every route for its callers (docs/openapi.yaml says the same as OpenAPI);
``quayd.cli.client`` is quayctl's client. This module maps HTTP onto the agent's handlers:

* A handler is ``async (params) -> result``; ``params`` merges the path parameters, the query
  parameters and the JSON body object (the body wins). The result is sent as JSON with status 200.
  A handler named in :data:`STREAMING` returns an async iterator of objects instead (or is an
  async generator function), sent as NDJSON (one object per line, flushed each) over a chunked
  response until the iterator ends or the client goes away (the iterator is then closed). An
  error once the stream has begun ends it with one last line, ``{"error": {...}}``.
* Errors are ``{"error": {"code": CODE, "message": TEXT}}`` with the HTTP status of the code
  (:data:`HTTP_STATUS`). A handler chooses one by raising :class:`RequestError`; any other
  exception is logged and answered ``failed`` (500), and the server goes on.
* Access: the socket file is mode 0660, ``root:quay`` (the group when it exists), and each
  request's peer is checked with ``SO_PEERCRED``: root (or the agent's own user) may call
  everything; members of the group ``quay`` may call the read-only handlers; anyone else is
  refused (403) and the refusal is logged.
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
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import structlog
from aiohttp import web

from quayd import __version__

Handler = Callable[[dict[str, Any]], Awaitable[Any] | AsyncIterator[Any]]
"""``async def h(params) -> result``; a streaming one may also be an async generator function."""

SOCKET_NAME = "quayd.sock"
"""The socket's name in the run directory (``quayd.cli.client.SOCKET_NAME`` says the same)."""
SOCKET_MODE = 0o660
GROUP = "quay"
"""The group whose members may call the read-only handlers."""
MAX_BODY = 1024 * 1024
"""The largest request body (aiohttp's ``client_max_size``); a larger one is answered 413."""
BODY_TIMEOUT = 10.0
"""Seconds a client has to send its body once the headers are in; then 408."""
LINGERING_TIME = 2.0
"""Seconds the server goes on reading (and dropping) a refused request's body before hanging up."""
SHUTDOWN_TIMEOUT = 2.0
"""Seconds :meth:`ApiServer.close` lets running handlers finish before they are cancelled."""
_POLL = 0.25  # how often a quiet stream checks that its client is still there


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
    Route("POST", "/v1/run", "run"),
    Route("POST", "/v1/reload", "reload"),
)
"""Every route and the name of the handler that answers it (a missing handler answers 501)."""

STREAMING = frozenset({"events"})
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
        self._runner: web.AppRunner | None = None
        self._identity: tuple[int, int] | None = None
        self._streams: set[asyncio.Task[Any]] = set()

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
        if self._runner is not None:
            raise RuntimeError("the API server is already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._remove_stale()
        self._gid = _group_id(self.group)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        runner: web.AppRunner | None = None
        try:
            # bind() creates the file with the socket inode's mode less the umask: set it first, so
            # the path is never wider than 0660, not even between bind() and chmod(). (This is why
            # the socket is bound here and handed to a SockSite rather than to a UnixSite.)
            os.fchmod(sock.fileno(), SOCKET_MODE)
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, SOCKET_MODE)  # exactly 0660, whatever the umask took away
            info = os.stat(self.path)
            self._identity = (info.st_dev, info.st_ino)
            self._give_to_group()
            runner = web.AppRunner(
                self._application(),
                handle_signals=False,
                access_log=None,
                lingering_time=LINGERING_TIME,
                shutdown_timeout=SHUTDOWN_TIMEOUT,
            )
            await runner.setup()
            await web.SockSite(runner, sock, backlog=128).start()
        except BaseException:
            if runner is not None:
                await runner.cleanup()
            sock.close()
            self._remove_own_socket()
            raise
        self._runner = runner

    async def close(self) -> None:
        """Stop serving, end open streams and connections, remove the socket file if still ours."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        streams = list(self._streams)
        for task in streams:
            task.cancel()
        await runner.cleanup()
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

    # --- requests --------------------------------------------------------------------------------

    def _application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors_as_json])
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._endpoint(route))
        return app

    def _endpoint(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            return await self._serve(route, request)

        return endpoint

    async def _serve(self, route: Route, request: web.Request) -> web.StreamResponse:
        name = route.handler
        refusal = self._refusal(name, request)
        if refusal is not None:
            return refusal
        handler = self._handlers.get(name)
        if handler is None:
            return _error_response(
                "not-implemented", f"{request.method} {route.path}: this agent has no {name!r}"
            )
        params = await _params(request)
        try:
            result = handler(params)
            if inspect.isawaitable(result):
                result = await result
        except RequestError as error:
            return _error_response(error.code, error.message)
        except Exception as error:
            log.exception("API handler failed", handler=name)
            return _error_response("failed", f"{name} failed: {error or type(error).__name__}")
        if name in STREAMING:
            if not isinstance(result, AsyncIterator):
                log.error("API handler returned no async iterator", handler=name)
                return _error_response("failed", f"{name} failed: it returned no stream")
            return await self._stream(request, name, result)
        try:
            return web.Response(body=_encode(result), content_type="application/json")
        except (TypeError, ValueError, RecursionError) as error:
            log.error("API result is not JSON", handler=name, error=str(error))
            return _error_response("failed", f"{name} failed: the result is not JSON: {error}")

    def _refusal(self, name: str, request: web.Request) -> web.Response | None:
        """None when the peer may call ``name``; else the 403 to answer (and the log line)."""
        peer = _peer(request)
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
            method=request.method,
            path=request.path,
            uid=None if peer is None else peer.uid,
            pid=None if peer is None else peer.pid,
        )
        return _error_response(
            "forbidden",
            f"permission denied: {who} may not call {request.method} {request.path} (needs "
            f"root, or membership of group {self.group} for read-only calls)",
        )

    async def _stream(
        self, request: web.Request, name: str, items: AsyncIterator[Any]
    ) -> web.StreamResponse:
        """Write each item as a line of JSON until the iterator ends or the client goes away."""
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            while True:
                item = await _next_while_connected(request, items)
                if item is _END:
                    break
                try:
                    line = _encode(item)
                except (TypeError, ValueError, RecursionError) as error:
                    log.error("API stream item is not JSON", handler=name, error=str(error))
                    message = f"{name} failed: an item is not JSON: {error}"
                    await response.write(_encode(_error_body("failed", message)) + b"\n")
                    break
                await response.write(line + b"\n")
            await response.write_eof()
        except (_ClientGoneError, ConnectionResetError):
            pass  # nobody to tell
        except Exception as error:  # the iterator failed: say so on the stream, then end it
            log.exception("API stream failed", handler=name)
            with contextlib.suppress(ConnectionResetError):
                message = f"{name} failed: {error or type(error).__name__}"
                await response.write(_encode(_error_body("failed", message)) + b"\n")
                await response.write_eof()
        finally:
            self._streams.discard(task)
            await _close_iterator(items, name)
        return response


class _ClientGoneError(Exception):
    pass


_END: Any = object()


async def _next_while_connected(request: web.Request, items: AsyncIterator[Any]) -> Any:
    """The next item, :data:`_END` at the end; :class:`_ClientGoneError` once the client left."""

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
            transport = request.transport
            if transport is None or transport.is_closing():
                raise _ClientGoneError
    finally:
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(BaseException):
                await waiting


async def _close_iterator(items: AsyncIterator[Any], name: str) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("API stream: closing the iterator failed", handler=name)


async def _params(request: web.Request) -> dict[str, Any]:
    """Path parameters, then query parameters, then the body object's members (the body wins)."""
    params: dict[str, Any] = dict(request.match_info)
    params.update(_query(request))
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _RequestFailedError("too-large", f"a request body is at most {MAX_BODY} bytes")
    if not request.body_exists:
        return params
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.read()
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
    params.update(body)
    return params


def _query(request: web.Request) -> dict[str, Any]:
    """The query parameters: ``follow`` as a boolean, ``since`` as a number, others as text."""
    query: dict[str, Any] = dict(request.query)
    if "follow" in query:
        text = query["follow"].lower()
        if text not in ("true", "false", "1", "0", "yes", "no", ""):
            raise _RequestFailedError("bad-request", f"follow={query['follow']}: true or false")
        query["follow"] = text in ("true", "1", "yes", "")
    if "since" in query:
        try:
            query["since"] = int(query["since"])
        except ValueError:
            raise _RequestFailedError(
                "bad-request", f"since={query['since']}: a sequence number"
            ) from None
    return query


class _RequestFailedError(Exception):
    """Raised while reading a request: answered with ``code`` by :func:`_errors_as_json`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as ``{"error": {...}}``: aiohttp's own (404, 405, 413) and the request's."""
    try:
        return await handler(request)
    except _RequestFailedError as error:
        response = _error_response(error.code, error.message)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _CODE_OF_STATUS.get(error.status, "bad-request" if error.status < 500 else "failed")
        response = _error_response(code, _http_message(error, request))
    if response.status in (408, 413):
        response.force_close()  # the rest of the body is not worth reading
    return response


def _http_message(error: web.HTTPException, request: web.Request) -> str:
    if isinstance(error, web.HTTPNotFound):
        return f"there is no route {request.path} (see docs/api.md)"
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return f"a request body is at most {MAX_BODY} bytes"
    return error.text or error.reason


async def _ping(params: dict[str, Any]) -> dict[str, Any]:
    del params
    return {"pid": os.getpid(), "version": __version__}


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _error_response(code: str, message: str) -> web.Response:
    return web.Response(
        status=HTTP_STATUS.get(code, 400),
        body=_encode(_error_body(code, message)),
        content_type="application/json",
    )


def _encode(value: Any) -> bytes:
    """Compact JSON on one line (``json.dumps`` escapes newlines inside strings)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _peer(request: web.Request) -> Peer | None:
    """The calling process's credentials, from its connection's socket; None if unknown."""
    transport = request.transport
    sock = None if transport is None else transport.get_extra_info("socket")
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
