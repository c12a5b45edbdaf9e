"""One pass: load the config directory, build desired and observed, ask the pure planner,
start its actions. Level-triggered: every pass recomputes from the files and the live system,
whatever woke it.

:class:`Passes` owns the last desired state and plan (what status reads), the pass count and
the callers waiting for a pass, and the units' last states (for the events of states no action
reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from quayd.agent.adhoc_runs import AdHocRuns
from quayd.agent.desired import DesiredState
from quayd.agent.dispatch import Dispatcher
from quayd.agent.events import EventLog
from quayd.agent.holds import Holds
from quayd.agent.logs import logger
from quayd.agent.loop import RESYNC_SECONDS
from quayd.agent.restart_requests import RestartRequests
from quayd.agent.supervision import Supervisor
from quayd.agent.unit_pulls import UnitPulls
from quayd.agent.update_actions import UpdateRunner
from quayd.agent.work import Work
from quayd.isolation.runtime import journald_running, trim_log_file
from quayd.net.network import Network
from quayd.reconcile.executor import Executor
from quayd.reconcile.model import Container, Desired, Observed, Plan
from quayd.reconcile.plan import plan
from quayd.units.directory import ConfigSnapshot, LoadCache, load_directory
from quayd.units.findings import QuayConfigError
from quayd.units.model import Unit

log = logger("quayd")

LOG_FILE_MAX = 16 * 1024 * 1024
"""Cap of a container's log file when there is no journald (trimmed to about half)."""
HANG_HOOK_ENV = "QUAYD_TEST_HANG_FILE"
"""Test-only: when this file exists at the start of a pass, it is removed and the loop blocks
(the watchdog test). Unset in production: nothing looks at any file then."""


class Passes:
    """Runs passes (:meth:`run`, the loop's ``run_pass``) and keeps what the last one found."""

    def __init__(
        self,
        *,
        config_dir: Path,
        state_dir: Path,
        cache: LoadCache,
        desired_state: DesiredState,
        supervisor: Supervisor,
        pulls: UnitPulls,
        dispatcher: Dispatcher,
        runs: AdHocRuns,
        holds: Holds,
        restarts: RestartRequests,
        updates: UpdateRunner,
        executor: Executor,
        network: Network,
        work: Work,
        events: EventLog,
        clock: Callable[[], float],
        wake: Callable[[], None],
        published: Callable[[float], None] | None = None,
    ) -> None:
        self._config_dir = config_dir
        self._state_dir = state_dir
        self._cache = cache
        self._desired_state = desired_state
        self._supervisor = supervisor
        self._pulls = pulls
        self._dispatcher = dispatcher
        self._runs = runs
        self._holds = holds
        self._restarts = restarts
        self._updates = updates
        self._executor = executor
        self._network = network
        self._work = work
        self._events = events
        self._clock = clock
        self._wake = wake
        self._published = published
        """Told each pass's duration once it planned (the metrics)."""
        self.desired = Desired(units={})
        self.plan = Plan(actions=(), statuses={})
        self.count = 0
        self.last_at: float | None = None
        self._states: dict[str, str] = {}
        self._waiters: list[asyncio.Future[int]] = []
        self._synced_at = 0.0

    def all_units(self) -> dict[str, Unit]:
        return {name: entry.unit for name, entry in self.desired.units.items()}

    def resync_soon(self) -> None:
        """The next pass also verifies the network (ruleset, etc files): a reload asks it."""
        self._synced_at = 0.0

    async def next_pass(self) -> int:
        """Wake the loop and wait until a pass has planned with what the caller changed."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake()
        return await waiter

    async def run(self) -> None:
        hang = os.environ.get(HANG_HOOK_ENV)
        if hang and Path(hang).exists():
            Path(hang).unlink()  # one hang per touch: the restarted agent must come up
            log.warning("test hook: hanging the loop", file=hang)
            time.sleep(3600)  # blocks the loop on purpose: the watchdog must catch it
        began = time.monotonic()
        try:
            snapshot = await asyncio.to_thread(load_directory, self._config_dir, self._cache)
        except QuayConfigError as error:
            log.error("config directory unreadable", error=str(error))
            return
        self.desired = self._build(snapshot)
        await self._resync_extras()
        containers = self._supervisor.containers()  # once a pass: the requests and the planner
        await self._restarts.settle(containers)
        now = self._clock()
        self.plan = plan(self.desired, self.observed(self.desired, containers), now)
        self.count += 1
        self.last_at = now
        self._emit_transitions()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(self.count)
        for action in self.plan.actions:
            log.info(
                "action", kind=type(action).__name__.lower(), unit=action.unit, reason=action.reason
            )
            self._dispatcher.dispatch(action)
        self._updates.start_checks()
        if self._published is not None:
            self._published(time.monotonic() - began)

    def _build(self, snapshot: ConfigSnapshot) -> Desired:
        return self._desired_state.build(
            snapshot,
            running=self._supervisor.records(),
            adhoc=self._runs.desired(),
            held=self._holds.among,
            displace=self._runs.drop,
        )

    def preview(self, snapshot: ConfigSnapshot) -> Plan:
        """The plan for ``snapshot`` (a staging directory's), changing nothing."""
        desired = self._desired_state.preview(
            snapshot,
            running=self._supervisor.records(),
            present=self._executor.present_images(),
            held=self._holds.among,
        )
        return plan(desired, self.observed(desired), self._clock())

    def observed(
        self, desired: Desired, containers: Mapping[str, Container] | None = None
    ) -> Observed:
        return Observed(
            containers=self._supervisor.containers() if containers is None else containers,
            images=self._pulls.observed(desired.units, self._executor.present_images()),
            history=self._supervisor.history(),
            busy=self._dispatcher.busy(),
            leftovers=frozenset(self._leftovers()),
            updates=self._updates.observe(desired),
            restarts=self._restarts.pending(),
        )

    def _leftovers(self) -> set[str]:
        known = set(self.desired.units) | set(self.desired.invalid) | set(self._supervisor)
        found: set[str] = set()
        containers = self._state_dir / "containers"
        if containers.is_dir():
            found |= {path.name for path in containers.iterdir()}
        found |= {lease.unit for lease in self._network.lease_file.load()}
        return found - known

    def _emit_transitions(self) -> None:
        """Events for states a pass enters that no action reports: backoff, stopped."""
        for name, status in self.plan.statuses.items():
            before = self._states.get(name)
            self._states[name] = status.state
            if status.state == before:
                continue
            if status.state == "backoff":
                self._events.emit(
                    name, "restarting", status.detail, next_attempt=status.next_attempt
                )
            elif status.state == "stopped":
                self._events.emit(name, "stopped", status.detail)
        for name in set(self._states) - set(self.plan.statuses):
            del self._states[name]

    async def _resync_extras(self) -> None:
        """Every RESYNC_SECONDS: repair network drift, cap log files (without journald)."""
        now = self._clock()
        if now - self._synced_at < RESYNC_SECONDS:
            return
        self._synced_at = now
        await self._work.run(self._executor.sync_network, self.all_units())
        if journald_running():
            return
        paths = [self._executor.log_file(name) for name in self._supervisor]
        await self._work.run(_trim_all, paths)

    def status_line(self) -> str:
        """systemd's STATUS=: counts by state."""
        counts = {"running": 0, "starting": 0, "failed": 0, "invalid": 0}
        for status in self.plan.statuses.values():
            if status.state == "running":
                counts["running"] += 1
            elif status.state in ("starting", "pulling", "waiting"):
                counts["starting"] += 1
            elif status.state == "backoff":
                counts["failed"] += 1
            if status.findings or status.state == "invalid":
                counts["invalid"] += 1
        return ", ".join(f"{count} {label}" for label, count in counts.items())


def _trim_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            trim_log_file(path, LOG_FILE_MAX)
