"""``quayctl run`` and ``quayctl attach``, as ``docker run`` and ``docker attach`` behave.

``run`` asks the agent for an ad-hoc unit (``POST /v1/run``, :func:`request_body` turns the
command line, :mod:`quayd.cli.run_parser`'s, into it), then, unless ``-d``, attaches to it on
``RUN_DIR/attach.sock`` until it ends and exits with its status:

* with ``-t``, the container's terminal (:mod:`quayd.cli.terminal`);
* without, its stdout and stderr as frames (:mod:`quayd.agent.frames`) written to quayctl's
  own stdout and stderr, and with ``-i`` quayctl's stdin sent on (its end closes the
  container's stdin). SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to the container's
  process (``POST /v1/units/NAME/kill``); if it has not ended ``--stop-timeout`` seconds later,
  or at a second signal, it is killed (SIGKILL). The agent keeps the output written before
  quayctl attached, so none is lost. With ``-t`` the signals quayctl gets are forwarded too (a
  second one as SIGKILL); Ctrl-C goes through the terminal.

Exit status as Docker's: the command's (killed by signal N: 128+N); 125 quay's own failure (the
agent refused or cannot be reached, wrong usage); 126 the command cannot be executed; 127 it is
not found. Standard library only, like the rest of quayctl's agent commands.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from quayd.agent.frames import EXIT, STDERR, STDOUT, FrameError, FrameReader, decode_exit
from quayd.cli.control import EXIT_OK, unit_path

EXIT_FAILED = 125
"""quay's own failure (Docker's 125): refused, unreachable, wrong usage."""
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
_CODES = {"command-not-executable": EXIT_NOT_EXECUTABLE, "command-not-found": EXIT_NOT_FOUND}
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
CONNECT_TIMEOUT = 10.0
_CHUNK = 65536


class UsageError(Exception):
    """The command line cannot be a run request; the message says what to change."""


# --- the command line ----------------------------------------------------------------------------


def request_body(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``POST /v1/run`` body of a command line (docs/api.md); ``environ`` gives ``-e KEY``."""
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    body: dict[str, Any] = {
        "image": args.image,
        "ports": list(args.publish or []),
        "tty": bool(args.tty),
        "rm": args.tty if args.rm is None else bool(args.rm),
        "attach": not args.detach,
    }
    if args.interactive:
        body["interactive"] = True
    if argv:
        body["argv"] = argv
    if args.name:
        body["name"] = args.name
    env = environment(args.env or [], environ)
    if env:
        body["env"] = env
    if args.volume:
        body["volumes"] = list(args.volume)
    for key in ("network", "memory", "user", "workdir", "entrypoint"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    return body


def environment(specs: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``-e KEY=VALUE`` and ``-e KEY`` (its value here; left out when unset, as Docker)."""
    env: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not key:
            raise UsageError(f"-e {spec!r}: the variable has no name (KEY=VALUE)")
        if sep:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
    return env


# --- run -----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from quayd.cli import client  # noqa: PLC0415
    from quayd.cli.quayctl import agent_target  # noqa: PLC0415

    try:
        body = request_body(args, os.environ)
    except UsageError as error:
        print(f"quayctl run: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.tty and not args.detach and not os.isatty(0):
        print("quayctl run: -t needs a terminal as input (drop -t, or add -d)", file=sys.stderr)
        return EXIT_FAILED
    if args.tty and not args.detach:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(0)
            if size.lines > 0 and size.columns > 0:
                body["console_size"] = [size.lines, size.columns]
    socket_path = agent_target(args)
    if socket_path is None:
        return EXIT_FAILED
    try:
        reply = client.request(socket_path, "POST", "/v1/run", body, timeout=args.timeout)
    except client.AgentUnreachableError as error:
        print(f"quayctl run: {error}", file=sys.stderr)
        return EXIT_FAILED
    except client.AgentError as error:
        print(f"quayctl run: {error.code}: {error.message}", file=sys.stderr)
        return _CODES.get(error.code, EXIT_FAILED)
    name = reply.get("unit") if isinstance(reply, dict) else None
    if not isinstance(name, str):
        print("quayctl run: the agent's answer names no unit", file=sys.stderr)
        return EXIT_FAILED
    if args.detach:
        print(name)
        return EXIT_OK
    return attach(args, name, stdin=args.interactive, command="run")


def cmd_attach(args: argparse.Namespace) -> int:
    return attach(args, args.name, stdin=not args.no_stdin, command="attach")


def attach(args: argparse.Namespace, name: str, *, stdin: bool, command: str) -> int:
    """Attach to ``name`` on ``RUN_DIR/attach.sock``: its terminal, or its streams."""
    from quayd.cli import terminal  # noqa: PLC0415
    from quayd.cli.quayctl import DEFAULT_RUN_DIR, setting_dir  # noqa: PLC0415

    run_dir = setting_dir(args, "run_dir", DEFAULT_RUN_DIR)
    if run_dir is None:
        return EXIT_FAILED
    path = run_dir / terminal.ATTACH_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.settimeout(CONNECT_TIMEOUT)
            connection.connect(str(path))
            connection.sendall(f"{name}\n".encode())
            message, fds, _, _ = socket.recv_fds(connection, 1, 1)
        except OSError as error:
            print(f"quayctl {command}: cannot attach to {name} at {path}: {error}", file=sys.stderr)
            return EXIT_FAILED
        if message == b"+" and fds:
            forwarder = terminal_forwarder(args, name, command)
            return terminal.attached_terminal(args, name, fds[0], connection, forwarder)
        for fd in fds:
            os.close(fd)
        streams = False
        if message == b"*":  # "*\n", then the frames at once: not a byte more is read here
            try:
                streams = connection.recv(1) == b"\n"
            except OSError:
                streams = False
        if not streams:
            why = terminal.read_line(connection) if message == b"-" else "no answer"
            print(f"quayctl {command}: cannot attach to {name}: {why}", file=sys.stderr)
            return EXIT_FAILED
        connection.settimeout(None)
        return Streams(args, name, connection, stdin=stdin, command=command).run()


class Streams:
    """An attached client without a terminal: frames to stdout and stderr, stdin to the
    agent, signals to the container, until the exit frame."""

    def __init__(
        self,
        args: argparse.Namespace,
        name: str,
        connection: socket.socket,
        *,
        stdin: bool,
        command: str,
    ) -> None:
        self.args = args
        self.name = name
        self.connection = connection
        self.stdin = stdin
        self.command = command
        self.reader = FrameReader()
        self.pending = b""
        self.kill_at: float | None = None
        self.signalled = 0

    def run(self) -> int:
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = {sig: signal.signal(sig, _noted) for sig in FORWARDED}
        old_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        self.connection.setblocking(False)
        try:
            return self._loop(wake_read)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_read)
            os.close(wake_write)

    def _loop(self, wake: int) -> int:
        sock = self.connection.fileno()
        reading_stdin = self.stdin
        while True:
            readers = [sock, wake]
            if reading_stdin and not self.pending:
                readers.append(0)
            writers = [sock] if self.pending else []
            left = None if self.kill_at is None else max(0.0, self.kill_at - time.monotonic())
            readable, writable, _ = select.select(readers, writers, [], left)
            if wake in readable:
                self._signals(wake)
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self.kill_at = None
                self._kill("SIGKILL")
            if sock in readable:
                ended = self._receive()
                if ended is not None:
                    return ended
            if 0 in readable:
                data = _read(0)
                if data:
                    self.pending = data
                else:
                    reading_stdin = False
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_WR)
            if sock in writable:
                try:
                    sent = self.connection.send(self.pending)
                except BlockingIOError:
                    sent = 0
                except OSError:  # the agent hung up: its frames say the rest
                    sent, reading_stdin = len(self.pending), False
                self.pending = self.pending[sent:]

    def _receive(self) -> int | None:
        """Write the frames that arrived; the exit status once the exit frame came."""
        try:
            data = self.connection.recv(_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            print(
                f"quayctl {self.command}: the agent hung up before {self.name} ended "
                "(it stopped?); its exit status is unknown",
                file=sys.stderr,
            )
            return EXIT_FAILED
        try:
            frames = self.reader.feed(data)
        except FrameError as error:
            print(f"quayctl {self.command}: {error}", file=sys.stderr)
            return EXIT_FAILED
        for stream, payload in frames:
            if stream == STDOUT:
                _write_all(1, payload)
            elif stream == STDERR:
                _write_all(2, payload)
            elif stream == EXIT:
                from quayd.cli.terminal import status_of  # noqa: PLC0415

                try:
                    return status_of(decode_exit(payload))
                except FrameError as error:
                    print(f"quayctl {self.command}: {error}", file=sys.stderr)
                    return EXIT_FAILED
        return None

    def _signals(self, wake: int) -> None:
        try:
            numbers = os.read(wake, 64)
        except BlockingIOError:
            return
        for number in numbers:
            self.signalled += 1
            if self.signalled == 1:
                self._kill(signal.Signals(number).name)
                self.kill_at = time.monotonic() + max(0.0, self.args.stop_timeout)
            else:
                self.kill_at = None
                self._kill("SIGKILL")

    def _kill(self, signal_name: str) -> None:
        forward(self.args, self.name, signal_name, self.command)


def forward(args: argparse.Namespace, name: str, signal_name: str, command: str) -> None:
    """Send ``signal_name`` to the container of ``name`` (``POST /v1/units/NAME/kill``)."""
    from quayd.cli import client  # noqa: PLC0415
    from quayd.cli.quayctl import agent_target  # noqa: PLC0415

    socket_path = agent_target(args)
    if socket_path is None:
        return
    path = unit_path(name, "kill")
    try:
        client.request(socket_path, "POST", path, {"signal": signal_name}, timeout=5.0)
    except client.AgentError as error:
        if error.code != "conflict":  # conflict: it ended already, its exit frame comes
            print(f"quayctl {command}: cannot signal {name}: {error}", file=sys.stderr)
    except client.AgentUnreachableError as error:
        print(f"quayctl {command}: cannot signal {name}: {error}", file=sys.stderr)


def terminal_forwarder(args: argparse.Namespace, name: str, command: str) -> Any:
    """With a terminal, Ctrl-C reaches the container through it; the signals quayctl itself
    gets are forwarded: the first as it is, the next ones as SIGKILL."""
    count = [0]

    def on_signal(number: int, frame: object) -> None:
        del frame
        count[0] += 1
        forward(args, name, signal.Signals(number).name if count[0] == 1 else "SIGKILL", command)

    return on_signal


def _noted(number: int, frame: object) -> None:
    """The signal is read from the wakeup fd; the handler only keeps the default away."""
    del number, frame


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, _CHUNK)
    except OSError:
        return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass  # our reader went away (| head): the container goes on, as under docker
