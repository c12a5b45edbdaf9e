"""The attach socket (``RUN_DIR/attach.sock``): where ``quayctl run`` gets its ad-hoc unit's
terminal (SCM_RIGHTS) or relayed stdio, and then its exit status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from pathlib import Path

from quayd.agent.adhoc_runs import AdHocRuns
from quayd.agent.logs import logger
from quayd.agent.status_json import exit_json
from quayd.agent.work import Work

log = logger("quayd")

ATTACH_SOCKET = "attach.sock"
"""``RUN_DIR/attach.sock``: where ``quayctl run`` attaches to its ad-hoc unit (relay.py)."""
NAME_TIMEOUT = 10.0


class AttachServer:
    """Listens on the attach socket and serves each client (root, or the agent's own user)."""

    def __init__(self, run_dir: Path, runs: AdHocRuns, work: Work) -> None:
        self.path = run_dir / ATTACH_SOCKET
        self._runs = runs
        self._work = work
        self._listener: socket.socket | None = None
        self._serving: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Bind (mode 0600) and serve. The API socket's start proved no other agent serves
        this run directory, so a file left there is stale."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.fchmod(listener.fileno(), 0o600)
            listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._serving = asyncio.create_task(self._serve(listener))

    def close(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError as error:
                log.warning("attach socket: accept failed", error=str(error))
                await asyncio.sleep(0.1)
                continue
            self._work.spawn(self._attach(connection))

    async def _attach(self, connection: socket.socket) -> None:
        """One client: ``NAME\n`` in; ``+`` with the terminal's master (SCM_RIGHTS) out, then,
        once the container ended, its exit as a JSON line; or ``-WHY\n``."""
        loop = asyncio.get_running_loop()
        with connection:
            connection.setblocking(False)
            try:
                creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                pid, uid, _ = struct.unpack("3i", creds)
                if uid not in (0, os.geteuid()):
                    log.warning("attach refused", uid=uid, pid=pid)
                    await loop.sock_sendall(connection, b"-permission denied: needs root\n")
                    return
                name = await asyncio.wait_for(_read_line(loop, connection), NAME_TIMEOUT)
                adhoc = self._runs.get(name)
                if adhoc is not None and adhoc.relay is not None:
                    terminal = adhoc.console is not None
                    if adhoc.console is not None:  # its input and size: the client's own
                        socket.send_fds(connection, [b"+"], [adhoc.console])
                    adhoc.attached = True
                    log.info("attached", unit=name, pid=pid, terminal=terminal)
                    await adhoc.relay.serve(connection, announce=not terminal)
                    if adhoc.rm and adhoc.exit is not None:  # it ended before it attached
                        self._runs.drop(name, adhoc)
                    return
                if adhoc is None or adhoc.console is None:
                    why = "no such ad-hoc unit" if adhoc is None else "it has no terminal"
                    await loop.sock_sendall(connection, f"-{name}: {why}\n".encode())
                    return
                socket.send_fds(connection, [b"+"], [adhoc.console])
                adhoc.attached = True
                log.info("attached", unit=name, pid=pid)
                await adhoc.ended.wait()
                adhoc.close_console()
                ended = exit_json(adhoc.exit) if adhoc.exit is not None else {}
                await loop.sock_sendall(connection, json.dumps(ended).encode() + b"\n")
            except (OSError, TimeoutError, ValueError) as error:
                log.info("attach ended", error=str(error) or type(error).__name__)


async def _read_line(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await loop.sock_recv(connection, 256)
        if not chunk:
            break
        data += chunk
        if len(data) > 256:
            raise ValueError("the line is too long")
    return data.decode(errors="replace").strip()
