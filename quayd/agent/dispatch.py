"""The planner's actions carried out: one task per action, at most one per unit at a time.

:class:`Dispatcher` is the only writer of which units are busy (an action in flight: the
planner gives a busy unit no new action) and of the last error of each unit's action (shown in
status; the planner decides what comes next, by its backoff).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from quayd.agent.adhoc_runs import AdHocRuns
from quayd.agent.events import EventLog
from quayd.agent.logs import logger
from quayd.agent.peers import PeerSync
from quayd.agent.supervision import Supervisor
from quayd.agent.unit_pulls import UnitPulls
from quayd.agent.update_actions import UpdateRunner
from quayd.agent.work import Work
from quayd.reconcile.executor import Executor
from quayd.reconcile.model import (
    Action,
    Busy,
    Confirm,
    Desired,
    Fetch,
    Pull,
    Remove,
    Rollback,
    Start,
    Stop,
    Update,
)
from quayd.units.model import Unit

log = logger("quayd")

BUSY: Mapping[type, Busy] = {
    Pull: "pulling",
    Start: "starting",
    Stop: "stopping",
    Remove: "removing",
    Update: "stopping",
    Rollback: "stopping",
}
"""What a unit is while each kind of action runs (Fetch and Confirm leave it not busy)."""


class Dispatcher:
    """Starts a task per action and keeps each unit's busy state and last action error."""

    def __init__(
        self,
        *,
        supervisor: Supervisor,
        pulls: UnitPulls,
        runs: AdHocRuns,
        peers: PeerSync,
        updates: UpdateRunner,
        executor: Executor,
        work: Work,
        events: EventLog,
        wake: Callable[[], None],
        desired: Callable[[], Desired],
    ) -> None:
        self._supervisor = supervisor
        self._pulls = pulls
        self._runs = runs
        self._peers = peers
        self._updates = updates
        self._executor = executor
        self._work = work
        self._events = events
        self._wake = wake
        self._desired = desired
        self._busy: dict[str, Busy] = {}
        self._errors: dict[str, str] = {}

    def busy(self) -> dict[str, Busy]:
        return dict(self._busy)

    def busy_with(self, name: str) -> Busy | None:
        return self._busy.get(name)

    def error(self, name: str) -> str | None:
        """The last action's error, until a start succeeds."""
        return self._errors.get(name)

    def all_units(self) -> dict[str, Unit]:
        return {name: entry.unit for name, entry in self._desired().units.items()}

    def dispatch(self, action: Action) -> None:
        if isinstance(action, Fetch | Confirm):
            self._work.spawn(self._updates.perform(action))  # in the background, or at once
            return
        if isinstance(action, Start):
            self._events.emit(action.unit, "starting", action.reason)
        elif isinstance(action, Stop):
            self._events.emit(action.unit, "stopping", action.reason)
        self.while_busy(action.unit, BUSY[type(action)], self._perform(action))

    def while_busy(self, name: str, busy: Busy, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` with the unit busy until it ends (the loop is woken then)."""
        self._busy[name] = busy

        async def run() -> None:
            try:
                await work
            finally:
                self._busy.pop(name, None)
                self._wake()

        self._work.spawn(run())

    async def _perform(self, action: Action) -> None:
        name = action.unit
        try:
            if isinstance(action, Pull):
                await self._pull(name, action.digest)
            elif isinstance(action, Start):
                await self._start(name, action.hash, action.digest)
            elif isinstance(action, Stop):
                await self._supervisor.stop(name, action.why)
            elif isinstance(action, Update | Rollback):
                await self._updates.perform(action)
            else:
                await self._remove(name)
        except Exception as error:  # reported in status; the planner decides what next
            self._errors[name] = str(error)
            log.error("action failed", unit=name, action=type(action).__name__, error=str(error))

    async def _pull(self, name: str, digest: str | None) -> None:
        entry = self._desired().units[name]
        if digest is None:
            await self._pulls.pull(name, entry)
            return
        # the digest an update wants (its target, or the one rolled back to)
        await self._pulls.pull(
            name,
            entry,
            by_digest=self._updates.pull_reference(name, digest),
            failed=lambda error: self._updates.pulled(name, digest, error),
        )

    async def _start(self, name: str, wanted_hash: str, digest: str | None) -> None:
        unit = self._desired().units[name].unit
        adhoc = self._runs.get(name)
        launched = await self._supervisor.start(
            name,
            unit,
            wanted_hash,
            self.all_units(),
            digest=digest,
            launch=adhoc.launch() if adhoc is not None else None,
        )
        self._errors.pop(name, None)
        self._peers.changed()  # its name and address (or its leaving the bridge) for the others
        self._runs.launched(name, adhoc, launched)

    async def _remove(self, name: str) -> None:
        await self._work.run(self._executor.release, name, self.all_units())
        self._peers.changed()
        self._supervisor.forget(name)
        self._pulls.forget(name)
        log.info("removed", unit=name)
        self._events.emit(name, "removed", "removed: network released, volumes kept")
