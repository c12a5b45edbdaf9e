"""Interrupt a command as Ctrl-C would, inside a test host (``host.call(interrupt, ...)``).

:func:`interrupt` runs the command with pipes as its stdio (no terminal: ``quayctl run``
without -t), waits until its stdout shows a text, sends it a signal, and returns its stdout,
stderr, exit status and how long it took from the signal to its end.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import Any


def interrupt(
    argv: list[str], expect: str, signal_name: str = "SIGINT", timeout: float = 30.0
) -> dict[str, Any]:
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stderr is not None
    streams = {process.stdout.fileno(): b"", process.stderr.fileno(): b""}
    deadline = time.monotonic() + timeout
    signalled_at: float | None = None
    open_fds = list(streams)
    while open_fds and time.monotonic() < deadline:
        readable, _, _ = select.select(open_fds, [], [], max(0.0, deadline - time.monotonic()))
        for fd in readable:
            data = os.read(fd, 65536)
            if not data:
                open_fds.remove(fd)
            streams[fd] += data
        if signalled_at is None and expect.encode() in streams[process.stdout.fileno()]:
            signalled_at = time.monotonic()
            process.send_signal(signal.Signals[signal_name])
    try:
        status = process.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        status = None
    ended_after = None if signalled_at is None else time.monotonic() - signalled_at
    return {
        "stdout": streams[process.stdout.fileno()].decode(errors="replace"),
        "stderr": streams[process.stderr.fileno()].decode(errors="replace"),
        "status": status,
        "signalled": signalled_at is not None,
        "ended_after": ended_after,
    }
