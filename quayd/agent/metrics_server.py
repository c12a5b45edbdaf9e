"""The metrics endpoint: HTTP on a unix socket or a TCP address, served from its own thread.

``[metrics] listen`` in quayd.toml chooses (docs/settings.md); without it there is no endpoint.
Every path answers the exposition ``AgentMetrics.render`` gives for the scraper's ``Accept``:
the text format, or OpenMetrics when asked (prometheus_client's ``choose_encoder``, the same
negotiation its own server does). The server is the standard library's threading HTTP
server, one thread per scrape, never the agent's asyncio loop: a slow scraper or a scrape
reading 100 cgroups holds up no pass. A unix socket is mode 0660 (as the API socket; group
``quay`` when it exists).
"""

from __future__ import annotations

import contextlib
import grp
import http.server
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_MODE = 0o660
GROUP = "quay"


class MetricsServerError(Exception):
    """The endpoint cannot listen where the settings say."""


Render = Callable[[str], tuple[bytes, str]]
"""The exposition for an ``Accept`` header, and its content type (``AgentMetrics.render``)."""


def _handler(render: Render) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                body, content_type = render(self.headers.get("Accept", ""))
            except Exception as error:  # a collector failed: say so, keep serving
                self.send_error(500, f"metrics not collected: {error}")
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            # A unix peer has no address tuple; BaseHTTPRequestHandler indexes it.
            return str(self.client_address[0]) if self.client_address else "unix"

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # one line per scrape would flood the journal

    return Handler


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # The file is created with the socket's mode less the umask: set it before bind() so
        # the path is never wider than 0660.
        os.fchmod(self.socket.fileno(), SOCKET_MODE)
        super().server_bind()
        path = str(self.server_address)
        os.chmod(path, SOCKET_MODE)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(path, -1, grp.getgrnam(GROUP).gr_gid)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, _ = self.socket.accept()
        return connection, ("unix", 0)


class _TcpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Tcp6Server(_TcpServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serve what ``render`` gives at ``listen`` (a socket path, or ``HOST:PORT`` as settings
    give it)."""

    def __init__(self, listen: str, render: Render) -> None:
        self.listen = listen
        handler = _handler(render)
        self._path: Path | None = None
        try:
            if listen.startswith("/"):
                path = Path(listen)
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    _remove_stale(path)
                self._server: socketserver.BaseServer = _UnixServer(listen, handler)
                self._path = path
            else:
                host, _, port = listen.rpartition(":")
                host = host.removeprefix("[").removesuffix("]")
                server_class = _Tcp6Server if ":" in host else _TcpServer
                self._server = server_class((host, int(port)), handler)
        except OSError as error:
            raise MetricsServerError(
                f"metrics: cannot listen on {listen} ({error.strerror or error}); "
                "choose another [metrics] listen in quayd.toml, or stop what holds it"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="quay-metrics", daemon=True
        )

    @property
    def address(self) -> str:
        """Where it listens: the socket path, or ``HOST:PORT`` with the port bound."""
        if self._path is not None:
            return str(self._path)
        address = self._server.server_address
        assert isinstance(address, tuple)
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()


def _remove_stale(path: Path) -> None:
    """A socket file nobody answers on (a dead agent's) is removed; a live one is refused."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(98, "another process serves this socket")
