"""A blocking client for the agent's control API: HTTP+JSON on its unix socket (docs/api.md).

The standard library's ``http.client`` over ``AF_UNIX``, and nothing heavier: ``quayctl status``
imports this module and answers in a few tens of milliseconds. It must never import pydantic,
httpx, h11 or another quayd module (a test runs ``python -X importtime`` to hold that).

Where the bytes go is a :class:`Connector`'s business: a path is the local socket
(:class:`UnixConnector`); ``quayd.cli.remote.SshConnector`` reaches another host's agent
through ``ssh HOST quayctl system dial-stdio`` (docs/remote.md). Either gives a connected stream
socket, so the HTTP client, its streams and its errors are the same on both.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

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


class Session(Protocol):
    """One connection to the agent, as a :class:`Connector` opened it."""

    @property
    def socket(self) -> socket.socket:
        """Connected to the agent (or to what relays to it)."""
        ...

    def unreachable(self, error: BaseException, timeout: float | None) -> str:
        """What to tell the user when talking over :attr:`socket` failed with ``error``."""
        ...

    def close(self) -> None:
        """Called once the socket is closed: end what carried it (a relay process)."""
        ...


class Connector(Protocol):
    """Where the agent is: opens one :class:`Session` per HTTP connection."""

    @property
    def where(self) -> str:
        """For messages: the socket's path, or the host."""
        ...

    def open(self, timeout: float | None) -> Session:
        """Connect; raises :class:`AgentUnreachableError` saying why it cannot."""
        ...


class UnixSession:
    """A connection to a unix socket of this host."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        self._socket = sock

    @property
    def socket(self) -> socket.socket:
        return self._socket

    def unreachable(self, error: BaseException, timeout: float | None) -> str:
        return unix_failure(self.path, error, timeout)

    def close(self) -> None:
        """Nothing carries a local socket."""


class UnixConnector:
    """The agent's socket on this host (``RUN_DIR/quayd.sock``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def where(self) -> str:
        return self.path

    def open(self, timeout: float | None) -> UnixSession:
        try:
            return UnixSession(self.path, timeout)
        except OSError as error:
            raise AgentUnreachableError(unix_failure(self.path, error, timeout)) from None


def connector_for(target: Path | str | Connector) -> Connector:
    """A path is the local socket; anything else is a connector already."""
    if isinstance(target, str | os.PathLike):
        return UnixConnector(os.fspath(target))
    return target


class ConnectorHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a :class:`Connector`'s socket; the Host header says ``quay``."""

    def __init__(self, connector: Connector, timeout: float | None = None) -> None:
        super().__init__("quay", timeout=timeout)
        self.connector = connector
        self.session: Session | None = None
        self.ended: Session | None = None
        """The session that was closed (http.client closes it on errors): it says why."""

    def connect(self) -> None:
        self.session = self.connector.open(self.timeout)
        self.sock = self.session.socket

    def unreachable(self, error: BaseException) -> str:
        session = self.session or self.ended
        if session is None:
            return f"cannot talk to quayd at {self.connector.where}: {error!r}"
        return session.unreachable(error, self.timeout)

    def close(self) -> None:
        super().close()
        if self.session is not None:
            self.ended, self.session = self.session, None
            self.ended.close()


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
    socket_path: Path | str | Connector,
    method: str,
    path: str,
    body: Any = None,
    timeout: float = 5.0,
) -> Any:
    """Make one call and return its JSON result; ``timeout`` bounds each wait for the agent.

    Raises :class:`AgentUnreachableError` when nothing answers and :class:`AgentError` when the
    agent answers with an error.
    """
    conn = ConnectorHTTPConnection(connector_for(socket_path), timeout=timeout)
    try:
        with _reaching(conn):
            response = _send(conn, method, path, body)
            data = response.read(_MAX_REPLY + 1)
        if len(data) > _MAX_REPLY:
            raise AgentError("bad-reply", f"a reply of more than {_MAX_REPLY} bytes")
        return _result(response.status, data)
    finally:
        conn.close()


def stream(
    socket_path: Path | str | Connector,
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
    conn = ConnectorHTTPConnection(connector_for(socket_path), timeout=timeout)
    try:
        with _reaching(conn):
            response = _send(conn, method, path, body)
        if response.status != 200:
            _result(response.status, response.read(_MAX_REPLY))
        while True:
            with _reaching(conn):
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


def _send(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any
) -> http.client.HTTPResponse:
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=payload, headers=headers)
    return conn.getresponse()


@contextlib.contextmanager
def _reaching(conn: ConnectorHTTPConnection) -> Iterator[None]:
    """Turn socket and protocol failures into :class:`AgentUnreachableError` with a clear text
    (the session's: a local socket's, or an ssh session's with what ssh said)."""
    try:
        yield
    except AgentUnreachableError:
        raise
    except (http.client.HTTPException, OSError) as error:
        raise AgentUnreachableError(conn.unreachable(error)) from None


def unix_failure(path: str, error: BaseException, timeout: float | None) -> str:
    """Why talking to the agent's socket at ``path`` failed, as the user can act on it."""
    if isinstance(error, FileNotFoundError | ConnectionRefusedError | NotADirectoryError):
        reason = error.strerror
        return f"quayd is not running, or {path} is not its socket (see --run-dir): {reason}"
    if isinstance(error, PermissionError):
        return f"permission denied on {path}: the socket is for root and the group quay"
    if isinstance(error, TimeoutError):
        return f"quayd did not answer on {path} within {timeout:g}s"
    if isinstance(error, http.client.RemoteDisconnected):
        return f"quayd closed the connection on {path} without answering"
    return f"cannot talk to quayd on {path}: {error!r}"


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
