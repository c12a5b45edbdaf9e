"""Ad-hoc units (``quayctl run``): in memory only, desired like the files' units, with their
terminals and relays. :mod:`quayd.agent.attach` serves their clients; :mod:`quayd.agent.adhoc`
turns a request into a unit (pure).

:class:`AdHocRuns` is the only writer of the ad-hoc units and of their consoles and relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from quayd.agent import adhoc as adhoc_request
from quayd.agent.api import RequestError
from quayd.agent.holds import Holds
from quayd.agent.live import Launch
from quayd.agent.logs import logger
from quayd.agent.relay import Relay
from quayd.agent.status_json import exit_json
from quayd.reconcile.executor import Launched
from quayd.reconcile.model import DesiredUnit, Exit
from quayd.units.model import Unit

log = logger("quayd")

ATTACH_GRACE = 10.0
"""Seconds an ended ad-hoc unit with ``rm`` and a terminal waits for its client to attach (it
gets the output still in the terminal and the exit status) before it is removed."""
RUN_NAME_PREFIX = "run-"
START_POLL = 0.05


@dataclass
class AdHoc:
    """A unit ``quayctl run`` asked for: in memory only, never in the config directory."""

    unit: Unit
    hash: str
    tty: bool
    rm: bool
    console_size: tuple[int, int] | None = None
    console: int | None = None
    """The master of the container's terminal, until it was attached and the container ended
    (or the unit is removed)."""
    exit: Exit | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    attached: bool = False
    interactive: bool = False
    """Without a terminal: its stdin is a pipe fed by its clients (``quayctl run -i``)."""
    attach: bool = True
    """Without a terminal: a client attaches at once (``quayctl run`` without -d), so its
    output is kept for it and an ``rm`` waits for it as for a terminal's client."""
    relay: Relay | None = None
    """Without a terminal: the relay of its stdout and stderr (to the log and its clients)."""

    def launch(self) -> Launch:
        return Launch(terminal=self.tty, console_size=self.console_size, pipes=True,
                      stdin=self.interactive)  # fmt: skip

    def close_console(self) -> None:
        if self.console is not None:
            with contextlib.suppress(OSError):
                os.close(self.console)
            self.console = None


class AdHocRuns:
    """The ad-hoc units, by name."""

    def __init__(self, holds: Holds, wake: Callable[[], None]) -> None:
        self._holds = holds
        self._wake = wake
        self._units: dict[str, AdHoc] = {}
        self._running: dict[str, AdHoc] = {}
        """The ad-hoc unit each running container was started for."""

    def __contains__(self, name: object) -> bool:
        return name in self._units

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._units))

    def get(self, name: str) -> AdHoc | None:
        return self._units.get(name)

    def desired(self) -> dict[str, DesiredUnit]:
        return {
            name: DesiredUnit(name=name, unit=adhoc.unit, hash=adhoc.hash)
            for name, adhoc in self._units.items()
        }

    def new_name(self, taken: Collection[str]) -> str:
        while (name := RUN_NAME_PREFIX + secrets.token_hex(3)) in taken:
            pass
        return name

    def add(self, name: str, adhoc: AdHoc) -> None:
        self._units[name] = adhoc
        log.info("ad-hoc unit", unit=name, image=str(adhoc.unit.container.image),
                 tty=adhoc.tty, rm=adhoc.rm)  # fmt: skip

    async def wait_started(
        self,
        name: str,
        adhoc: AdHoc,
        *,
        running: Callable[[str], bool],
        failure: Callable[[str], str | None],
        busy: Callable[[str], bool],
    ) -> None:
        """Until its container runs (or ran and ended); a start that failed drops it and is
        the request's error (Docker's 126 and 127 codes for a command that cannot run)."""
        image = adhoc.unit.container.image
        while not running(name) and adhoc.exit is None:
            if self._units.get(name) is not adhoc:
                raise RequestError("conflict", f"{name} was removed before it started")
            failed = failure(name)
            if failed and not busy(name):
                self.drop(name)
                code = adhoc_request.start_failure_code(failed) or "failed"
                raise RequestError(code, f"cannot run {image}: {failed}")
            await asyncio.sleep(START_POLL)

    def launched(self, name: str, adhoc: AdHoc | None, launched: Launched) -> None:
        """A container started: an ad-hoc unit (still the same one) takes its terminal and
        relay; anything else's are closed."""
        current = adhoc is not None and self._units.get(name) is adhoc
        if launched.console is not None:
            if adhoc is not None and current:
                adhoc.close_console()
                adhoc.console = launched.console
            else:
                os.close(launched.console)
        if launched.pipes is not None:
            if adhoc is not None and current:
                adhoc.relay = Relay(name, launched.pipes, hold=adhoc.attach)
                adhoc.relay.start()
            else:
                launched.pipes.close()
        if adhoc is not None:
            self._running[name] = adhoc

    def ended(self, name: str, exit_: Exit) -> None:
        """A container ended (the supervisor's listener): its ad-hoc unit's clients get the
        status; with ``rm`` the unit goes once its client had it."""
        adhoc = self._running.pop(name, None)
        if adhoc is None:
            return
        adhoc.exit = exit_
        adhoc.ended.set()
        if adhoc.relay is not None:
            adhoc.relay.finish(exit_json(exit_))
        if adhoc.attached:
            adhoc.close_console()
        if not adhoc.rm or self._units.get(name) is not adhoc:
            return
        awaited = adhoc.relay.awaited if adhoc.relay is not None else adhoc.console is not None
        if adhoc.attached or not awaited:
            self.drop(name)
        else:  # its client has not attached yet: let it get the output and the status
            asyncio.get_running_loop().call_later(ATTACH_GRACE, self.drop, name, adhoc)

    def drop(self, name: str, only: AdHoc | None = None) -> None:
        """Forget an ad-hoc unit: the next pass stops its container and releases its network."""
        adhoc = self._units.get(name)
        if adhoc is None or (only is not None and adhoc is not only):
            return
        del self._units[name]
        adhoc.close_console()
        self._holds.forget(name)
        log.info("ad-hoc unit removed", unit=name)
        self._wake()

    def close(self) -> None:
        """The agent stops: consoles and relays closed (their containers are not adopted)."""
        for adhoc in self._units.values():
            adhoc.close_console()
            if adhoc.relay is not None:
                adhoc.relay.close()
