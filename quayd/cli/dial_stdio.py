"""``quayctl system dial-stdio``: this process's stdin and stdout bridged to the agent's socket,
as ``docker system dial-stdio``. ``quayctl --host ssh://…`` on another machine runs it as ssh's
far command (:mod:`quayd.cli.remote`), so its HTTP client speaks to this host's agent.

The agent checks who connected (``SO_PEERCRED``): this process, running as the ssh user, so a
remote caller gets what that user gets here, no more.

Both directions are copied at once (a thread each way: a big request and a big answer cannot
block one another). The end of stdin is passed on as a half-close (``shutdown(SHUT_WR)``), so the
agent sees the client's end and still answers; the agent's end of the connection closes stdout
and ends the process, as does a reader of stdout that went away. A socket that cannot be
reached is said on stderr (ssh carries it to the caller), naming this host and the socket, with
exit status 1. Standard library only: it runs for every remote command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading

EXIT_OK = 0
EXIT_UNREACHABLE = 1
_CHUNK = 65536
ATTACH_SOCKET = "attach.sock"
"""As ``quayd.cli.terminal.ATTACH_SOCKET`` (that module is heavier to import)."""


def cmd_dial_stdio(args: argparse.Namespace) -> int:
    path = socket_path(args)
    if path is None:
        return EXIT_UNREACHABLE
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError as error:
        connection.close()
        print(unreachable_message(path, error), file=sys.stderr)
        return EXIT_UNREACHABLE
    with connection:
        relay(connection, sys.stdin.fileno(), sys.stdout.fileno())
    return EXIT_OK


def socket_path(args: argparse.Namespace) -> str | None:
    """``--socket``, else the agent's socket (or with ``--attach`` its attach socket) in the
    run directory every command of this host resolves; None once an error is shown."""
    from quayd.cli.quayctl import DEFAULT_RUN_DIR, setting_dir  # noqa: PLC0415

    if args.socket is not None:
        if not args.attach:
            return str(args.socket)
        return os.path.join(os.path.dirname(args.socket), ATTACH_SOCKET)
    run_dir = setting_dir(args, "run_dir", DEFAULT_RUN_DIR)
    if run_dir is None:
        return None
    return str(run_dir / (ATTACH_SOCKET if args.attach else "quayd.sock"))


def unreachable_message(path: str, error: OSError) -> str:
    host = socket.gethostname()
    reason = error.strerror or str(error)
    if isinstance(error, PermissionError):
        return (
            f"quayctl system dial-stdio: permission denied on {path} on {host}: the socket is "
            f"for root and the group quay (uid {os.getuid()} connected)"
        )
    return (
        f"quayctl system dial-stdio: quayd is not running on {host}, or {path} is not its "
        f"socket: {reason}"
    )


def relay(connection: socket.socket, stdin: int, stdout: int) -> None:
    """Copy ``stdin`` to ``connection`` and ``connection`` to ``stdout`` until the agent's side
    ends (or ``stdout``'s reader goes away); the end of ``stdin`` is a half-close."""
    upstream = threading.Thread(target=_send_input, args=(stdin, connection), daemon=True)
    upstream.start()
    try:
        _copy_answers(connection, stdout)
    finally:
        with contextlib.suppress(OSError):
            os.close(stdout)  # the caller's end: ssh ends the session


def _send_input(stdin: int, connection: socket.socket) -> None:
    """stdin to the agent; its end (or a broken connection) is the half-close."""
    try:
        while data := os.read(stdin, _CHUNK):
            connection.sendall(data)
    except OSError:
        pass  # the agent's side went away: the other direction ends the relay
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)


def _copy_answers(connection: socket.socket, stdout: int) -> None:
    try:
        while data := connection.recv(_CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(stdout, view) :]
    except OSError:
        pass  # a reset connection, or stdout's reader gone: either way, the relay is over
