"""Drive a command through a pseudo-terminal, as a person at a terminal would.

:func:`drive` runs in the systemd test host (``host.call(drive, ...)``): the command gets a new
pty as its controlling terminal and stdio (``pty.fork``); each step waits until the output
shows a text, then types, or resizes the window (SIGWINCH goes to the command).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time
from typing import Any

SHELL_SESSION: list[dict[str, Any]] = [
    {"expect": "# ", "send": "stty size\n"},
    {"expect": "24 80", "resize": [30, 100]},
    {"expect": "# ", "send": "stty size\n"},
    {"expect": "30 100", "send": "echo hello-$((6*7))\n"},
    {"expect": "hello-42", "send": "exit 3\n"},
]
"""``drive``'s steps for ``run -it IMAGE sh`` on a 24x80 pty: the size, a resize, a command,
``exit 3`` (the run's status)."""


def drive(
    argv: list[str], steps: list[dict[str, Any]], size: list[int], timeout: float = 30.0
) -> dict[str, Any]:
    """Run ``argv`` on a pty of ``size`` (rows, columns). Each step may ``expect`` a text in
    the output (since the previous expectation), then ``send`` a text, ``resize`` the window
    or send the command a ``signal`` (by name).
    Returns the whole output, the exit status (``None`` if it did not end in time) and the
    step that timed out, if one did."""
    pid, master = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal and its stdio
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _resize(master, size)
    output = b""
    seen = 0
    deadline = time.monotonic() + timeout
    failed = None
    for index, step in enumerate(steps):
        expected = step.get("expect")
        if expected is not None:
            output, found = _read_until(master, output, seen, expected.encode(), deadline)
            if found is None:
                failed = index
                break
            seen = found
        if "resize" in step:
            _resize(master, step["resize"])
        if "send" in step:
            os.write(master, step["send"].encode())
        if "signal" in step:  # to the command itself, as `kill` would
            os.kill(pid, signal.Signals[step["signal"]])
    if failed is None:  # the rest, until the terminal closes
        output, _ = _read_until(master, output, seen, None, deadline)
    status = _reap(pid, deadline)
    os.close(master)
    return {"output": output.decode(errors="replace"), "status": status, "failed_step": failed}


def _read_until(
    master: int, output: bytes, seen: int, expected: bytes | None, deadline: float
) -> tuple[bytes, int | None]:
    """Read until ``expected`` shows after ``seen`` (its end's offset, or None at the deadline
    or the end), or with None until the terminal closes."""
    while expected is None or expected not in output[seen:]:
        chunk = _read(master, deadline)
        if not chunk:
            return output, None
        output += chunk
    return output, output.index(expected, seen) + len(expected)


def _reap(pid: int, deadline: float) -> int | None:
    """The exit status; None (and SIGKILL) if it did not end by the deadline."""
    while time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(code)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


def _read(master: int, deadline: float) -> bytes | None:
    """Some output; b"" once the terminal closed; None at the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    readable, _, _ = select.select([master], [], [], left)
    if not readable:
        return None
    try:
        return os.read(master, 65536)
    except OSError:  # EIO: the command and its children closed the terminal
        return b""


def _resize(master: int, size: list[int]) -> None:
    rows, columns = size
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
