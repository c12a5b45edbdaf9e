"""A blocking client for the agent's API socket (the protocol: ``quayd/agent/api.py``).

Standard library only, and only the cheap parts of it: ``quayctl status`` imports this and
nothing heavier, so it answers in a few tens of milliseconds. It must never import pydantic,
httpx or another quayd module (a test runs ``python -X importtime`` to hold that).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

SOCKET_NAME = "quayd.sock"
"""The socket's name in the run directory (as ``quayd.agent.api.SOCKET_NAME``)."""

_MAX_REPLY = 64 * 1024 * 1024  # a status of thousands of units is a few MiB; more is a broken peer


class AgentUnreachableError(Exception):
    """Nothing answers on the socket: the agent is not running, or the path is not its socket."""


class AgentError(Exception):
    """The agent answered with an error (``code`` as in the protocol, or ``bad-reply``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def call(
    socket_path: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Send one request and return its result; ``timeout`` bounds the whole exchange."""
    request = json.dumps({"method": method, "params": params or {}}, separators=(",", ":"))
    deadline = time.monotonic() + timeout
    path = os.fspath(socket_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(request.encode() + b"\n")
            line = _read_line(sock, deadline, path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as error:
            raise AgentUnreachableError(
                f"quayd is not running, or {path} is not its socket (see --run-dir): "
                f"{error.strerror}"
            ) from None
        except PermissionError:
            raise AgentUnreachableError(
                f"permission denied on {path}: the socket is for root and its group"
            ) from None
        except TimeoutError:
            raise AgentUnreachableError(
                f"quayd did not answer on {path} within {timeout:g}s"
            ) from None
        except OSError as error:
            raise AgentUnreachableError(f"cannot talk to quayd on {path}: {error}") from None
    return _result(line)


def _read_line(sock: socket.socket, deadline: float, path: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise AgentUnreachableError(f"quayd closed the connection on {path} without answering")
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REPLY:
            raise AgentError("bad-reply", f"a reply of more than {_MAX_REPLY} bytes")


def _result(line: bytes) -> Any:
    try:
        reply = json.loads(line)
    except ValueError as error:
        raise AgentError("bad-reply", f"the agent's reply is not JSON: {error}") from None
    if not isinstance(reply, dict):
        raise AgentError("bad-reply", "the agent's reply is not a JSON object")
    if reply.get("ok") is True:
        return reply.get("result")
    failure = reply.get("error")
    if not isinstance(failure, dict):
        raise AgentError("bad-reply", "the agent's reply has neither a result nor an error")
    raise AgentError(str(failure.get("code", "failed")), str(failure.get("message", "")))
