"""Commands that run on the far host, over ssh (:mod:`quayd.cli.targets` says which).

Here, :func:`run_forwarded` runs ``ssh [-t] HOST quayctl system forwarded -- --host local
[GLOBAL OPTIONS] COMMAND…`` attached to this process's stdio and exits with its status; the
signals this process gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT) go to ssh, which ends the session.
With ``-t`` the far command has a terminal: ssh passes the window size and its changes on, and
in raw mode Ctrl-C is a byte the far side's terminal turns into its SIGINT.

There, :func:`cmd_forwarded` runs the command in a child and watches its own stdout: a session
without a terminal that ends (the client interrupted, the connection lost) leaves sshd's pipe
without a reader, which nothing would tell a ``journalctl -f`` waiting for the next line; the
guard sees it (poll's POLLERR/POLLHUP) and sends the command SIGTERM, so nothing lingers.

``plan DIR`` with a host: DIR is read here and sent as a tar on ssh's stdin to the far
``quayctl system plan-archive``, which unpacks it into a private temporary directory, asks its
agent's dry run (``POST /v1/plan``), prints the answer with DIR's name in the paths, and removes
it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from quayd.cli.remote import (
    SSH_FAILED,
    Destination,
    HostError,
    SshTarget,
    remote_argv,
    ssh_argv,
)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
EXIT_FAILED = 1
EXIT_USAGE = 2
POLL_INTERVAL = 0.2
KILL_AFTER = 15.0
"""Seconds from the guard's SIGTERM to its SIGKILL, should the command not end."""
MAX_ARCHIVE = 64 * 1024 * 1024
"""A config directory is text: more than this is a mistake (a wrong DIR)."""


# --- here ----------------------------------------------------------------------------------------


def forwarded_argv(
    destination: Destination,
    passed_on: Sequence[str],
    command: Sequence[str],
    environ: Mapping[str, str],
    *,
    tty: bool,
) -> list[str]:
    """ssh's command line for ``command`` (a subcommand and its arguments) on the far host."""
    target = _ssh_target(destination)
    far = remote_argv(target, environ, (), "system", "forwarded", "--", "--host", "local")
    return ssh_argv(target, [*far, *passed_on, *command], environ, tty=tty)


def _ssh_target(destination: Destination) -> SshTarget:
    if not isinstance(destination.target, SshTarget):
        raise HostError(f"{destination.name} is not reached over ssh")
    return destination.target


def run_forwarded(
    destination: Destination,
    passed_on: Sequence[str],
    command: Sequence[str],
    environ: Mapping[str, str],
    *,
    tty: bool,
    stdin: bytes | None = None,
) -> int:
    """Run ``command`` on the far host; its status, or ssh's own failure said."""
    argv = forwarded_argv(destination, passed_on, command, environ, tty=tty)
    return run_ssh(destination.name, argv, command[0] if command else "", stdin=stdin)


def run_ssh(name: str, argv: list[str], command: str, *, stdin: bytes | None = None) -> int:
    """Run ssh attached to this process's stdio (``stdin``'s bytes instead, when given); its
    status. A signal this process gets ends ssh (it exits 255 for it): the status is then the
    signal's, 128+N, as a shell gives it."""
    import subprocess  # noqa: PLC0415

    try:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else None)
    except OSError as error:
        print(f"quayctl {command}: cannot run {argv[0]}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILED
    received: list[int] = []
    previous = {sig: signal.signal(sig, _to(process, received)) for sig in FORWARDED_SIGNALS}
    try:
        if stdin is not None and process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.write(stdin)
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        status = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and status in (SSH_FAILED, -received[0]):
        return 128 + received[0]
    if status == SSH_FAILED:
        print(
            f"quayctl {command}: ssh to {name} failed (exit {SSH_FAILED}; its message is above): "
            "check the host name, the port, your key or ssh-agent, and known_hosts",
            file=sys.stderr,
        )
    return status if status >= 0 else 128 - status


def _to(process: Any, received: list[int]) -> Any:
    def send(number: int, frame: object) -> None:
        del frame
        received.append(number)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(number)

    return send


# --- there ---------------------------------------------------------------------------------------


def cmd_forwarded(args: argparse.Namespace) -> int:
    """Run ``args.arguments`` (a whole quayctl command line) in a child, stopped should the
    session end under it."""
    arguments = list(args.arguments)
    if arguments and arguments[0] == "--":
        arguments = arguments[1:]
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        _run_child(arguments)
    previous = {sig: signal.getsignal(sig) for sig in FORWARDED_SIGNALS}
    # As system(): the child shares the terminal, so Ctrl-C reaches it; SIGTERM and SIGHUP
    # sent to this process alone are passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: _signal(child, number))
    try:
        return _watch(child)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_child(arguments: list[str]) -> None:
    from quayd.cli import quayctl  # noqa: PLC0415

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    code = EXIT_FAILED
    try:
        code = quayctl.main(arguments)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        import traceback  # noqa: PLC0415

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _signal(child: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, number)


def _watch(child: int) -> int:
    """Wait for ``child``; SIGTERM it once stdout has no reader (SIGKILL 15 s later)."""
    watcher = select.poll()
    watcher.register(sys.stdout.fileno(), 0)  # no events asked: POLLERR and POLLHUP still come
    terminated_at: float | None = None
    while True:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) % 256 if status else 0
        hung_up = any(e & (select.POLLERR | select.POLLHUP) for _, e in watcher.poll(0))
        if hung_up and terminated_at is None:
            terminated_at = time.monotonic()
            _signal(child, signal.SIGTERM)
        elif terminated_at is not None and time.monotonic() - terminated_at > KILL_AFTER:
            _signal(child, signal.SIGKILL)
        time.sleep(POLL_INTERVAL)


# --- plan DIR -------------------------------------------------------------------------------------


def archive_of(directory: Path) -> bytes:
    """DIR's regular files and directories as a tar (symlinks followed, as the agent would)."""
    import io  # noqa: PLC0415
    import tarfile  # noqa: PLC0415

    if not directory.is_dir():
        raise HostError(f"{directory} is not a directory")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() or path.is_dir():
                archive.add(path, arcname=str(path.relative_to(directory)), recursive=False)
            if buffer.tell() > MAX_ARCHIVE:
                raise HostError(f"{directory} holds more than {MAX_ARCHIVE} bytes: not units")
    return buffer.getvalue()


def plan_directory(
    destination: Destination,
    passed_on: Sequence[str],
    command: Sequence[str],
    environ: Mapping[str, str],
) -> int:
    """``quayctl --host H plan DIR``: DIR from here, planned by H's agent."""
    from quayd.cli.quayctl import build_agent_parser  # noqa: PLC0415

    args = build_agent_parser().parse_args(list(command))
    try:
        archive = archive_of(args.dir)
        target = _ssh_target(destination)
    except (HostError, OSError) as error:
        print(f"quayctl plan: {error}", file=sys.stderr)
        return EXIT_FAILED
    far = remote_argv(target, environ, passed_on, "system", "plan-archive")
    far += ["--shown-as", str(args.dir), "--timeout", f"{args.timeout:g}"]
    if args.json:
        far.append("--json")
    argv = ssh_argv(target, far, environ, tty=False)
    return run_ssh(destination.name, argv, "plan", stdin=archive)


def cmd_plan_archive(args: argparse.Namespace) -> int:
    """There: the tar on stdin unpacked into a private directory, planned, then removed."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    data = sys.stdin.buffer.read(MAX_ARCHIVE + 1)
    if len(data) > MAX_ARCHIVE:
        print(f"quayctl plan: more than {MAX_ARCHIVE} bytes sent: not units", file=sys.stderr)
        return EXIT_FAILED
    staging = tempfile.mkdtemp(prefix="quayctl-plan-")
    try:
        unpack(data, Path(staging))
        return plan_shown_as(args, Path(staging), args.shown_as)
    except (OSError, ValueError) as error:
        print(f"quayctl plan: {args.shown_as} cannot be unpacked here: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def unpack(data: bytes, into: Path) -> None:
    """Regular files and directories only, each inside ``into`` (a name that is absolute or
    climbs out with ``..`` is refused); links, devices and the rest are left out. Made here
    one by one (this Python's tarfile may lack extraction filters)."""
    import io  # noqa: PLC0415
    import tarfile  # noqa: PLC0415
    from pathlib import PurePosixPath  # noqa: PLC0415

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive.getmembers():
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(f"{member.name!r} is not inside the directory")
            path = into.joinpath(*name.parts)
            if member.isdir():
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif member.isfile():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None  # a regular file's member has its content
                with source, path.open("xb") as target:
                    target.write(source.read())


def plan_shown_as(args: argparse.Namespace, staging: Path, shown_as: str) -> int:
    """``quayctl plan`` of ``staging``, its paths printed as ``shown_as`` (the caller's DIR)."""
    import io  # noqa: PLC0415

    from quayd.cli import quayctl  # noqa: PLC0415

    plan_args = argparse.Namespace(**{**vars(args), "dir": staging})
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = quayctl.cmd_plan(plan_args)
    sys.stdout.write(out.getvalue().replace(str(staging), shown_as))
    sys.stderr.write(err.getvalue().replace(str(staging), shown_as))
    return code
