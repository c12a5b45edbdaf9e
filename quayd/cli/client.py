"""A blocking client for the agent's control API: HTTP+JSON on its unix socket (docs/api.md).

The standard library's ``http.client`` over ``AF_UNIX``, and nothing heavier: ``quayctl status``
imports this module and answers in a few tens of milliseconds. It must never import pydantic,
httpx, h11 or another quayd module (a test runs ``python -X importtime`` to hold that).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

SOCKET_NAME = "quayd.sock"
"""The socket's name in the run directory (as ``quayd.agent.api.SOCKET_NAME``)."""

_MAX_REPLY = 64 * 1024 * 1024  # a status of thousands of units is a few MiB; more is a broken peer
_MAX_LINE = 16 * 1024 * 1024  # one event of a stream


class AgentUnreachableError(Exception):
    """Nothing answers on the socket: the agent is not running, or the path is not its socket."""


class AgentError(Exception):
    """The agent answered with an error: ``code`` as in docs/api.md (or ``bad-reply``)."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` speaking to a unix socket; the Host header says ``quay``."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        super().__init__("quay", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(
    socket_path: Path | str,
    method: str,
    path: str,
    body: Any = None,
    timeout: float = 5.0,
) -> Any:
    """Make one call and return its JSON result; ``timeout`` bounds each wait for the agent.

    Raises :class:`AgentUnreachableError` when nothing answers and :class:`AgentError` when the
    agent answers with an error.
    """
    where = os.fspath(socket_path)
    conn = UnixHTTPConnection(where, timeout=timeout)
    try:
        with _reaching(where, timeout):
            response = _send(conn, method, path, body)
            data = response.read(_MAX_REPLY + 1)
        if len(data) > _MAX_REPLY:
            raise AgentError("bad-reply", f"a reply of more than {_MAX_REPLY} bytes")
        return _result(response.status, data)
    finally:
        conn.close()


def stream(
    socket_path: Path | str,
    path: str,
    timeout: float | None = None,
    *,
    method: str = "GET",
    body: Any = None,
) -> Generator[dict[str, Any], None, None]:
    """Yield the objects of an NDJSON route (``/v1/events``, ``POST /v1/images/pull``) as they
    arrive, until it ends.

    ``timeout`` bounds each wait (None: wait for as long as the agent keeps the stream open).
    Closing the generator hangs up, which tells the agent to stop.
    """
    where = os.fspath(socket_path)
    conn = UnixHTTPConnection(where, timeout=timeout)
    try:
        with _reaching(where, timeout):
            response = _send(conn, method, path, body)
        if response.status != 200:
            _result(response.status, response.read(_MAX_REPLY))
        while True:
            with _reaching(where, timeout):
                line = response.readline(_MAX_LINE + 1)
            if not line:
                return
            if len(line) > _MAX_LINE:
                raise AgentError("bad-reply", f"a stream line of more than {_MAX_LINE} bytes")
            if not line.strip():
                continue
            item = _decode(line)
            if not isinstance(item, dict):
                raise AgentError("bad-reply", "a stream item is not a JSON object")
            if set(item) == {"error"} and isinstance(item["error"], dict):
                failure = item["error"]
                raise AgentError(str(failure.get("code")), str(failure.get("message")), 200)
            yield item
    finally:
        conn.close()


def _send(conn: UnixHTTPConnection, method: str, path: str, body: Any) -> http.client.HTTPResponse:
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=payload, headers=headers)
    return conn.getresponse()


@contextlib.contextmanager
def _reaching(path: str, timeout: float | None) -> Iterator[None]:
    """Turn socket and protocol failures into :class:`AgentUnreachableError` with a clear text."""
    try:
        yield
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as error:
        raise AgentUnreachableError(
            f"quayd is not running, or {path} is not its socket (see --run-dir): {error.strerror}"
        ) from None
    except PermissionError:
        raise AgentUnreachableError(
            f"permission denied on {path}: the socket is for root and the group quay"
        ) from None
    except TimeoutError:
        raise AgentUnreachableError(f"quayd did not answer on {path} within {timeout:g}s") from None
    except http.client.RemoteDisconnected:
        raise AgentUnreachableError(
            f"quayd closed the connection on {path} without answering"
        ) from None
    except (http.client.HTTPException, OSError) as error:
        raise AgentUnreachableError(f"cannot talk to quayd on {path}: {error!r}") from None


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as error:
        raise AgentError("bad-reply", f"the agent's reply is not JSON: {error}") from None


def _result(status: int, data: bytes) -> Any:
    reply = _decode(data)
    if status == 200:
        return reply
    failure = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(failure, dict):
        raise AgentError("bad-reply", f"HTTP {status} without an error object", status)
    raise AgentError(str(failure.get("code", "failed")), str(failure.get("message", "")), status)
