"""The I/O of an exec: its process in a memfd, its output, and the process group it leaves.

:meth:`runtime.OciRuntime.exec` runs ``RUNTIME exec --process /proc/self/fd/N``; this module
holds the parts that are not the runtime's command line: :func:`process_file` (the memfd),
:func:`communicate` (stdin in, output out, until the runtime exits rather than until the pipes
close) and :class:`ExecGroup` (the command's process group, killed once it ends).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DRAIN_SECONDS = 1.0
"""How long an exec's output is still read once its runtime process has exited."""
GROUP_POLL = 0.005
"""How often a running exec's pid file is looked for (to learn its process group)."""
STRAY_WAIT = 1.0
"""How long an exec waits for a runtime helper it left behind to finish exiting."""


def process_file(process: Mapping[str, Any]) -> int:
    """An inheritable memfd holding ``process`` as JSON, for ``exec --process /proc/self/fd/N``:
    nothing on disk to clean up, even when the caller replaces itself with the runtime. The
    runtime does not pass it on (both close every fd above 2 in the container's process)."""
    fd = os.memfd_create("quay-exec-process", 0)  # no MFD_CLOEXEC: the runtime inherits it
    try:
        data = json.dumps(process).encode()
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    os.set_inheritable(fd, True)
    return fd


def communicate(
    runner: subprocess.Popen[bytes],
    stdin: bytes | None,
    timeout: float | None,
    *,
    group: ExecGroup,
) -> tuple[bytes, bytes]:
    """The output of an exec, read until the runtime exits (not until the pipes close: a
    background child of the command holds them open), then what is left of the command's
    ``group`` killed and the rest read, for at most :data:`DRAIN_SECONDS` (a process that
    left the group may hold the pipes for ever). The group is learnt while the command runs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    output: dict[int, bytearray] = {}
    pending = memoryview(stdin or b"")
    with selectors.DefaultSelector() as selector, _pidfd(runner.pid) as exited:
        for pipe in (runner.stdout, runner.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            output[pipe.fileno()] = bytearray()
            selector.register(pipe.fileno(), selectors.EVENT_READ)
        stdin_fd = runner.stdin.fileno() if runner.stdin is not None else -1
        if runner.stdin is not None:
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)
        selector.register(exited, selectors.EVENT_READ)
        ended_at: float | None = None
        while ended_at is None or selector.get_map():
            now = time.monotonic()
            if ended_at is None and deadline is not None and now >= deadline:
                raise subprocess.TimeoutExpired(runner.args, timeout or 0)
            if ended_at is not None and now >= ended_at + DRAIN_SECONDS:
                break
            limit = ended_at + DRAIN_SECONDS if ended_at is not None else deadline
            wait = None if limit is None else max(0.0, limit - now)
            if ended_at is None and not group.learn():
                wait = GROUP_POLL if wait is None else min(wait, GROUP_POLL)
            for key, _ in selector.select(wait):
                fd = int(key.fd)
                if fd == exited:
                    selector.unregister(fd)
                    runner.wait()
                    group.kill()
                    ended_at = time.monotonic()
                elif fd == stdin_fd:
                    pending = _write_some(fd, pending)
                    if not pending and runner.stdin is not None:
                        selector.unregister(fd)
                        runner.stdin.close()
                else:
                    chunk = os.read(fd, 65536)
                    output[fd] += chunk
                    if not chunk:
                        selector.unregister(fd)
    assert runner.stdout is not None
    assert runner.stderr is not None
    result = bytes(output[runner.stdout.fileno()]), bytes(output[runner.stderr.fileno()])
    close_pipes(runner)
    return result


def _write_some(fd: int, pending: memoryview) -> memoryview:
    """What is left of ``pending`` after one write (nothing once the reader is gone)."""
    try:
        return pending[os.write(fd, pending[:65536]) :]
    except BrokenPipeError:
        return pending[:0]


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int]:
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        os.close(fd)


def close_pipes(runner: subprocess.Popen[bytes]) -> None:
    for pipe in (runner.stdin, runner.stdout, runner.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class ExecGroup:
    """The process group of an exec's command, to kill what it leaves behind.

    Both runtimes start the command in a new session, led by a helper process of theirs that
    exits at once, so the group's id is not the command's pid: it is read from the command
    (``getpgid`` of the pid in the runtime's ``--pid-file``) while it runs. The id stays the
    group's while any member is left (the kernel frees a pid only when nothing uses it), so a
    kill reaches no other process. A command that ends before its group is learnt (within
    :data:`GROUP_POLL`) has only its own pid killed, which is then gone anyway.
    """

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = pid_file
        self.pid: int | None = None
        self.group: int | None = None

    def learn(self) -> bool:
        """True once the group is known (or known to be unknowable)."""
        if self.pid is None:
            try:
                self.pid = int(self.pid_file.read_text().strip())
            except (OSError, ValueError):
                return False
            try:
                group = os.getpgid(self.pid)
            except ProcessLookupError:
                return True
            # Never quayd's own group, whatever a runtime does.
            self.group = group if group not in (os.getpgrp(), 0) else None
        return True

    def kill(self) -> None:
        self.learn()
        for target, kill in ((self.pid, os.kill), (self.group, os.killpg)):
            if target is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(target, signal.SIGKILL)


def reap_stray_zombies(wait: float = STRAY_WAIT) -> list[int]:
    """Reap this process's children that are a container's processes but not its init, waiting
    up to ``wait`` s for those still exiting; return the pids reaped.

    When ``crun exec`` fails (the command is not found, the container is stopping) it exits
    without reaping its helper in the container's pid namespace, which a subreaper (quayd)
    then inherits; the helper may still be dying when the runtime's exit is seen. As a zombie
    it is still a member of the namespace, so the container's init cannot finish exiting (the
    kernel waits for every member to be reaped): the stop that follows hangs past SIGKILL. A
    container's init is never reaped here (it is pid 1 of its namespace, and
    :class:`runtime.ExitWatcher` reads its status), nor any child in quayd's own namespace
    (a runtime process some thread is waiting for). quayd starts no other process inside a
    container, so a child there that is not an init is always such a helper.
    """
    reaped: list[int] = []
    deadline = time.monotonic() + wait
    while True:
        exiting = False
        for pid in _children():
            state = _stray_state(pid)
            if state is None:
                continue
            if state != "Z":
                exiting = True
                continue
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
        if not exiting or time.monotonic() >= deadline:
            return reaped
        time.sleep(0.01)


def _stray_state(pid: int) -> str | None:
    """The state letter of child ``pid`` when it is in a container's namespace but not its
    init; None otherwise (or when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    ids = fields.get("NSpid", "").split()
    if len(ids) < 2 or ids[-1] == "1":
        return None
    return fields.get("State", "").strip()[:1]


def _children() -> list[int]:
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            pids += [
                int(pid) for pid in Path(f"/proc/self/task/{task}/children").read_text().split()
            ]
    return pids
