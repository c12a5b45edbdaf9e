"""The agent as its API sees it: :class:`AgentControl` implements
:class:`~quayd.agent.control.Control` over the agent's rooms, reading each piece of state
through its owner and sending commands to the owner that carries them out.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from quayd import __version__
from quayd.agent import image_pulls
from quayd.agent.adhoc_runs import AdHoc, AdHocRuns
from quayd.agent.api import RequestError
from quayd.agent.control import AgentInfo, ExecResult, Preview, RunRequest, UnitView
from quayd.agent.dispatch import Dispatcher
from quayd.agent.events import EventLog
from quayd.agent.holds import Holds
from quayd.agent.live import Live
from quayd.agent.logs import logger
from quayd.agent.passes import Passes
from quayd.agent.restart_requests import RestartRequests
from quayd.agent.supervision import Supervisor
from quayd.agent.unit_pulls import UnitPulls
from quayd.agent.update_actions import UpdateRunner
from quayd.agent.work import Work
from quayd.isolation.cgroups import Usage, usage
from quayd.net.ipam import Leases
from quayd.net.network import Network
from quayd.reconcile.executor import Executor
from quayd.reconcile.model import Action, Exit, UnitStatus
from quayd.reconcile.records import unit_hash
from quayd.units.directory import load_directory
from quayd.units.model import Unit

RESTART_WAIT = 30.0
"""How long an operator's restart waits for the unit's action in flight to finish."""

log = logger("quayd")


class AgentControl:
    """The queries and commands of :class:`~quayd.agent.control.Control`."""

    def __init__(
        self,
        *,
        config_dir: Path,
        started_at: float,
        events: EventLog,
        passes: Passes,
        supervisor: Supervisor,
        dispatcher: Dispatcher,
        runs: AdHocRuns,
        pulls: UnitPulls,
        holds: Holds,
        restarts: RestartRequests,
        network: Network,
        executor: Executor,
        work: Work,
        update_runner: UpdateRunner,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self.events = events
        self._config_dir = config_dir
        self._started_at = started_at
        self._passes = passes
        self._supervisor = supervisor
        self._dispatcher = dispatcher
        self._runs = runs
        self._pulls = pulls
        self._holds = holds
        self._restarts = restarts
        self._network = network
        self._executor = executor
        self._work = work
        self._update_runner = update_runner
        self._clock = clock
        self._wake = wake

    # --- queries -------------------------------------------------------------------

    def info(self) -> AgentInfo:
        return AgentInfo(pid=os.getpid(), version=__version__, started_at=self._started_at,
                         config_dir=str(self._config_dir), passes=self._passes.count,
                         last_pass_at=self._passes.last_at)  # fmt: skip

    def units(self) -> list[UnitView]:
        leases = self._network.lease_file.load()
        statuses = sorted(self._passes.plan.statuses.items())
        return [self._view(status, leases) for _, status in statuses]

    def unit(self, name: str) -> UnitView | None:
        statuses = self._passes.plan.statuses
        known = name in statuses or name in self._passes.desired.units or name in self._supervisor
        if not known:
            return None
        status = statuses.get(name) or UnitStatus(name, "waiting")
        return self._view(status, self._network.lease_file.load())

    def planned(self) -> tuple[tuple[Action, ...], float | None]:
        return self._passes.plan.actions, self._passes.plan.wake_at

    def starts(self) -> Mapping[str, tuple[str, int]]:
        return self._supervisor.starts()

    def exits(self) -> Mapping[str, tuple[Exit, ...]]:
        return self._supervisor.all_exits()

    async def usage(self, name: str) -> Usage | None:
        return await asyncio.to_thread(usage, name)

    async def preview(self, config_dir: Path) -> Preview:
        snapshot = await asyncio.to_thread(load_directory, config_dir)
        findings = tuple(str(finding) for finding in snapshot.findings)
        return Preview(plan=self._passes.preview(snapshot), findings=findings)

    def _view(self, status: UnitStatus, leases: Leases) -> UnitView:
        name = status.name
        live = self._supervisor.get(name)
        desired = self._passes.desired.units.get(name)
        detail = status.detail
        error = self._dispatcher.error(name)
        if error and status.state in ("backoff", "waiting"):
            detail = f"{detail}; last error: {error}" if detail else error
        unit = desired.unit if desired is not None else (live.record.unit if live else None)
        view = UnitView(
            name=name, state=status.state, ready=status.ready, detail=detail,
            next_attempt=status.next_attempt, findings=status.findings,
            held=name in self._holds, restarts=self._supervisor.restarts(name), unit=unit,
            image=str(desired.unit.container.image) if desired else None,
            ip=_address(name, unit, leases), exits=self._supervisor.exits(name),
            running=live is not None,
        )  # fmt: skip
        if live is None:
            return view
        return _with_container(view, live)

    # --- commands ------------------------------------------------------------------

    async def hold(self, name: str, *, held: bool, message: str) -> None:
        await self._holds.set(name, held=held, message=message)

    async def next_pass(self) -> int:
        return await self._passes.next_pass()

    async def restart(self, name: str) -> None:
        """Stop and start again now: no backoff, the hold (if any) lifted."""
        await self.hold(name, held=False, message="restarted by an operator")
        deadline = self._clock() + RESTART_WAIT
        while self._dispatcher.busy_with(name) and self._clock() < deadline:
            await self.next_pass()  # let the action in flight (a start, a stop) finish first
        busy = self._dispatcher.busy_with(name)
        if busy:
            raise RequestError("conflict", f"{name} is {busy}; try again in a moment")
        live = self._supervisor.get(name)
        if (
            live is not None
        ):  # persisted first: an agent crash does not lose it (the planner stops it)
            await self._restarts.request(name, live.record.started_at)
        else:
            self._supervisor.restart_now(name)
        await self.next_pass()

    async def exec(self, name: str, argv: list[str], timeout: float) -> ExecResult:
        if name not in self._supervisor:
            raise RequestError("conflict", f"{name} has no running container")
        try:
            done = await self._work.run(self._executor.runtime.exec, name, argv, timeout=timeout)
        except Exception as error:
            raise RequestError("failed", str(error)) from error
        return ExecResult(code=done.returncode, stdout=done.stdout.decode(errors="replace"),
                          stderr=done.stderr.decode(errors="replace"))  # fmt: skip

    async def signal(self, name: str, signal_name: str) -> None:
        if name not in self._supervisor:
            raise RequestError("conflict", f"{name} is not running")
        try:
            await self._work.run(self._executor.signal, name, signal_name)
        except Exception as error:
            raise RequestError("failed", f"cannot signal {name}: {error}") from error

    async def run_adhoc(self, request: RunRequest) -> tuple[str, int | None]:
        """An ad-hoc unit: in memory only, restart policy "no", through the normal passes.
        Returns once its container started (or the unit failed to)."""
        taken = self._names()
        name = request.name or self._runs.new_name(taken)
        if name in taken or (self._config_dir / f"{name}.toml").exists():
            raise RequestError("conflict", f"a unit {name!r} exists already")
        self._check_ports(name, request.unit)
        adhoc = AdHoc(
            unit=request.unit,
            hash=unit_hash(request.unit, None),
            tty=request.tty,
            rm=request.rm,
            console_size=request.console_size,
            interactive=request.interactive and not request.tty,
            attach=request.attach,
        )
        self._runs.add(name, adhoc)
        await self.next_pass()
        await self._runs.wait_started(
            name,
            adhoc,
            running=lambda unit: unit in self._supervisor,
            failure=lambda unit: self._dispatcher.error(unit) or self._pulls.error(unit),
            busy=lambda unit: self._dispatcher.busy_with(unit) is not None,
        )
        live = self._supervisor.get(name)
        return name, live.pid if live is not None else None

    def _names(self) -> set[str]:
        """Every name a new ad-hoc unit may not take."""
        desired = self._passes.desired
        return (
            set(self._passes.plan.statuses)
            | set(desired.units)
            | set(desired.invalid)
            | set(self._supervisor)
            | set(self._runs)
            | set(self._dispatcher.busy())
        )

    def _check_ports(self, name: str, unit: Unit) -> None:
        mine = [mapping for spec in unit.network.ports for mapping in spec.mappings]
        for other, desired in self._passes.desired.units.items():
            for spec in desired.unit.network.ports:
                for mapping in spec.mappings:
                    if other != name and any(m.conflicts_with(mapping) for m in mine):
                        raise RequestError(
                            "conflict", f"port {spec} is published by {other} already"
                        )

    async def remove(self, name: str) -> None:
        if name not in self._runs:
            raise RequestError(
                "conflict", f"{name} comes from a unit file: delete the file to remove it"
            )
        self._runs.drop(name)
        await self.next_pass()

    async def pull_image(self, params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request = image_pulls.parse_request(params, self._executor.state_dir)
        log.info("pulling for an operator", image=request.reference)

        def pulled() -> None:
            log.info("image pulled", image=request.reference, requested_by="api")
            self._wake()  # a unit waiting for this image starts now

        return image_pulls.pull_stream(request, self._executor, self._work.run, pulled)

    async def update(self, params: Mapping[str, Any]) -> Any:
        return await self._update_runner.update_now(params)


def _with_container(view: UnitView, live: Live) -> UnitView:
    """``view`` with what its running container says."""
    return replace(
        view,
        pid=live.pid,
        started_at=live.record.started_at,
        ready_at=live.ready_at,
        digest=live.record.image_digest,
        status_text=live.status_text,
        health=live.health_word(),
        health_failures=live.health.failures,
        health_history=tuple(live.health_history),
    )


def _address(name: str, unit: Unit | None, leases: Leases) -> str | None:
    if unit is None or unit.network.mode != "bridge":
        return None
    lease = leases.get(name)
    return str(lease.ipv4) if lease is not None else None
