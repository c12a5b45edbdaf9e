"""The agent's loop: when passes run. Events (file changes, exits, readiness, finished
actions, API commands) only wake it; a burst of file changes is coalesced; timers (the
planner's ``wake_at``, update checks) and a periodic resync wake it too. Under systemd it
pings the watchdog from the loop itself (so a hung loop is caught) and says READY, RELOADING,
STATUS and STOPPING.

:class:`Loop` owns the wake-up, the pending file changes and the stop and reload requests;
what a pass does is :mod:`quayd.agent.passes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from quayd.agent.file_changes import LONGEST_SECONDS, QUIET_SECONDS, FileChanges

RESYNC_SECONDS = 30.0
"""A full pass at least this often, whatever woke the loop (or nothing)."""
COALESCE_SECONDS = QUIET_SECONDS
COALESCE_MAX_SECONDS = LONGEST_SECONDS
TIMER_SLACK = 0.01
"""Seconds after a timer's moment the pass runs (so the planner sees the moment passed)."""


class Notifier(Protocol):
    """systemd's notify socket (sdnotify's SystemdNotifier; a no-op outside systemd)."""

    def notify(self, state: str) -> object: ...


class Loop:
    """Runs ``run_pass`` whenever it is due, until :meth:`stop`."""

    def __init__(
        self,
        run_pass: Callable[[], Awaitable[None]],
        *,
        clock: Callable[[], float],
        notifier: Notifier,
        wake_at: Callable[[], float | None],
        status_line: Callable[[], str],
        watchdog_every: float | None = None,
    ) -> None:
        self._run_pass = run_pass
        self._clock = clock
        self._notifier = notifier
        self._wake_at = wake_at
        self._status_line = status_line
        self._watchdog_every = watchdog_every
        self._wake = asyncio.Event()
        self._file_changes = FileChanges(COALESCE_SECONDS, COALESCE_MAX_SECONDS)
        self.stopping = False
        self._reloading = False
        self._on_reload: list[Callable[[], None]] = []

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self.stopping = True
        self.wake()

    def reload(self) -> None:
        """SIGHUP: a pass now, inside RELOADING=1 ... READY=1."""
        self._reloading = True
        for listener in self._on_reload:
            listener()
        self.wake()

    def on_reload(self, listener: Callable[[], None]) -> None:
        self._on_reload.append(listener)

    def file_event(self, path: str, complete: bool, source: str | None = None) -> None:
        """A rename into place, a deletion or a closed write is complete: when no other file
        changed meanwhile, the pass runs at once. A write in progress or the next file of a
        burst starts or extends the quiet window (:meth:`_coalesce`)."""
        self._file_changes.note(path, complete=complete, now=self._clock(), source=source)
        self.wake()

    async def first(self) -> None:
        """The first pass, then READY=1 (the API socket already listens)."""
        await self._run_pass()
        self._notifier.notify("READY=1\nSTATUS=" + self._status_line())

    async def run(self) -> None:
        """Passes until :meth:`stop`."""
        while not self.stopping:
            timeout = RESYNC_SECONDS
            wake_at = self._wake_at()
            if wake_at is not None:
                timeout = min(timeout, max(0.0, wake_at - self._clock()) + TIMER_SLACK)
            if self._watchdog_every is not None:
                timeout = min(timeout, self._watchdog_every)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            self._notifier.notify("WATCHDOG=1")  # the loop turns, even if this pass is long
            await self._coalesce()
            if self.stopping:
                break
            reloading = self._reloading
            if reloading:
                self._notifier.notify("RELOADING=1")
            await self._run_pass()
            if reloading:
                self._reloading = False
                self._notifier.notify("READY=1")
            self._notifier.notify("WATCHDOG=1\nSTATUS=" + self._status_line())

    async def _coalesce(self) -> None:
        """Wait until the pending file change is due (:class:`FileChanges`): at once for one
        file whose write is complete; in a burst of several files (Ansible writing 30) or
        while a file is being written, until the directory is quiet, at most
        :data:`COALESCE_MAX_SECONDS`. Each event ends the wait early, to ask again."""
        while not self.stopping:
            delay = self._file_changes.due(self._clock())
            if not delay:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        self._file_changes.taken()

    @contextlib.asynccontextmanager
    async def watchdog_kept(self) -> AsyncIterator[None]:
        """While the agent stops, its loop no longer turns, yet the watchdog still applies
        (systemd kills a stopping service whose pings stop): a container's stop that waits its
        stop_timeout must not turn a clean shutdown into SIGABRT. Bounded by what it wraps."""
        every = self._watchdog_every
        if every is None:
            yield
            return

        async def ping() -> None:
            while True:
                self._notifier.notify("WATCHDOG=1")
                await asyncio.sleep(every)

        pinger = asyncio.create_task(ping())
        try:
            yield
        finally:
            pinger.cancel()


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), when it is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
