"""Readiness and health of live containers: sd_notify sockets, TCP probes, health checks.

The only writer of a :class:`~quayd.agent.live.Live`'s probe fields (ready_at, health,
health history, STATUS text); each verdict that changes something wakes the loop, where the
planner decides what it means (a unit ready, a restart of an unhealthy one).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quayd.agent.events import EventLog
from quayd.agent.live import Live
from quayd.agent.logs import logger
from quayd.agent.work import Work
from quayd.images.store import Store
from quayd.isolation.notify import NotifySocket
from quayd.net import netns
from quayd.reconcile.executor import Executor
from quayd.reconcile.health import HealthSpec, ImageHealthcheck, health_spec, judge
from quayd.units.model import Unit

log = logger("quayd")

TCP_PROBE_INTERVAL = 0.1


class Probes:
    """Arms and closes the probes of each live container, and records their verdicts."""

    def __init__(
        self,
        *,
        executor: Executor,
        store: Store,
        work: Work,
        events: EventLog,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self._executor = executor
        self._store = store
        self._work = work
        self._events = events
        self._clock = clock
        self._wake = wake

    def arm(self, live: Live) -> None:
        """Its notify socket, TCP probe and health check, as its unit says."""
        unit = live.record.unit
        loop = asyncio.get_running_loop()
        if live.notify is None and unit.ready.mode == "notify":
            live.notify = NotifySocket(self._executor.notify_dir(live.name))
        if live.notify is not None:
            notify = live.notify
            loop.add_reader(notify.fileno(), self._on_notify, live, notify)
        if unit.ready.mode == "tcp" and live.ready_at is None and unit.ready.port is not None:
            live.tasks.append(asyncio.create_task(self._probe_tcp(live, unit.ready.port)))
        spec = health_spec(unit, self._image_health(unit))
        if spec is not None:
            live.tasks.append(asyncio.create_task(self._probe_health(live, spec)))
        if live.ready_at is None and unit.ready.mode == "started":
            self.ready(live)

    def close(self, live: Live) -> None:
        for task in live.tasks:
            task.cancel()
        live.tasks.clear()
        if live.notify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(live.notify.fileno())
            live.notify.close()
            live.notify = None

    def ready(self, live: Live) -> None:
        """Ready now (once): an event, the record updated, the loop woken."""
        if live.ready_at is not None:
            return
        live.ready_at = self._clock()
        log.info("ready", unit=live.name)
        self._events.emit(live.name, "ready", "ready")
        self._work.spawn(self._persist_ready(live.name, live.ready_at))
        self._wake()

    async def _persist_ready(self, name: str, at: float) -> None:
        with contextlib.suppress(OSError):
            await self._work.run(self._executor.mark_ready, name, at)

    def _image_health(self, unit: Unit) -> ImageHealthcheck | None:
        record = self._executor.image(unit)
        if record is None:
            return None
        check = self._store.image_config(record).healthcheck
        if check is None:
            return None

        def seconds(value: Any) -> float | None:
            return None if value is None else float(value.total_seconds())

        return ImageHealthcheck(
            test=check.test,
            interval=seconds(check.interval),
            timeout=seconds(check.timeout),
            start_period=seconds(check.start_period),
            retries=check.retries,
        )

    def _on_notify(self, live: Live, notify: NotifySocket) -> None:
        for message in notify.receive():
            if message.status is not None:
                live.status_text = message.status
            if message.ready:
                self.ready(live)
        self._wake()

    async def _probe_tcp(self, live: Live, port: int) -> None:
        path = Path(f"/proc/{live.pid}/ns/net")
        while live.ready_at is None:
            if await self._work.run(_accepts, path, port):
                self.ready(live)
                return
            await asyncio.sleep(TCP_PROBE_INTERVAL)

    async def _probe_health(self, live: Live, spec: HealthSpec) -> None:
        while True:
            await asyncio.sleep(spec.interval)
            passed = await self._work.run(self._run_check, live.name, spec)
            before = live.health
            live.health = judge(
                before,
                passed=passed,
                spec=spec,
                since_start=self._clock() - live.record.started_at,
            )
            live.health_history.append((self._clock(), passed))
            if live.health.unhealthy and not before.unhealthy:
                log.warning("unhealthy", unit=live.name, failures=live.health.failures)
                self._events.emit(
                    live.name, "unhealthy", f"{live.health.failures} failed checks in a row"
                )
            elif before.unhealthy and not live.health.unhealthy:
                self._events.emit(live.name, "healthy", "its health check passes again")
            if passed and live.record.unit.ready.mode == "healthy":
                self.ready(live)
            if live.health != before:
                self._wake()

    def _run_check(self, name: str, spec: HealthSpec) -> bool:
        try:
            done = self._executor.runtime.exec(name, list(spec.argv), timeout=spec.timeout)
        except Exception:  # a timeout or a vanished container: a failed check
            return False
        return done.returncode == 0


def _accepts(namespace: Path, port: int) -> bool:
    """Whether 127.0.0.1:``port`` accepts a connection inside the container's namespace."""

    def attempt() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        return netns.run_in(namespace, attempt)
    except Exception:  # the container is gone: not ready
        return False
