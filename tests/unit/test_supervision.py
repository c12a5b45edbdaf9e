"""The supervisor with a fake executor, exit watcher and clock: starts, exits, stops (with
the SIGKILL escalation), adoption and the restart bookkeeping the planner reads."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from quayd.agent.events import EventLog
from quayd.agent.probes import Probes
from quayd.agent.supervision import Supervisor
from quayd.agent.work import Work
from quayd.isolation.container import StopResult
from quayd.isolation.runtime import Exit as RuntimeExit
from quayd.reconcile.executor import ExecutorError, Launched
from quayd.reconcile.model import Exit
from quayd.reconcile.records import ContainerRecord
from quayd.units.model import Unit


def unit(ready: str = "started", stop_timeout: str = "10s") -> Unit:
    return Unit.model_validate(
        {
            "container": {"image": "busybox:1.36", "stop_timeout": stop_timeout},
            "ready": {"mode": ready},
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeWatcher:
    """Exits are queued by the fake executor (a signal it "delivers") or by the test."""

    watched: list[int] = field(default_factory=list)
    pending: list[RuntimeExit] = field(default_factory=list)
    pidfd_kills: list[int] = field(default_factory=list)

    def watch(self, pid: int) -> None:
        self.watched.append(pid)

    def collect(self, timeout: float) -> list[RuntimeExit]:
        del timeout
        found, self.pending = self.pending, []
        return found

    def send_signal(self, pid: int, sig: int) -> bool:  # noqa: ARG002 - the executor's signature
        self.pidfd_kills.append(pid)
        return False


class FakeExecutor:
    """What the supervisor asks of the executor, recorded; a container ends on the signals
    in ``ends_on`` (delivered on the loop, as the exit watcher would)."""

    def __init__(self, watcher: FakeWatcher, supervisor: list[Supervisor], tmp: Path) -> None:
        self.watcher = watcher
        self.supervisor = supervisor
        self.tmp = tmp
        self.next_pid = 100
        self.fail_start: str | None = None
        self.ends_on = {"SIGTERM"}
        self.signals: list[tuple[str, str]] = []
        self.finished: list[tuple[str, bool]] = []
        self.ready_marks: list[str] = []
        self.pids: dict[str, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.Lock()

    def notify_dir(self, name: str) -> Path:
        return self.tmp / name

    def image(self, unit: Unit) -> None:  # noqa: ARG002 - the executor's signature
        return None

    def start(self, name: str, unit: Unit, unit_hash: str, all_units: Any, **_: Any) -> Launched:  # noqa: ARG002 - the executor's signature
        if self.fail_start:
            raise ExecutorError(self.fail_start)
        with self.lock:
            self.next_pid += 1
            pid = self.next_pid
        self.pids[name] = pid
        record = ContainerRecord(name=name, hash=unit_hash, unit=unit, started_at=1000.0)
        return Launched(pid=pid, record=record, oom_events=None)

    def stop_signal(self, unit: Unit) -> str:  # noqa: ARG002 - the executor's signature
        return "SIGTERM"

    def signal(self, name: str, signal_name: str) -> None:
        self.signals.append((name, signal_name))
        if signal_name in self.ends_on:
            self.exit(name, signal=getattr(signal, signal_name).value)

    def exit(self, name: str, code: int | None = None, signal: int | None = None) -> None:
        """The container's init ends: the watcher reports it on the loop."""
        assert self.loop is not None
        self.watcher.pending.append(RuntimeExit(self.pids[name], code=code, signal=signal))
        self.loop.call_soon_threadsafe(self.supervisor[0].on_exits)

    def finish(
        self,
        name: str,
        ended: RuntimeExit | None,
        *,
        killed: bool,
        events: Any,  # noqa: ARG002
    ) -> StopResult:
        self.finished.append((name, killed))
        code = ended.code if ended is not None else None
        sig = signal.Signals(ended.signal).name if ended and ended.signal else None
        return StopResult(code=code, signal=sig, killed=killed, oom=False)

    def mark_ready(self, name: str, at: float) -> None:  # noqa: ARG002 - the executor's signature
        self.ready_marks.append(name)


@dataclass
class Room:
    supervisor: Supervisor
    executor: FakeExecutor
    watcher: FakeWatcher
    events: EventLog
    clock: Clock
    ended_by_itself: list[str]
    wakes: list[int]
    exits_heard: list[tuple[str, Exit]]

    def kinds(self, name: str) -> list[str]:
        return [event.kind for event in self.events.since(0) if event.unit == name]


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    clock = Clock()
    events = EventLog(clock=clock)
    work = Work(threads=2)
    watcher = FakeWatcher()
    holder: list[Supervisor] = []
    executor = FakeExecutor(watcher, holder, tmp_path)
    wakes: list[int] = []
    ended: list[str] = []

    def wake() -> None:
        wakes.append(1)

    def ended_by_itself(name: str, work_: Coroutine[Any, Any, None]) -> None:
        ended.append(name)
        asyncio.get_running_loop().create_task(work_)

    probes = Probes(executor=executor, store=None, work=work, events=events,  # type: ignore[arg-type]
                    clock=clock, wake=wake)  # fmt: skip
    supervisor = Supervisor(
        executor=executor,  # type: ignore[arg-type]
        watcher=watcher,
        probes=probes,
        work=work,
        events=events,
        clock=clock,
        wake=wake,
        ended_by_itself=ended_by_itself,
    )
    holder.append(supervisor)
    heard: list[tuple[str, Exit]] = []
    supervisor.on_exit(lambda name, exit_: heard.append((name, exit_)))
    yield Room(supervisor, executor, watcher, events, clock, ended, wakes, heard)
    work.close()


def run(room: Room, coroutine: Coroutine[Any, Any, Any]) -> Any:
    async def main() -> Any:
        room.executor.loop = asyncio.get_running_loop()
        return await coroutine

    return asyncio.run(main())


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_a_start_is_tracked_counted_and_ready_at_once_in_mode_started(room: Room) -> None:
    async def scenario() -> None:
        await room.supervisor.start("web", unit(), "h1", {})
        await settle()

    run(room, scenario())
    live = room.supervisor.get("web")
    assert live is not None
    assert live.pid == 101
    assert room.watcher.watched == [101]
    assert live.ready_at == 1000.0
    assert room.executor.ready_marks == ["web"]
    assert room.kinds("web") == ["ready", "started"]
    assert room.supervisor.starts() == {"web": ("h1", 1)}
    assert room.supervisor.containers()["web"].ready


def test_a_unit_waiting_for_notify_is_not_ready_until_it_says_so(room: Room) -> None:
    run(room, room.supervisor.start("web", unit(ready="notify"), "h1", {}))
    live = room.supervisor.get("web")
    assert live is not None
    assert live.ready_at is None
    assert live.notify is not None
    room.supervisor.close()
    assert live.notify is None


def test_starts_of_one_hash_are_restarts_a_new_hash_is_not(room: Room) -> None:
    async def scenario() -> None:
        for wanted in ("h1", "h1", "h2"):
            await room.supervisor.start("web", unit(), wanted, {})
            room.executor.exit("web", code=1)
            await settle()
            counts.append(room.supervisor.restarts("web"))

    counts: list[int] = []
    run(room, scenario())
    assert counts == [0, 1, 0]
    assert room.supervisor.starts() == {"web": ("h2", 1)}


def test_a_failed_start_is_an_exit_never_ready_and_nothing_is_tracked(room: Room) -> None:
    room.executor.fail_start = "no such image"
    with pytest.raises(ExecutorError, match="cannot start: no such image"):
        run(room, room.supervisor.start("web", unit(), "h1", {}))
    assert room.supervisor.get("web") is None
    history = room.supervisor.history()["web"]
    assert history.last_exit is not None
    assert (history.last_exit.ready, history.last_exit.stopped_for) == (False, "failure")


def test_an_exit_nobody_asked_for_is_recorded_and_heard(room: Room) -> None:
    async def scenario() -> None:
        await room.supervisor.start("job", unit(), "h1", {})
        room.clock.now = 1005.0
        room.executor.exit("job", code=3)
        await settle()

    run(room, scenario())
    assert room.ended_by_itself == ["job"]
    assert "job" not in room.supervisor
    (ended,) = room.supervisor.exits("job")
    assert (ended.code, ended.stopped_for, ended.ready, ended.at) == (3, None, True, 1005.0)
    assert room.supervisor.history()["job"].last_exit == ended
    assert room.exits_heard == [("job", ended)]
    assert room.executor.finished == [("job", False)]
    assert room.kinds("job")[-1] == "exited"


def test_a_stop_ends_on_the_stop_signal_and_says_why(room: Room) -> None:
    async def scenario() -> None:
        await room.supervisor.start("web", unit(), "h1", {})
        await room.supervisor.stop("web", "replace")

    run(room, scenario())
    assert room.executor.signals == [("web", "SIGTERM")]
    assert room.ended_by_itself == []  # the exit went to the stop waiting for it
    (ended,) = room.supervisor.exits("web")
    assert (ended.signal, ended.stopped_for) == ("SIGTERM", "replace")
    assert room.executor.finished == [("web", False)]


def test_a_stop_the_container_ignores_ends_with_sigkill_after_its_timeout(room: Room) -> None:
    room.executor.ends_on = {"SIGKILL"}

    async def scenario() -> None:
        await room.supervisor.start("web", unit(stop_timeout="100ms"), "h1", {})
        await room.supervisor.stop("web", "shutdown")

    run(room, scenario())
    assert room.executor.signals == [("web", "SIGTERM"), ("web", "SIGKILL")]
    assert room.executor.finished == [("web", True)]
    assert room.watcher.pidfd_kills == []
    assert "web" not in room.supervisor


def test_stopping_a_unit_with_no_container_does_nothing(room: Room) -> None:
    run(room, room.supervisor.stop("ghost", "replace"))
    assert room.executor.signals == []
    assert room.supervisor.exits("ghost") == ()


def test_an_adopted_container_keeps_its_pid_and_counts_from_its_adoption(room: Room) -> None:
    record = ContainerRecord(name="web", hash="h1", unit=unit(), started_at=900.0)

    async def scenario() -> None:
        room.supervisor.adopt("web", record, 4242, None)

    run(room, scenario())
    live = room.supervisor.get("web")
    assert live is not None
    assert (live.pid, live.ready_at, live.adopted_at) == (4242, 900.0, 1000.0)
    assert room.supervisor.containers()["web"].watched_from == 1000.0
    assert room.watcher.watched == [4242]
    assert room.supervisor.restarts("web") == 0


def test_an_operator_restart_lets_the_policy_and_backoff_step_aside(room: Room) -> None:
    async def scenario() -> None:
        await room.supervisor.start("job", unit(), "h1", {})
        room.executor.exit("job", code=1)
        await settle()

    run(room, scenario())
    room.supervisor.restart_now("job")
    history = room.supervisor.history()["job"]
    assert history.restarts == 0
    assert history.last_exit is not None
    assert history.last_exit.stopped_for == "replace"
    room.supervisor.forget("job")
    assert room.supervisor.history() == {}
    assert room.supervisor.exits("job") == ()
