"""quayctl's interactive commands: ``exec -i/-t`` and ``run`` (its ``-t`` attach).

* ``exec -it NAME CMD…`` runs the OCI runtime itself (root only, as the exec API): it replaces
  quayctl with ``crun --root RUN_DIR/crun [--systemd-cgroup] exec --tty --process FILE NAME``
  (:meth:`quayd.isolation.runtime.OciRuntime.exec_argv`; FILE the container's own process with
  CMD, as every exec of quay's), which makes a terminal in the container and relays it to
  quayctl's own.
* ``run -t`` and ``attach`` (:mod:`quayd.cli.run`) to a unit with a terminal: on
  ``RUN_DIR/attach.sock`` quayctl receives the master of the container's terminal
  (``SCM_RIGHTS``), puts its own terminal in raw mode, forwards window size changes and copies
  stdin to the master; the agent reads the terminal (so its output also reaches the log) and
  sends its output as frames on the same connection, then the exit frame, whose status quayctl
  exits with.

Standard library only, like the rest of quayctl's agent commands (the runtime module is loaded
for ``exec -it`` alone).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from quayd.cli.control import (
    EXIT_REFUSED,
    EXIT_USAGE,
    call,
    exit_status,
    unit_path,
)

ATTACH_SOCKET = "attach.sock"
"""``RUN_DIR/attach.sock`` (``quayd.agent.attach.ATTACH_SOCKET`` says the same)."""
EXIT_FAILED = 125
"""``run``'s and ``attach``'s own failure, as Docker's (``quayd.cli.run.EXIT_FAILED``)."""
EXIT_WAIT = 10.0
"""Seconds to wait for the exit status once the terminal closed."""
_CHUNK = 65536


def exec_interactive(args: argparse.Namespace, argv: list[str]) -> int:
    """``quayctl exec -i/-t``: check the unit runs, then become the runtime's ``exec``."""
    if args.tty and not os.isatty(0):
        print("quayctl exec: -t needs a terminal as input (drop -t)", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print(
            "quayctl exec: -i/-t need root (quayctl runs the OCI runtime itself)", file=sys.stderr
        )
        return EXIT_REFUSED
    code, reply = call(args, "GET", unit_path(args.name), timeout=5.0)
    if code:
        return code
    container = reply.get("container") if isinstance(reply, dict) else None
    if not isinstance(container, dict) or not isinstance(container.get("id"), str):
        print(f"quayctl exec: {args.name} has no running container", file=sys.stderr)
        return EXIT_REFUSED
    command = runtime_exec_argv(args, container["id"], argv, tty=args.tty)
    if command is None:
        return EXIT_REFUSED
    if not args.interactive:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    sys.stdout.flush()
    sys.stderr.flush()
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
    }
    try:
        os.execvpe(command[0], command, environment)
    except OSError as error:
        print(f"quayctl exec: cannot run {command[0]}: {error}", file=sys.stderr)
    return EXIT_REFUSED


def runtime_exec_argv(
    args: argparse.Namespace, container_id: str, argv: list[str], *, tty: bool
) -> list[str] | None:
    """The runtime's command line as the agent would run it (its runtime, root, cgroup driver)."""
    from quayd.cli.quayctl import DEFAULT_RUN_DIR, setting_dir  # noqa: PLC0415
    from quayd.isolation.exec_io import process_file  # noqa: PLC0415
    from quayd.isolation.runtime import OciRuntime, RuntimeCommandError  # noqa: PLC0415

    run_dir = setting_dir(args, "run_dir", DEFAULT_RUN_DIR)
    if run_dir is None:
        return None
    runtime_name, driver = runtime_settings(args.config)
    systemd = driver == "systemd" or (driver == "auto" and Path("/run/systemd/system").is_dir())
    runtime = OciRuntime(runtime_name, run_dir=run_dir, systemd_cgroup=systemd)
    try:
        # The container's own process settings (no_new_privs, capabilities, rlimits, user),
        # in a memfd the runtime reads after quayctl has become it.
        process = runtime.exec_process(container_id, argv, terminal=tty)
        fd = process_file(process)
        return runtime.exec_argv(container_id, f"/proc/self/fd/{fd}", tty=tty)
    except (RuntimeCommandError, OSError) as error:
        print(f"quayctl exec: {error}", file=sys.stderr)
        return None


def runtime_settings(config: Path | None) -> tuple[str, str]:
    """``runtime`` and ``cgroup_driver`` of the settings file (defaults: crun, auto)."""
    import tomllib  # noqa: PLC0415

    from quayd.cli.quayctl import DEFAULT_SETTINGS_FILE  # noqa: PLC0415

    document: dict[str, Any] = {}
    with (
        contextlib.suppress(OSError, ValueError),
        (config or DEFAULT_SETTINGS_FILE).open("rb") as file,
    ):
        document = tomllib.load(file)
    runtime = document.get("runtime", "crun")
    driver = document.get("cgroup_driver", "auto")
    return (
        runtime if isinstance(runtime, str) else "crun",
        driver if isinstance(driver, str) else "auto",
    )


# --- run -t, attach ------------------------------------------------------------------------------


def attached_terminal(
    args: argparse.Namespace,
    name: str,
    master: int,
    connection: socket.socket,
    on_signal: Any = None,
) -> int:
    """``quayctl run -t`` / ``attach`` once the agent sent the terminal's ``master``: relay it
    to this terminal until the process ends, then exit with its status."""
    try:
        ended = relay(master, connection, on_signal)
    finally:
        os.close(master)
    if ended is None:
        ended = _last_exit(args, name)
    if ended is None:
        print(f"quayctl {args.command}: {name} ended; its exit status is unknown", file=sys.stderr)
        return EXIT_FAILED
    return status_of(ended)


def status_of(ended: dict[str, Any]) -> int:
    """The exit status as a shell gives it: the code, or 128+N for a signal (named or numbered)."""
    sig = ended.get("signal")
    if isinstance(sig, str):
        with contextlib.suppress(KeyError):
            return 128 + int(signal.Signals[sig])
        return EXIT_REFUSED
    if isinstance(sig, int):
        return 128 + sig
    return exit_status(ended.get("code"))


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""The signals ``on_signal`` gets while attached (this terminal stays raw otherwise)."""


def relay(master: int, connection: socket.socket, on_signal: Any = None) -> dict[str, Any] | None:
    """Copy stdin to ``master`` and the terminal's output (the agent's frames) to stdout, this
    terminal raw, until the exit frame (returned); None when the terminal closed without one.
    ``on_signal`` handles :data:`FORWARDED` meanwhile."""
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    stdin = 0
    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin, termios.TCSADRAIN)  # not TCSAFLUSH: what was typed ahead goes on
    resize = _window_follower(stdin, master)
    previous = signal.signal(signal.SIGWINCH, resize)
    handled = {sig: signal.signal(sig, on_signal) for sig in FORWARDED} if on_signal else {}
    resize()
    try:
        return _copy(stdin, master, connection)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        for sig, handler in handled.items():
            signal.signal(sig, handler)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def _window_follower(terminal: int, master: int) -> Any:
    import fcntl  # noqa: PLC0415
    import termios  # noqa: PLC0415

    def resize(*_: object) -> None:
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(terminal, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)

    return resize


def _copy(stdin: int, master: int, connection: socket.socket) -> dict[str, Any] | None:
    """The agent reads the terminal (so its output reaches the log too) and sends it as frames;
    quayctl writes its input to ``master`` itself. Should the agent go away, quayctl reads the
    terminal directly until it closes (the exit status is then asked for)."""
    from quayd.agent.frames import EXIT, FrameError, FrameReader, decode_exit  # noqa: PLC0415

    reader = FrameReader()
    sock = connection.fileno()
    inputs = [stdin, sock]
    while True:
        readable, _, _ = select.select(inputs, [], [])
        if master in readable:
            data = _read(master)
            if not data:
                return None
            _write_all(1, data)
        if stdin in readable:
            data = _read(stdin)
            if data:
                _write_all(master, data)
            else:
                inputs.remove(stdin)  # end of input: the container's process goes on
        if sock in readable:
            try:
                data = connection.recv(_CHUNK)
                frames = reader.feed(data) if data else None
            except (OSError, FrameError):
                frames = None
            if frames is None:  # the agent went away: the terminal goes on without it
                inputs.remove(sock)
                inputs.append(master)
                continue
            for stream, payload in frames:
                if stream == EXIT:
                    with contextlib.suppress(FrameError):
                        return decode_exit(payload)
                    return None
                _write_all(1, payload)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, _CHUNK)
    except OSError as error:
        if error.errno == errno.EIO:  # the other side of the terminal is closed
            return b""
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_line(connection: socket.socket) -> str:
    data = b""
    with contextlib.suppress(OSError):
        while not data.endswith(b"\n") and len(data) < 65536:
            chunk = connection.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def _last_exit(args: argparse.Namespace, name: str) -> dict[str, Any] | None:
    """The agent did not say (it restarted meanwhile): ask for the unit's last exit."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + EXIT_WAIT
    while time.monotonic() < deadline:
        code, reply = call(args, "GET", unit_path(name), timeout=5.0)
        if code:
            return None
        last = reply.get("last_exit") if isinstance(reply, dict) else None
        if isinstance(last, dict) and reply.get("state") not in ("running", "starting"):
            return last
        time.sleep(0.2)
    return None
