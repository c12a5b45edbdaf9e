"""``quayctl logs``: a unit's container output, from journald or from its log file.

Where journald runs (``/run/systemd/journal/stdout`` is a socket) the agent hands each container
a stream to it, tagged with the unit's scope, and ``journalctl _SYSTEMD_UNIT=quay-NAME.scope``
reads it (and follows it across container restarts: the scope's name stays), with the lines the
agent relayed for an ad-hoc unit (``SYSLOG_IDENTIFIER=quay-NAME``, written by root). Elsewhere
the container appends to ``STATE_DIR/logs/NAME.log`` and this module reads it: the last N lines,
then, following, what is appended. The agent caps the file in place:
``FALLOC_FL_COLLAPSE_RANGE`` drops whole blocks from the front (or, where the filesystem cannot,
the file is emptied). A follower notices that the bytes before its position are no longer what
it read, finds the end of what it printed in the file again, and goes on from there (from the
start when it cannot: the file was emptied).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO

JOURNAL_STDOUT_SOCKET = Path("/run/systemd/journal/stdout")
"""As ``quayd.isolation.runtime.JOURNAL_STDOUT_SOCKET``: where the agent's choice is made."""

POLL_INTERVAL = 0.2
_BLOCK = 64 * 1024
_MARK = 4096  # the last bytes printed, looked for again after the file was cut
_SHORT_MARK = 256
_RESYNC_WINDOW = 64 * 1024 * 1024  # look for them in the file's last 64 MiB at most
_FOLLOW_LINES = 10


def journald_running(socket_path: Path | None = None) -> bool:
    try:
        return stat.S_ISSOCK((socket_path or JOURNAL_STDOUT_SOCKET).stat().st_mode)
    except OSError:
        return False


def journalctl_argv(args: argparse.Namespace) -> list[str]:
    # What the container wrote (journald attributes it to the writer: the scope), or what the
    # agent relayed for it under its identifier (``quayctl run`` without -t: the writer is the
    # agent, root); not ``-u``, which the relayed lines do not match.
    matches = [f"_SYSTEMD_UNIT=quay-{args.name}.scope", "+", f"SYSLOG_IDENTIFIER=quay-{args.name}"]
    argv = ["journalctl", *matches, "_UID=0", "-o", "cat", "--no-pager"]
    if args.lines is not None:
        argv += ["-n", str(args.lines)]
    if args.since is not None:
        argv += ["--since", args.since]
    if args.follow:
        argv.append("-f")
    return argv


def run(args: argparse.Namespace) -> int:
    from quayd.cli.quayctl import DEFAULT_STATE_DIR, EXIT_INVALID, EXIT_USAGE, setting_dir  # noqa: PLC0415

    if args.lines is not None and args.lines < 0:
        print("quayctl logs: -n takes a number of lines, 0 or more", file=sys.stderr)
        return EXIT_USAGE
    if not args.file and journald_running():
        argv = journalctl_argv(args)
        sys.stdout.flush()
        try:
            os.execvp(argv[0], argv)
        except OSError as error:
            print(f"quayctl logs: cannot run journalctl: {error.strerror}", file=sys.stderr)
            return EXIT_INVALID
    if args.since is not None:
        print(
            "quayctl logs: --since needs journald (a log file has no times); use -n",
            file=sys.stderr,
        )
        return EXIT_USAGE
    state_dir = setting_dir(args, "state_dir", DEFAULT_STATE_DIR)
    if state_dir is None:
        return EXIT_INVALID
    path = state_dir / "logs" / f"{args.name}.log"
    lines = args.lines if args.lines is not None else (_FOLLOW_LINES if args.follow else None)
    out = sys.stdout.buffer
    try:
        file = path.open("rb")
    except FileNotFoundError:
        print(
            f"quayctl logs: no log file {path} (the unit has not run here yet, or its output "
            "goes to journald: see --state-dir)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    except OSError as error:
        print(f"quayctl logs: cannot read {path}: {error.strerror}", file=sys.stderr)
        return EXIT_INVALID
    try:
        with Follower(path, file, out) as follower:
            follower.print_tail(lines)
            if args.follow:
                follower.follow()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        pass
    return 0


def tail_offset(file: BinaryIO, size: int, lines: int) -> int:
    """Where the last ``lines`` lines of the first ``size`` bytes of ``file`` begin."""
    if lines == 0:
        return size
    end = size
    wanted = lines + 1 if size and _byte_at(file, size - 1) == b"\n" else lines
    found = 0
    while end > 0:
        start = max(0, end - _BLOCK)
        file.seek(start)
        block = file.read(end - start)
        index = len(block)
        while True:
            index = block.rfind(b"\n", 0, index)
            if index < 0:
                break
            found += 1
            if found == wanted:
                return start + index + 1
        end = start
    return 0


def _byte_at(file: BinaryIO, offset: int) -> bytes:
    file.seek(offset)
    return file.read(1)


class Follower:
    """Prints a log file from an offset on, following it while it grows and is cut."""

    def __init__(self, path: Path, file: BinaryIO, out: BinaryIO) -> None:
        self.path = path
        self.file = file
        self.out = out
        self.position = 0
        self.mark = b""  # the last bytes printed (at most _MARK)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.file.close()

    def print_tail(self, lines: int | None) -> None:
        size = os.fstat(self.file.fileno()).st_size
        start = 0 if lines is None else tail_offset(self.file, size, lines)
        self.position = start
        self.pump(size)

    def pump(self, size: int) -> None:
        """Print from the position up to ``size`` (or the end, when it grew meanwhile)."""
        self.file.seek(self.position)
        while self.position < size:
            data = self.file.read(min(_BLOCK, size - self.position))
            if not data:
                break
            self.out.write(data)
            self.position += len(data)
            self.mark = (self.mark + data)[-_MARK:]
        self.out.flush()

    def follow(self, interval: float = POLL_INTERVAL) -> None:
        while True:
            self.step()
            time.sleep(interval)

    def step(self) -> None:
        """One look at the file: reopen it when replaced, resynchronise when cut, print the new."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return  # removed: wait for it to come back
        current = os.fstat(self.file.fileno())
        if (info.st_dev, info.st_ino) != (current.st_dev, current.st_ino):
            self.file.close()
            self.file = self.path.open("rb")
            self.position = 0
            self.mark = b""
            current = os.fstat(self.file.fileno())
        size = current.st_size
        if self._cut(size):
            self.position = self._resync(size)
        if size > self.position:
            self.pump(size)

    def _cut(self, size: int) -> bool:
        """Whether the bytes before the position are no longer the ones printed."""
        if size < self.position:
            return True
        check = self.mark[-min(64, self.position) :] if self.position else b""
        if not check:
            return False
        self.file.seek(self.position - len(check))
        return self.file.read(len(check)) != check

    def _resync(self, size: int) -> int:
        """Just after the last bytes printed, found in the file again; else the start."""
        if not self.mark:
            return 0
        start = max(0, size - _RESYNC_WINDOW)
        self.file.seek(start)
        data = self.file.read(size - start)
        for mark in (self.mark, self.mark[-_SHORT_MARK:]):  # the short one, if cut into
            index = data.rfind(mark)
            if index >= 0:
                return start + index + len(mark)
        self.mark = b""
        return 0
