"""Supervision of each unit's live container: its start, its stop, its exit, and the
bookkeeping the planner's restart policy reads (history, recent exits, start counts).

The :class:`Supervisor` is the only writer of the live containers (except their probe fields,
:mod:`quayd.agent.probes`), of the exit history and of the start counts. It decides nothing:
the planner says when to start, stop or restart; the supervisor carries it out and records
what happened, and wakes the loop.
"""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import replace
from typing import Any, Protocol

from quayd.agent.events import EventLog
from quayd.agent.live import Launch, Live
from quayd.agent.logs import logger
from quayd.agent.probes import Probes
from quayd.agent.work import Work
from quayd.isolation.container import KILL_TIMEOUT, OomEvents, StopResult
from quayd.isolation.notify import NotifySocket
from quayd.isolation.runtime import Exit as RuntimeExit
from quayd.reconcile.executor import Executor, ExecutorError, Launched
from quayd.reconcile.model import Container, Exit, History
from quayd.reconcile.plan import describe_exit, record_exit
from quayd.reconcile.records import ContainerRecord
from quayd.units.model import Unit

log = logger("quayd")

EXITS_KEPT = 10
"""Exits kept per unit for ``quayctl show`` (and the OOM counter)."""


class ExitSource(Protocol):
    """The exits of the containers' inits (:class:`quayd.isolation.runtime.ExitWatcher`)."""

    def watch(self, pid: int) -> None: ...

    def collect(self, timeout: float) -> list[RuntimeExit]: ...

    def send_signal(self, pid: int, sig: int) -> bool: ...


class Supervisor:
    """Each unit's live container, its exits and starts."""

    def __init__(
        self,
        *,
        executor: Executor,
        watcher: ExitSource,
        probes: Probes,
        work: Work,
        events: EventLog,
        clock: Callable[[], float],
        wake: Callable[[], None],
        ended_by_itself: Callable[[str, Coroutine[Any, Any, None]], None],
    ) -> None:
        self._executor = executor
        self._watcher = watcher
        self._probes = probes
        self._work = work
        self._events = events
        self._clock = clock
        self._wake = wake
        self._ended_by_itself = ended_by_itself
        """Runs the handling of an exit nobody asked for, with the unit busy meanwhile."""
        self._live: dict[str, Live] = {}
        self._by_pid: dict[int, str] = {}
        self._history: dict[str, History] = {}
        self._exits: dict[str, deque[Exit]] = {}
        self._starts: dict[str, tuple[str, int]] = {}
        """Per unit: the hash it runs and how often a container of that hash was started."""
        self._exit_listeners: list[Callable[[str, Exit], None]] = []

    # --- what others read -------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._live

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._live))

    def __len__(self) -> int:
        return len(self._live)

    def get(self, name: str) -> Live | None:
        return self._live.get(name)

    def containers(self) -> dict[str, Container]:
        return {name: live.observed() for name, live in self._live.items()}

    def records(self) -> dict[str, ContainerRecord]:
        return {name: live.record for name, live in self._live.items()}

    def history(self) -> dict[str, History]:
        return dict(self._history)

    def exits(self, name: str) -> tuple[Exit, ...]:
        return tuple(self._exits.get(name, ()))

    def all_exits(self) -> Mapping[str, tuple[Exit, ...]]:
        return {name: tuple(ended) for name, ended in self._exits.items()}

    def starts(self) -> Mapping[str, tuple[str, int]]:
        return dict(self._starts)

    def restarts(self, name: str) -> int:
        return max(0, self._starts.get(name, ("", 1))[1] - 1)

    def on_exit(self, listener: Callable[[str, Exit], None]) -> None:
        """Call ``listener(name, exit)`` after each container's exit is recorded."""
        self._exit_listeners.append(listener)

    # --- start ------------------------------------------------------------------------------

    async def start(
        self,
        name: str,
        unit: Unit,
        wanted_hash: str,
        all_units: Mapping[str, Unit],
        *,
        digest: str | None = None,
        launch: Launch | None = None,
    ) -> Launched:
        """Start the unit's container and track it; a failure is recorded as an exit that was
        never ready (the restart policy counts it) and raised as :class:`ExecutorError`."""
        launch = launch or Launch()
        notify = None
        if unit.ready.mode == "notify":
            notify = NotifySocket(self._executor.notify_dir(name))
        started_at = self._clock()
        try:
            launched = await self._work.run(
                self._executor.start,
                name,
                unit,
                wanted_hash,
                all_units,
                terminal=launch.terminal,
                console_size=launch.console_size,
                pipes=launch.pipes,
                stdin=launch.stdin,
                digest=digest,
            )
        except Exception as error:
            if notify is not None:
                notify.close()
            never_ready = Exit(at=self._clock(), hash=wanted_hash, started_at=started_at,
                               ready=False, stopped_for="failure")  # fmt: skip
            self._history[name] = record_exit(self._history.get(name), never_ready, unit)
            raise ExecutorError(f"cannot start: {error}") from error
        previous_hash, count = self._starts.get(name, ("", 0))
        self._starts[name] = (wanted_hash, count + 1 if previous_hash == wanted_hash else 1)
        self._track(
            Live(
                name=name,
                pid=launched.pid,
                record=launched.record,
                oom_events=launched.oom_events,
                ready_at=launched.record.ready_at,
                notify=notify,
            )
        )
        log.info("started", unit=name, pid=launched.pid, hash=wanted_hash)
        self._events.emit(name, "started", f"started, pid {launched.pid}", pid=launched.pid)
        return launched

    def adopt(
        self, name: str, record: ContainerRecord, pid: int, oom_events: OomEvents | None
    ) -> None:
        """A container a previous agent left running: same PID, its exit watched again."""
        ready_at = record.ready_at
        if ready_at is None and record.unit.ready.mode == "started":
            ready_at = record.started_at  # ready once running; the record may lag
        self._starts[name] = (record.hash, 1)
        self._track(
            Live(
                name=name,
                pid=pid,
                record=record,
                oom_events=oom_events,
                ready_at=ready_at,
                adopted_at=self._clock(),
            )
        )
        log.info("adopted", unit=name, pid=pid)

    def found_ended(self, name: str, record: ContainerRecord, result: StopResult) -> None:
        """A container that ended while no agent watched: its exit, as well as it is known."""
        ended = Exit(
            at=self._clock(),
            hash=record.hash,
            started_at=record.started_at,
            code=result.code,
            signal=result.signal,
            oom=result.oom,
            ready=record.ready_at is not None,
            digest=record.image_digest,
        )
        self._history[name] = record_exit(None, ended, record.unit)

    def _track(self, live: Live) -> None:
        self._live[live.name] = live
        self._by_pid[live.pid] = live.name
        self._watcher.watch(live.pid)
        self._probes.arm(live)

    # --- stop and exit ----------------------------------------------------------------------

    async def stop(self, name: str, why: Any) -> None:
        """Its stop signal, then SIGKILL after its stop_timeout; the exit is recorded with
        ``why`` (the planner's reason: "replace", "shutdown", ...)."""
        live = self._live.get(name)
        if live is None:
            return
        unit = live.record.unit
        live.exited = asyncio.get_running_loop().create_future()
        signal_name = await self._work.run(self._executor.stop_signal, unit)
        timeout = unit.container.stop_timeout.total_seconds()
        killed = False
        await self._work.run(self._executor.signal, name, signal_name)
        ended = await _wait(live.exited, timeout)
        if ended is None:
            killed = True
            await self._work.run(self._executor.signal, name, "SIGKILL")
            ended = await _wait(live.exited, KILL_TIMEOUT)
        if ended is None and self._watcher.send_signal(live.pid, signal.SIGKILL):
            # The runtime's kill did not end the init (seen under load: the old process of a
            # restarted unit outlived its container): end it through our own pidfd, so a
            # replacement never runs beside it.
            log.warning("the runtime's SIGKILL did not end the init; killed it by pidfd",
                        unit=name, pid=live.pid)  # fmt: skip
            ended = await _wait(live.exited, KILL_TIMEOUT)
        await self._ended(live, ended, killed=killed, stopped_for=why)

    def on_exits(self) -> None:
        """The exit watcher's descriptor is readable: each exit goes to the stop waiting for
        it, or is handled as the container's own end (the unit busy until it is recorded)."""
        for ended in self._watcher.collect(0):
            name = self._by_pid.pop(ended.pid, None)
            live = self._live.get(name) if name is not None else None
            if live is None:
                continue
            if live.exited is not None and not live.exited.done():
                live.exited.set_result(ended)  # a stop is waiting for it
                continue
            self._ended_by_itself(live.name, self._ended(live, ended, killed=False,
                                                         stopped_for=None))  # fmt: skip

    async def _ended(
        self, live: Live, ended: RuntimeExit | None, *, killed: bool, stopped_for: Any
    ) -> None:
        self._probes.close(live)
        result = await self._work.run(
            self._executor.finish, live.name, ended, killed=killed, events=live.oom_events
        )
        if live.oom_events is not None:
            live.oom_events.close()
        self._live.pop(live.name, None)
        self._by_pid.pop(live.pid, None)
        exit_ = Exit(
            at=self._clock(),
            hash=live.record.hash,
            started_at=live.record.started_at,
            code=result.code,
            signal=result.signal,
            oom=result.oom,
            ready=live.ready_at is not None,
            stopped_for=stopped_for,
            digest=live.record.image_digest,
        )
        self._history[live.name] = record_exit(
            self._history.get(live.name), exit_, live.record.unit
        )
        self._exits.setdefault(live.name, deque(maxlen=EXITS_KEPT)).append(exit_)
        self._events.emit(
            live.name, "exited", describe_exit(exit_), code=result.code, signal=result.signal
        )
        for listener in self._exit_listeners:
            listener(live.name, exit_)
        log.info("ended", unit=live.name, code=result.code, signal=result.signal,
                 oom=result.oom, killed=killed, stopped_for=stopped_for)  # fmt: skip

    # --- an operator's and the planner's bookkeeping ----------------------------------------

    def restart_now(self, name: str) -> None:
        """An operator's restart of a unit with no container: the backoff and the policy step
        aside (its last run counts as replaced)."""
        history = self._history.get(name)
        if history is not None and history.last_exit is not None:
            last_exit = replace(history.last_exit, stopped_for="replace")
            self._history[name] = History(restarts=0, last_exit=last_exit)

    def forget(self, name: str) -> None:
        """A removed unit: its history, exits and start counts go."""
        self._history.pop(name, None)
        self._starts.pop(name, None)
        self._exits.pop(name, None)

    def close(self) -> None:
        """The agent stops: every probe is closed (the containers keep running)."""
        for live in self._live.values():
            self._probes.close(live)


async def _wait(future: asyncio.Future[RuntimeExit], timeout: float) -> RuntimeExit | None:
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        return None
