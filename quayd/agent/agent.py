"""quayd's agent: builds its rooms, runs the loop, stops; and answers the API (:class:`Control`).

One asyncio loop owns all state, each piece with one owner (docs/architecture.md lists them):
the loop (:mod:`loop`: when passes run) and the passes (:mod:`passes`: desired, observed, the
pure planner, actions), the desired state (:mod:`desired`), the dispatcher (:mod:`dispatch`:
one task per action, busy units), the supervisor (:mod:`supervision`: live containers, exits,
restarts) with its probes (:mod:`probes`), the pulls (:mod:`unit_pulls`), adoption at start-up
(:mod:`adoption`), the ad-hoc units and their attach socket (:mod:`adhoc_runs`,
:mod:`attach`), the holds (:mod:`holds`), updates (:mod:`update_actions`, :mod:`updates`), and
the API's handlers (:mod:`handlers`), which see only :class:`~quayd.agent.control.Control`.

Under systemd (``Type=notify``): ``READY=1`` once the API socket listens and the first pass has
been planned and its actions started; ``STATUS=`` with counts after each pass; ``WATCHDOG=1``
from the loop itself (so a hung loop is caught); ``RELOADING=1`` on SIGHUP; ``STOPPING=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import sdnotify

from quayd.agent import adoption
from quayd.agent.adhoc_runs import AdHocRuns
from quayd.agent.agent_control import AgentControl
from quayd.agent.api import ApiServer
from quayd.agent.attach import AttachServer
from quayd.agent.desired import DesiredState
from quayd.agent.dispatch import Dispatcher
from quayd.agent.events import EventLog
from quayd.agent.file_watch import watch
from quayd.agent.handlers import READ_ONLY, Handlers
from quayd.agent.holds import Holds
from quayd.agent.logs import logger
from quayd.agent.loop import COALESCE_MAX_SECONDS, RESYNC_SECONDS, Loop, watchdog_interval
from quayd.agent.metrics import AgentMetrics, count_requests
from quayd.agent.metrics_server import MetricsServer, MetricsServerError
from quayd.agent.passes import Passes
from quayd.agent.peers import PeerSync
from quayd.agent.probes import Probes
from quayd.agent.restart_requests import RestartRequests
from quayd.agent.supervision import Supervisor
from quayd.agent.unit_pulls import UnitPulls
from quayd.agent.update_actions import UpdateRunner
from quayd.agent.updates import Updates
from quayd.agent.work import Work
from quayd.images.store import Store
from quayd.isolation.runtime import ExitWatcher, become_subreaper
from quayd.isolation.seccomp import load_default_profile
from quayd.net.network import Network
from quayd.reconcile.executor import Executor
from quayd.reconcile.model import Desired
from quayd.reconcile.plan import shutdown_plan
from quayd.units.directory import LoadCache
from quayd.units.model import Unit
from quayd.units.settings import Settings

__all__ = ["COALESCE_MAX_SECONDS", "RESYNC_SECONDS", "Agent", "AgentError"]

log = logger("quayd")


class AgentError(Exception):
    """The agent cannot start (another one runs, the state dir is unusable, ...)."""


class Agent:
    """One agent: its rooms, built in :meth:`_setup`, and the :class:`Control` the API reads."""

    store: Store
    network: Network
    executor: Executor
    watcher: ExitWatcher
    supervisor: Supervisor
    pulls: UnitPulls
    update_runner: UpdateRunner
    dispatcher: Dispatcher
    passes: Passes
    control: AgentControl

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.config_dir = Path(settings.config_dir)
        self.state_dir = Path(settings.state_dir)
        self.run_dir = Path(settings.run_dir)
        self.started_at = clock()
        self.events = EventLog(clock=clock)
        self.notifier = sdnotify.SystemdNotifier()
        self.metrics = AgentMetrics() if settings.metrics.listen else None
        """Published to after each pass, served from its own thread (docs/metrics.md)."""
        self.work = Work()
        self.updates = Updates(
            self.state_dir, settings.updates, f"{socket.gethostname()}:{self.state_dir}", clock
        )
        self.unit_cache = LoadCache()
        """The config directory's parsed units, by their files' identity (cheap passes)."""
        self.loop = Loop(
            self._run_pass,
            clock=clock,
            notifier=self.notifier,
            wake_at=self._wake_at,
            status_line=self._status_line,
            watchdog_every=watchdog_interval(),
        )
        self.holds = Holds(self.state_dir, self.events, lambda: set(self.runs))
        self.runs = AdHocRuns(self.holds, self.loop.wake)
        self.restarts = RestartRequests(self.state_dir)
        self._lock_fd: int | None = None

    # --- start-up ---------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        """One agent per state dir: a second one is refused, naming the first."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.state_dir / "quayd.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AgentError(
                f"another quayd (pid {holder}) is running on {self.state_dir}; stop it first "
                "(systemctl stop quayd) or give this one another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _setup(self) -> None:
        """The host parts (store, network, executor) and the rooms that use them."""
        become_subreaper()
        self.holds.load()
        self.restarts.load()
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        profile = load_default_profile()
        if profile is None:
            log.warning(
                "no seccomp profile: containers run without a syscall filter",
                path="/usr/share/containers/seccomp.json",
                fix="apt-get install golang-github-containers-common",
            )
        self.store = Store.for_settings(self.settings)
        for path in self.store.sweep_leftovers():
            log.info("store: removed what an interrupted pull left", path=path)
        self.network = Network(
            self.settings.network, state_dir=self.state_dir, run_dir=self.run_dir
        )
        for change in self.network.setup_host():
            log.info("network", change=change)
        self.executor = Executor(
            self.settings, store=self.store, network=self.network, seccomp_profile=profile
        )
        self.watcher = ExitWatcher()
        self._build_rooms()

    def _build_rooms(self) -> None:
        wake, work, events, clock = self.loop.wake, self.work, self.events, self.clock
        probes = Probes(executor=self.executor, store=self.store, work=work, events=events,
                        clock=clock, wake=wake)  # fmt: skip
        self.supervisor = Supervisor(
            executor=self.executor,
            watcher=self.watcher,
            probes=probes,
            work=work,
            events=events,
            clock=clock,
            wake=wake,
            ended_by_itself=self._ended_by_itself,
        )
        self.supervisor.on_exit(self.runs.ended)
        self.pulls = UnitPulls(executor=self.executor, work=work, events=events, clock=clock,
                               metrics=self.metrics)  # fmt: skip
        self.update_runner = UpdateRunner(
            updates=self.updates,
            executor=self.executor,
            store=self.store,
            supervisor=self.supervisor,
            pulls=self.pulls,
            work=work,
            events=events,
            wake=wake,
            desired=self._desired,
            bandwidth=self.settings.updates.bandwidth,
        )
        self.dispatcher = Dispatcher(
            supervisor=self.supervisor,
            pulls=self.pulls,
            runs=self.runs,
            peers=PeerSync(self.executor, work, self._all_units),
            updates=self.update_runner,
            executor=self.executor,
            work=work,
            events=events,
            wake=wake,
            desired=self._desired,
        )
        self.passes = Passes(
            config_dir=self.config_dir,
            state_dir=self.state_dir,
            cache=self.unit_cache,
            desired_state=DesiredState(self.executor, events),
            supervisor=self.supervisor,
            pulls=self.pulls,
            dispatcher=self.dispatcher,
            runs=self.runs,
            holds=self.holds,
            restarts=self.restarts,
            updates=self.update_runner,
            executor=self.executor,
            network=self.network,
            work=work,
            events=events,
            clock=clock,
            wake=wake,
            published=self._publish if self.metrics is not None else None,
        )
        self.loop.on_reload(self.passes.resync_soon)
        self.control = AgentControl(
            config_dir=self.config_dir,
            started_at=self.started_at,
            events=events,
            passes=self.passes,
            supervisor=self.supervisor,
            dispatcher=self.dispatcher,
            runs=self.runs,
            pulls=self.pulls,
            holds=self.holds,
            restarts=self.restarts,
            network=self.network,
            executor=self.executor,
            work=work,
            update_runner=self.update_runner,
            clock=clock,
            wake=wake,
        )

    # --- the agent's life -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.acquire_lock()
        await asyncio.to_thread(self._setup)
        loop.add_reader(self.watcher.fileno(), self.supervisor.on_exits)
        await adoption.adopt(self.executor, self.supervisor, self.work)
        await adoption.cleanup_leftovers(
            self.config_dir, self.unit_cache, self.network, set(self.supervisor)
        )
        api = ApiServer(
            self.run_dir / "quayd.sock",
            count_requests(self.metrics, Handlers(self.control).table()),
            read_only=set(READ_ONLY),
        )
        await api.start()
        metrics_server = await self._serve_metrics(api)
        attach = AttachServer(self.run_dir, self.runs, self.work)
        attach.start()
        observer = watch(self.config_dir, loop, self.loop.file_event)
        for sig, handler in (
            (signal.SIGTERM, self.loop.stop),
            (signal.SIGINT, self.loop.stop),
            (signal.SIGHUP, self.loop.reload),
        ):
            loop.add_signal_handler(sig, handler)
        try:
            await self.loop.first()
            log.info("agent ready", units=len(self.passes.desired.units),
                     containers=len(self.supervisor))  # fmt: skip
            await self.loop.run()
        finally:
            self.notifier.notify("STOPPING=1")
            observer.stop()
            await api.close()
            if metrics_server is not None:
                metrics_server.close()
            attach.close()
            self.runs.close()
            async with self.loop.watchdog_kept():
                if self.settings.stop_containers_on_exit:
                    await self._stop_everything()
                await self.work.finish()
            self.supervisor.close()
            loop.remove_reader(self.watcher.fileno())
            self.executor.close()
            self.work.close()
            log.info("stopped", containers_left_running=len(self.supervisor))
        return 0

    async def _serve_metrics(self, api: ApiServer) -> MetricsServer | None:
        """The metrics endpoint when ``[metrics] listen`` is set (its own thread)."""
        if self.metrics is None or self.settings.metrics.listen is None:
            return None
        try:
            server = MetricsServer(self.settings.metrics.listen, self.metrics.render)
        except MetricsServerError as error:
            await api.close()
            raise AgentError(str(error)) from None
        server.start()
        log.info("metrics endpoint", listen=server.address)
        return server

    async def _stop_everything(self) -> None:
        desired = self.passes.desired
        for stop in shutdown_plan(desired, self.passes.observed(desired)):
            with contextlib.suppress(Exception):
                await self.supervisor.stop(stop.unit, "shutdown")

    def _desired(self) -> Desired:
        return self.passes.desired

    def _all_units(self) -> dict[str, Unit]:
        return self.passes.all_units()

    def _ended_by_itself(self, name: str, ended: Coroutine[Any, Any, None]) -> None:
        self.dispatcher.while_busy(name, "stopping", ended)

    async def _run_pass(self) -> None:
        await self.passes.run()

    def _wake_at(self) -> float | None:
        """The planner's next moment, or the next update check, whichever comes first."""
        units = {name: entry.unit for name, entry in self.passes.desired.units.items()}
        moments = [self.passes.plan.wake_at, self.updates.wake_at(units)]
        return min((moment for moment in moments if moment is not None), default=None)

    def _status_line(self) -> str:
        return self.passes.status_line()

    def _publish(self, pass_seconds: float) -> None:
        assert self.metrics is not None
        self.metrics.publish_agent(self.control, pass_seconds)
