"""quayctl's interactive commands: ``exec -i/-t`` and ``run`` (its ``-t`` attach).

* ``exec -it NAME CMD…`` runs the OCI runtime itself (root only, as the exec API): it replaces
  quayctl with ``crun --root RUN_DIR/crun [--systemd-cgroup] exec --tty NAME CMD…``
  (:meth:`quayd.isolation.runtime.OciRuntime.exec_argv`), which makes a terminal in the
  container and relays it to quayctl's own.
* ``run [-it] IMAGE [CMD…]`` asks the agent for an ad-hoc unit (``POST /v1/run``). With ``-t``
  it then connects to ``RUN_DIR/attach.sock``, receives the master of the container's terminal
  (``SCM_RIGHTS``), puts its own terminal in raw mode, forwards window size changes, copies
  stdin → master → stdout until the container's process ends, and exits with its status (which
  the agent sends on the attach connection).

Standard library only, like the rest of quayctl's agent commands (the runtime module is loaded
for ``exec -it`` alone).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from quayd.cli.control import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    call,
    exit_status,
    unit_path,
)

ATTACH_SOCKET = "attach.sock"
"""``RUN_DIR/attach.sock`` (``quayd.agent.agent.ATTACH_SOCKET`` says the same)."""
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
    from quayd.isolation.runtime import OciRuntime, RuntimeCommandError  # noqa: PLC0415

    run_dir = setting_dir(args, "run_dir", DEFAULT_RUN_DIR)
    if run_dir is None:
        return None
    runtime_name, driver = runtime_settings(args.config)
    systemd = driver == "systemd" or (driver == "auto" and Path("/run/systemd/system").is_dir())
    runtime = OciRuntime(runtime_name, run_dir=run_dir, systemd_cgroup=systemd)
    try:
        return runtime.exec_argv(container_id, argv, tty=tty)
    except RuntimeCommandError as error:
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


# --- run -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``quayctl run``: an ad-hoc unit; with ``-t``, attached to this terminal until it ends."""
    if args.interactive and not args.tty:
        print("quayctl run: -i needs -t (stdin is given through a terminal)", file=sys.stderr)
        return EXIT_USAGE
    if args.tty and not os.isatty(0):
        print("quayctl run: -t needs a terminal as input (drop -it)", file=sys.stderr)
        return EXIT_USAGE
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    body: dict[str, Any] = {
        "image": args.image,
        "ports": list(args.publish or []),
        "tty": bool(args.tty),
        "rm": args.tty if args.rm is None else bool(args.rm),
    }
    if argv:
        body["argv"] = argv
    if args.name:
        body["name"] = args.name
    if args.tty:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(0)
            if size.lines > 0 and size.columns > 0:
                body["console_size"] = [size.lines, size.columns]
    code, reply = call(args, "POST", "/v1/run", body, timeout=args.timeout)
    if code:
        return code
    name = reply.get("unit") if isinstance(reply, dict) else None
    if not isinstance(name, str):
        print("quayctl run: the agent's answer names no unit", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not args.tty:
        print(name)
        return EXIT_OK
    return attach(args, name)


def attach(args: argparse.Namespace, name: str) -> int:
    from quayd.cli.quayctl import DEFAULT_RUN_DIR, setting_dir  # noqa: PLC0415

    run_dir = setting_dir(args, "run_dir", DEFAULT_RUN_DIR)
    if run_dir is None:
        return EXIT_REFUSED
    path = run_dir / ATTACH_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.settimeout(10.0)
            connection.connect(str(path))
            connection.sendall(f"{name}\n".encode())
            message, fds, _, _ = socket.recv_fds(connection, 1, 1)
        except OSError as error:
            print(f"quayctl run: cannot attach to {name} at {path}: {error}", file=sys.stderr)
            return EXIT_UNREACHABLE
        if message != b"+" or not fds:
            for fd in fds:
                os.close(fd)
            rest = _read_line(connection) if message == b"-" else ""
            print(f"quayctl run: cannot attach to {name}: {rest or 'no answer'}", file=sys.stderr)
            return EXIT_REFUSED
        master = fds[0]
        try:
            relay(master, connection)
        finally:
            os.close(master)
        ended = _exit_line(connection)
    if ended is None:
        ended = _last_exit(args, name)
    if ended is None:
        print(f"quayctl run: {name} ended; its exit status is unknown", file=sys.stderr)
        return EXIT_REFUSED
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


def relay(master: int, connection: socket.socket) -> None:
    """Copy stdin to ``master`` and ``master`` to stdout, this terminal raw, until the container's
    process is gone (the master reads EIO or EOF, or the agent says it ended)."""
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    stdin = 0
    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    resize = _window_follower(stdin, master)
    previous = signal.signal(signal.SIGWINCH, resize)
    resize()
    try:
        _copy(stdin, master, connection)
    finally:
        signal.signal(signal.SIGWINCH, previous)
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


def _copy(stdin: int, master: int, connection: socket.socket) -> None:
    inputs = [stdin, master, connection.fileno()]
    while True:
        readable, _, _ = select.select(inputs, [], [])
        if master in readable:
            data = _read(master)
            if not data:
                return
            _write_all(1, data)
        if stdin in readable:
            data = _read(stdin)
            if data:
                _write_all(master, data)
            else:
                inputs.remove(stdin)  # end of input: the container's process goes on
        if connection.fileno() in readable:
            try:
                said = connection.recv(1, socket.MSG_PEEK)
            except OSError:
                said = b""
            if said:
                _drain(master)  # it ended: print what is left in the terminal
                return
            inputs.remove(connection.fileno())  # the agent went away; the terminal goes on


def _drain(master: int) -> None:
    os.set_blocking(master, False)
    while True:
        try:
            data = os.read(master, _CHUNK)
        except OSError:
            return
        if not data:
            return
        _write_all(1, data)


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


def _read_line(connection: socket.socket) -> str:
    data = b""
    with contextlib.suppress(OSError):
        while not data.endswith(b"\n") and len(data) < 65536:
            chunk = connection.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def _exit_line(connection: socket.socket) -> dict[str, Any] | None:
    connection.settimeout(EXIT_WAIT)
    line = _read_line(connection)
    try:
        ended = json.loads(line) if line else None
    except ValueError:
        return None
    return ended if isinstance(ended, dict) and ended else None


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
