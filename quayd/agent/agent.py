"""quayd's loop: level-triggered passes over the config directory and the live system.

One asyncio loop owns all state. A **pass** loads the config directory, builds *desired* (with
each unit's last good version), builds *observed* from the live containers it tracks, the image
store and its memory (restart counts, pulls in flight), calls the pure planner, and starts a task
per action. Work is serialised per unit (a unit with a task in flight is "busy" and gets no new
action) and concurrent across units (a slow pull never delays another unit's restart).

Events only **wake** the loop: file changes (watchdog; the events of one file are one change,
applied once its write is complete; a burst of several files is coalesced for a few tens of
milliseconds: :mod:`quayd.agent.file_changes`), container exits (pidfds, through one
:class:`ExitWatcher` on the loop), readiness and STATUS messages (notify sockets on the loop),
health verdicts, finished actions, and timers (the planner's ``wake_at``). A full pass also runs
every :data:`RESYNC_SECONDS`; every pass reads every file (:class:`LoadCache` compares bytes),
so a change that no event reported is seen too.

Under systemd (``Type=notify``): ``READY=1`` once the API socket listens and the first pass has
been planned and its actions started; ``STATUS=`` with counts after each pass; ``WATCHDOG=1``
from the loop itself (so a hung loop is caught); ``RELOADING=1`` on SIGHUP; ``STOPPING=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import secrets
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sdnotify

from quayd import __version__
from quayd.agent import adhoc as adhoc_request
from quayd.agent import image_pulls, update_actions
from quayd.agent.api import ApiServer, RequestError
from quayd.agent.events import EventLog
from quayd.agent.file_changes import LONGEST_SECONDS, QUIET_SECONDS, FileChanges
from quayd.agent.file_watch import watch
from quayd.agent.logs import logger
from quayd.agent.metrics import AgentMetrics, count_requests
from quayd.agent.metrics_server import MetricsServer, MetricsServerError
from quayd.agent.relay import Relay
from quayd.agent.updates import Updates
from quayd.images.store import Store
from quayd.isolation.container import KILL_TIMEOUT, OomEvents, usage
from quayd.isolation.notify import NotifySocket
from quayd.isolation.runtime import Exit as RuntimeExit
from quayd.isolation.runtime import (
    ExitWatcher,
    become_subreaper,
    journald_running,
    trim_log_file,
)
from quayd.isolation.seccomp import load_default_profile
from quayd.net import netns
from quayd.net.network import Network
from quayd.reconcile.executor import Executor, ExecutorError, Launched
from quayd.reconcile.health import HealthSpec, HealthState, ImageHealthcheck, health_spec, judge
from quayd.reconcile.model import (
    Action,
    Busy,
    Confirm,
    Container,
    Desired,
    DesiredUnit,
    Exit,
    Fetch,
    History,
    ImageState,
    Observed,
    Plan,
    Pull,
    Remove,
    Rollback,
    Start,
    Stop,
    UnitStatus,
    Update,
)
from quayd.reconcile.plan import describe_exit, plan, pull_backoff, record_exit, shutdown_plan
from quayd.reconcile.records import ContainerRecord, unit_hash, write_json_atomically
from quayd.units.directory import ConfigSnapshot, LoadCache, load_directory
from quayd.units.fieldtypes import UNIT_NAME
from quayd.units.findings import QuayConfigError
from quayd.units.model import Unit
from quayd.units.settings import Settings

RESYNC_SECONDS = 30.0
COALESCE_SECONDS = QUIET_SECONDS
COALESCE_MAX_SECONDS = LONGEST_SECONDS
TCP_PROBE_INTERVAL = 0.1
PEER_SYNC_QUIET = 0.05
PEER_SYNC_MAX = 0.5
"""After a bridged unit starts or a unit is removed, the other containers' hosts files are
rewritten once the starts have been quiet for PEER_SYNC_QUIET s, at most PEER_SYNC_MAX s after
the first (one pass over every file per burst, not one per start)."""
FINISH_SECONDS = 20.0
"""How long a stopping agent lets its actions in flight finish (TimeoutStopSec is 30 s)."""
PROGRESS_EVERY = 1.0
"""Seconds between two "pulling" progress events of one pull."""
ACTION_THREADS = 8
"""Worker threads for actions (pulls, starts, stops, health checks). The loop's own work
(reading the config directory) uses asyncio's default pool, so a burst of 100 starts never
holds up a pass, nor the watchdog with it."""
LOG_FILE_MAX = 16 * 1024 * 1024
"""Cap of a container's log file when there is no journald (trimmed to about half)."""
ATTACH_SOCKET = "attach.sock"
"""``RUN_DIR/attach.sock``: where ``quayctl run`` attaches to its ad-hoc unit (relay.py)."""
ADHOC_LABEL = adhoc_request.ADHOC_LABEL
"""The label that marks an ad-hoc unit (``quayctl run``) in its container's record."""
ATTACH_GRACE = 10.0
"""Seconds an ended ad-hoc unit with ``rm`` and a terminal waits for its client to attach (it
gets the output still in the terminal and the exit status) before it is removed."""
RUN_NAME_PREFIX = "run-"
HANG_HOOK_ENV = "QUAYD_TEST_HANG_FILE"
"""Test-only: when this file exists at the start of a pass, it is removed and the loop blocks
(the watchdog test). Unset in production: nothing looks at any file then."""

log = logger("quayd")


if TYPE_CHECKING:
    from quayd.images.pull import PullProgress

T = TypeVar("T")


class AgentError(Exception):
    """The agent cannot start (another one runs, the state dir is unusable, ...)."""


@dataclass
class Live:
    """A container this agent tracks (started by it, or adopted)."""

    name: str
    pid: int
    record: ContainerRecord
    oom_events: OomEvents | None = None
    ready_at: float | None = None
    health: HealthState = field(default_factory=HealthState)
    status_text: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    health_history: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=10))
    notify: NotifySocket | None = None
    exited: asyncio.Future[RuntimeExit] | None = None
    adhoc: AdHoc | None = None
    """The ad-hoc unit (``quayctl run``) this container runs, if it is one."""
    adopted_at: float | None = None
    """When this agent adopted it (left running by a previous agent); None: started by it."""

    def observed(self) -> Container:
        return Container(
            name=self.name,
            hash=self.record.hash,
            started_at=self.record.started_at,
            pid=self.pid,
            ready=self.ready_at is not None,
            ready_at=self.ready_at,
            unhealthy=self.health.unhealthy,
            status_text=self.status_text,
            unit=self.record.unit,
            digest=self.record.image_digest,
            watched_from=self.adopted_at,
        )


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


@dataclass
class PullState:
    pulling: bool = False
    checked_at: float | None = None
    error: str | None = None
    failures: int = 0
    retry_at: float | None = None

    def observed(self, present: bool) -> ImageState:
        return ImageState(
            present=present,
            pulling=self.pulling,
            checked_at=self.checked_at,
            error=self.error,
            retry_at=self.retry_at,
        )


class Agent:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.config_dir = Path(settings.config_dir)
        self.state_dir = Path(settings.state_dir)
        self.run_dir = Path(settings.run_dir)
        self.live: dict[str, Live] = {}
        self.history: dict[str, History] = {}
        self.pulls: dict[str, PullState] = {}
        self.busy: dict[str, Busy] = {}
        self.errors: dict[str, str] = {}
        self.starts: dict[str, tuple[str, int]] = {}
        """Per unit: the hash it runs and how often a container of that hash was started."""
        self.exits: dict[str, deque[Exit]] = {}
        self.events = EventLog(clock=clock)
        self.holds: set[str] = set()
        self.updates = Updates(
            self.state_dir, settings.updates, f"{socket.gethostname()}:{self.state_dir}", clock
        )
        self.adhoc: dict[str, AdHoc] = {}
        """Ad-hoc units (``quayctl run``), by name: desired like the files' units."""
        self._hashes: dict[str, str] = {}
        self._states: dict[str, str] = {}
        self._pass_waiters: list[asyncio.Future[int]] = []
        self.last_good: dict[str, tuple[Unit, str]] = {}
        self.plan: Plan = Plan(actions=(), statuses={})
        self.desired: Desired = Desired(units={})
        self.passes = 0
        self.last_pass_at: float | None = None
        self.started_at = clock()
        self.notifier = sdnotify.SystemdNotifier()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock_fd: int | None = None
        self._stopping = False
        self._reloading = False
        self._wake: asyncio.Event | None = None
        self._file_changes = FileChanges(COALESCE_SECONDS, COALESCE_MAX_SECONDS)
        self._by_pid: dict[int, str] = {}
        self._trimmed_at = 0.0
        self._synced_at = 0.0
        self._unit_cache = LoadCache()
        """The config directory's parsed units, by their files' identity (cheap passes)."""
        self._hash_memo: dict[str, tuple[Unit, str | None, str]] = {}
        """Per unit: the parsed unit, the image digest and their hash (6 ms a pass for 100)."""
        self._peers_changed_at: tuple[float, float] | None = None
        """(first, last) change the peers' hosts files have not seen yet."""
        self._peer_sync: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(ACTION_THREADS, thread_name_prefix="quay-action")
        self.metrics = AgentMetrics() if settings.metrics.listen else None
        """Published to after each pass, served from its own thread (docs/metrics.md)."""

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

    @property
    def holds_file(self) -> Path:
        return self.state_dir / "holds.json"

    def _load_holds(self) -> None:
        """Operators' stops survive agent restarts (the one other thing quay persists)."""
        try:
            document = json.loads(self.holds_file.read_text())
            self.holds = {str(name) for name in document.get("held", [])}
        except FileNotFoundError:
            self.holds = set()
        except (OSError, ValueError, AttributeError) as error:
            log.error(
                "holds file unreadable; no unit is held",
                file=str(self.holds_file),
                error=str(error),
            )
            self.holds = set()

    def _save_holds(self) -> None:
        held = sorted(name for name in self.holds if name not in self.adhoc)
        write_json_atomically(self.holds_file, {"version": 1, "held": held})

    def _setup(self) -> None:
        become_subreaper()
        self._load_holds()
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        profile = load_default_profile()
        if profile is None:
            log.warning(
                "no seccomp profile: containers run without a syscall filter",
                path="/usr/share/containers/seccomp.json",
                fix="apt-get install golang-github-containers-common",
            )
        self.store = Store.for_settings(self.settings)
        self.network = Network(
            self.settings.network, state_dir=self.state_dir, run_dir=self.run_dir
        )
        for change in self.network.setup_host():
            log.info("network", change=change)
        self.executor = Executor(
            self.settings,
            store=self.store,
            network=self.network,
            seccomp_profile=profile,
        )
        self.watcher = ExitWatcher()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.acquire_lock()
        await asyncio.to_thread(self._setup)
        loop.add_reader(self.watcher.fileno(), self._on_exits)
        await self._adopt()
        await self._cleanup_leftovers()
        api = ApiServer(
            self.run_dir / "quayd.sock",
            count_requests(
                self.metrics,
                {
                    "status": self._api_status,
                    "plan": self._api_plan,
                    "plan_dir": self._api_plan_dir,
                    "show": self._api_show,
                    "events": self._api_events,
                    "start": self._api_start,
                    "stop": self._api_stop,
                    "restart": self._api_restart,
                    "exec": self._api_exec,
                    "reload": self._api_reload,
                    "run": self._api_run,
                    "remove": self._api_remove,
                    "kill": self._api_kill,
                    "image_pull": self._api_image_pull,
                    "update": functools.partial(update_actions.api_update, self),
                },
            ),
            read_only={"status", "plan", "show", "events"},
        )
        await api.start()
        metrics_server = await self._serve_metrics(api)
        attach = self._attach_socket()
        attach_task = asyncio.create_task(self._serve_attach(attach))
        observer = self._watch_config_dir()
        for sig, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_reload),
        ):
            loop.add_signal_handler(sig, handler)
        try:
            await self._pass()
            self.notifier.notify("READY=1\nSTATUS=" + self._status_line())
            log.info("agent ready", units=len(self.desired.units), containers=len(self.live))
            await self._loop()
        finally:
            self.notifier.notify("STOPPING=1")
            observer.stop()
            await api.close()
            if metrics_server is not None:
                metrics_server.close()
            attach_task.cancel()
            attach.close()
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / ATTACH_SOCKET).unlink()
            for adhoc in self.adhoc.values():
                _close_console(adhoc)
                if adhoc.relay is not None:
                    adhoc.relay.close()
            async with self._watchdog_kept():
                if self.settings.stop_containers_on_exit:
                    await self._stop_everything()
                await self._finish_actions()
            for task in list(self._tasks):
                task.cancel()
            for live in self.live.values():
                self._close_probes(live)
            loop.remove_reader(self.watcher.fileno())
            self.executor.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            log.info("stopped", containers_left_running=len(self.live))
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

    async def _loop(self) -> None:
        assert self._wake is not None
        watchdog_every = _watchdog_interval()
        while not self._stopping:
            timeout = RESYNC_SECONDS
            if self.plan.wake_at is not None:
                timeout = min(timeout, max(0.0, self.plan.wake_at - self.clock()) + 0.01)
            checks_at = self.updates.wake_at({n: e.unit for n, e in self.desired.units.items()})
            if checks_at is not None:
                timeout = min(timeout, max(0.0, checks_at - self.clock()) + 0.01)
            if watchdog_every is not None:
                timeout = min(timeout, watchdog_every)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            self.notifier.notify("WATCHDOG=1")  # the loop turns, even if this pass is long
            await self._coalesce()
            if self._stopping:
                break
            if self._reloading:
                self.notifier.notify("RELOADING=1")
            await self._pass()
            if self._reloading:
                self._reloading = False
                self.notifier.notify("READY=1")
            self.notifier.notify("WATCHDOG=1\nSTATUS=" + self._status_line())

    async def _coalesce(self) -> None:
        """Wait until the pending file change is due (:class:`FileChanges`): at once for one
        file whose write is complete; in a burst of several files (Ansible writing 30) or
        while a file is being written, until the directory is quiet, at most
        :data:`COALESCE_MAX_SECONDS`. Each event ends the wait early, to ask again."""
        assert self._wake is not None
        while not self._stopping:
            delay = self._file_changes.due(self.clock())
            if not delay:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        self._file_changes.taken()

    async def _work(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run blocking action work in the action pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: function(*args, **kwargs))

    work = _work

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of the agent's (finished or cancelled when it stops)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_container(self, name: str, why: Any) -> None:
        await self._stop(name, why)

    @contextlib.asynccontextmanager
    async def _watchdog_kept(self) -> AsyncIterator[None]:
        """While the agent stops, its loop no longer turns, yet the watchdog still applies
        (systemd kills a stopping service whose pings stop): a container's stop that waits its
        stop_timeout must not turn a clean shutdown into SIGABRT. Bounded by what it wraps."""
        every = _watchdog_interval()
        if every is None:
            yield
            return

        async def ping() -> None:
            while True:
                self.notifier.notify("WATCHDOG=1")
                await asyncio.sleep(every)

        pinger = asyncio.create_task(ping())
        try:
            yield
        finally:
            pinger.cancel()

    async def _finish_actions(self) -> None:
        """Let actions in flight end (a removal half done is worse than a later stop) for up to
        :data:`FINISH_SECONDS`, within systemd's TimeoutStopSec; the rest are cancelled."""
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            log.info("finishing actions before stopping", actions=len(pending))
            await asyncio.wait(pending, timeout=FINISH_SECONDS)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _on_stop(self) -> None:
        self._stopping = True
        self.wake()

    def _on_reload(self) -> None:
        self._reloading = True
        self._synced_at = 0.0  # a reload also verifies the network (ruleset, etc files)
        self.wake()

    def _watch_config_dir(self) -> Any:
        return watch(self.config_dir, asyncio.get_running_loop(), self._on_file_event)

    def _on_file_event(self, path: str, complete: bool, source: str | None = None) -> None:
        """A rename into place, a deletion or a closed write is complete: when no other file
        changed meanwhile, the pass runs at once. A write in progress or the next file of a
        burst starts or extends the quiet window (:meth:`_coalesce`)."""
        self._file_changes.note(path, complete=complete, now=self.clock(), source=source)
        self.wake()

    # --- one pass ---------------------------------------------------------------------------

    async def _resync_extras(self) -> None:
        """Every RESYNC_SECONDS: repair network drift, cap log files (without journald)."""
        now = self.clock()
        if now - self._synced_at < RESYNC_SECONDS:
            return
        self._synced_at = now
        await self._work(self.executor.sync_network, self._all_units())
        if journald_running():
            return
        paths = [self.executor.log_file(name) for name in self.live]
        await self._work(_trim_all, paths)

    async def _pass(self) -> None:
        hang = os.environ.get(HANG_HOOK_ENV)
        if hang and Path(hang).exists():
            Path(hang).unlink()  # one hang per touch: the restarted agent must come up
            log.warning("test hook: hanging the loop", file=hang)
            time.sleep(3600)  # blocks the loop on purpose: the watchdog must catch it
        began = time.monotonic()
        try:
            snapshot = await asyncio.to_thread(load_directory, self.config_dir, self._unit_cache)
        except QuayConfigError as error:
            log.error("config directory unreadable", error=str(error))
            return
        self.desired = self._desired(snapshot)
        await self._resync_extras()
        now = self.clock()
        self.plan = plan(self.desired, self._observed(), now)
        self.passes += 1
        self.last_pass_at = now
        self._emit_transitions()
        waiters, self._pass_waiters = self._pass_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(self.passes)
        for action in self.plan.actions:
            log.info(
                "action", kind=type(action).__name__.lower(), unit=action.unit, reason=action.reason
            )
            self._dispatch(action)
        update_actions.start_checks(self)
        if self.metrics is not None:
            self.metrics.publish_agent(self, time.monotonic() - began)

    def _emit_transitions(self) -> None:
        """Events for states a pass enters that no action reports: backoff, stopped."""
        for name, status in self.plan.statuses.items():
            before = self._states.get(name)
            self._states[name] = status.state
            if status.state == before:
                continue
            if status.state == "backoff":
                self.events.emit(
                    name, "restarting", status.detail, next_attempt=status.next_attempt
                )
            elif status.state == "stopped":
                self.events.emit(name, "stopped", status.detail)
        for name in set(self._states) - set(self.plan.statuses):
            del self._states[name]

    def _desired(self, snapshot: ConfigSnapshot) -> Desired:
        units: dict[str, DesiredUnit] = {}
        invalid: dict[str, tuple[str, ...]] = {}
        for name, loaded in snapshot.units.items():
            digest = None
            if loaded.unit.image.pull == "always" and loaded.unit.update.policy == "off":
                record = self.executor.image(loaded.unit)
                digest = record.manifest_digest if record is not None else None
            memo = self._hash_memo.get(name)
            if memo is not None and memo[0] is loaded.unit and memo[1] == digest:
                digest_hash = memo[2]  # the same parsed unit (LoadCache): the same hash
            else:
                digest_hash = unit_hash(loaded.unit, digest)
                self._hash_memo[name] = (loaded.unit, digest, digest_hash)
            previous = self._hashes.get(name)
            if previous is not None and previous != digest_hash:
                self.events.emit(name, "changed", "the unit changed", hash=digest_hash)
            self._hashes[name] = digest_hash
            self.last_good[name] = (loaded.unit, digest_hash)
            units[name] = DesiredUnit(name=name, unit=loaded.unit, hash=digest_hash)
        self._last_good_of_invalid(snapshot, units, invalid)
        for name, adhoc in list(self.adhoc.items()):
            if name in units or name in invalid:
                log.warning(
                    "a unit file took the name of an ad-hoc unit; it replaces it", unit=name
                )
                self._drop_adhoc(name)
                continue
            units[name] = DesiredUnit(name=name, unit=adhoc.unit, hash=adhoc.hash)
        for name in set(self._hashes) - set(units):
            del self._hashes[name]
        for name in set(self._hash_memo) - set(snapshot.units):
            del self._hash_memo[name]
        held = frozenset(name for name in self.holds if name in units)
        return Desired(units=units, invalid=invalid, held=held)

    def _keep_last_good(
        self,
        snapshot: ConfigSnapshot,
        units: dict[str, DesiredUnit],
        invalid: dict[str, tuple[str, ...]],
    ) -> None:
        """Each invalid file's last good version (from this agent's passes, else the running
        container's record) into ``units`` with its findings; without one, into ``invalid``."""
        for name, bad in snapshot.invalid.items():
            findings = tuple(str(finding) for finding in bad.findings if finding.is_error)
            good = self.last_good.get(name)
            if good is None and name in self.live:
                good = (self.live[name].record.unit, self.live[name].record.hash)
            if good is None:
                invalid[name] = findings
            else:
                units[name] = DesiredUnit(name=name, unit=good[0], hash=good[1], findings=findings)

    def _last_good_of_invalid(
        self,
        snapshot: ConfigSnapshot,
        units: dict[str, DesiredUnit],
        invalid: dict[str, tuple[str, ...]],
    ) -> None:
        """An invalid file keeps its last good version running; without one, nothing runs.
        Each new finding is logged and becomes an event."""
        self._keep_last_good(snapshot, units, invalid)
        for name in snapshot.invalid:
            findings = invalid[name] if name in invalid else units[name].findings
            if findings and self.errors.get(f"invalid:{name}") != findings[0]:
                self.errors[f"invalid:{name}"] = findings[0]
                log.error("invalid unit file", unit=name, findings=list(findings))
                self.events.emit(name, "invalid", findings[0], findings=list(findings))
        for key in list(self.errors):
            if key.startswith("invalid:") and key.removeprefix("invalid:") not in snapshot.invalid:
                del self.errors[key]
        for name in list(self.last_good):
            if name not in units and name not in invalid:
                del self.last_good[name]

    def _observed(self, desired: Desired | None = None) -> Observed:
        present = self.executor.present_images()
        images = {
            name: self.pulls.get(name, PullState()).observed(
                self.executor.reference(entry.unit) in present
            )
            for name, entry in (desired or self.desired).units.items()
        }
        return Observed(
            containers={name: live.observed() for name, live in self.live.items()},
            images=images,
            history=dict(self.history),
            busy=dict(self.busy),
            leftovers=frozenset(self._leftovers()),
            updates=update_actions.observe(self, desired or self.desired),
        )

    def _leftovers(self) -> set[str]:
        known = set(self.desired.units) | set(self.desired.invalid) | set(self.live)
        found: set[str] = set()
        containers = self.state_dir / "containers"
        if containers.is_dir():
            found |= {path.name for path in containers.iterdir()}
        found |= {lease.unit for lease in self.network.lease_file.load()}
        return found - known

    def _dispatch(self, action: Action) -> None:
        kinds: dict[type, Busy] = {
            Pull: "pulling",
            Start: "starting",
            Stop: "stopping",
            Remove: "removing",
            Update: "stopping",
            Rollback: "stopping",
        }
        if isinstance(action, Fetch | Confirm):  # in the background, or at once: not busy
            self.spawn(update_actions.perform(self, action))
            return
        self.busy[action.unit] = kinds[type(action)]
        if isinstance(action, Start):
            self.events.emit(action.unit, "starting", action.reason)
        elif isinstance(action, Stop):
            self.events.emit(action.unit, "stopping", action.reason)
        task = asyncio.create_task(self._perform(action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _perform(self, action: Action) -> None:
        name = action.unit
        try:
            if isinstance(action, Pull):
                await self._pull(name, action.digest)
            elif isinstance(action, Start):
                await self._start(name, action.hash, action.digest)
            elif isinstance(action, Stop):
                await self._stop(name, action.why)
            elif isinstance(action, Update | Rollback):
                await update_actions.perform(self, action)
            else:
                await self._work(self.executor.release, name, self._all_units())
                self._peers_changed()
                self.history.pop(name, None)
                self.pulls.pop(name, None)
                self.starts.pop(name, None)
                self.exits.pop(name, None)
                log.info("removed", unit=name)
                self.events.emit(name, "removed", "removed: network released, volumes kept")
        except Exception as error:  # reported in status; the planner decides what next
            self.errors[name] = str(error)
            log.error("action failed", unit=name, action=type(action).__name__, error=str(error))
        finally:
            self.busy.pop(name, None)
            self.wake()

    def _all_units(self) -> dict[str, Unit]:
        return {name: desired.unit for name, desired in self.desired.units.items()}

    def _peers_changed(self) -> None:
        """A unit's name or address came or went: the other containers' hosts files need it,
        soon but once per burst (see :data:`PEER_SYNC_QUIET`)."""
        now = time.monotonic()
        first = self._peers_changed_at[0] if self._peers_changed_at is not None else now
        self._peers_changed_at = (first, now)
        if self._peer_sync is None or self._peer_sync.done():
            self._peer_sync = asyncio.create_task(self._sync_peers())
            self._tasks.add(self._peer_sync)
            self._peer_sync.add_done_callback(self._tasks.discard)

    async def _sync_peers(self) -> None:
        while self._peers_changed_at is not None:
            first, last = self._peers_changed_at
            now = time.monotonic()
            wait = min(last + PEER_SYNC_QUIET, first + PEER_SYNC_MAX) - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._peers_changed_at = None  # changes from now on get the next sync
            try:
                await self._work(self.executor.sync_peers, self._all_units())
            except Exception as error:  # the 30 s resync repairs what this missed
                log.warning("peers' hosts files not updated", error=str(error))

    # --- actions ----------------------------------------------------------------------------

    async def _pull(self, name: str, digest: str | None = None) -> None:
        unit = self.desired.units[name].unit
        state = self.pulls.setdefault(name, PullState())
        state.pulling = True
        self.events.emit(name, "pulling", f"pulling {unit.container.image}")
        try:
            if digest is None:
                record = await self._work(self.executor.pull, unit, self._pull_progress(name))
            else:  # the digest an update wants (its target, or the one rolled back to)
                reference = update_actions.pull_reference(self, name, digest)
                record = await self._work(self.executor.pull_reference, reference)
        except ExecutorError as error:
            if digest is not None:
                update_actions.pulled(self, name, digest, str(error))
            state.failures += 1
            state.error = str(error)
            state.retry_at = self.clock() + pull_backoff(state.failures)
            log.warning("pull failed", unit=name, error=str(error), retry_at=state.retry_at)
            self.events.emit(name, "pull-failed", str(error), retry_at=state.retry_at)
            return
        finally:
            state.pulling = False
        state.checked_at = self.clock()
        state.error = None
        state.failures = 0
        state.retry_at = None
        log.info("pulled", unit=name, image=record.reference, digest=record.manifest_digest)
        self.events.emit(
            name, "pulled", f"pulled {record.reference}", digest=record.manifest_digest
        )

    def _pull_progress(self, name: str) -> Callable[[PullProgress], None]:
        """A progress callback for a pull (called from worker threads): a "pulling" event with
        the bytes so far, at most every :data:`PROGRESS_EVERY` seconds."""
        loop = asyncio.get_running_loop()
        layers: dict[str, tuple[int, int]] = {}
        last = [0.0]

        def report(step: PullProgress) -> None:
            if self.metrics is not None and step.kind == "layer":
                self.metrics.on_pull_step(step.phase, step.total)
            if step.kind != "layer":
                return
            layers[step.digest] = (step.done, step.total)
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY:
                return
            last[0] = now
            done = sum(d for d, _ in layers.values())
            total = sum(t for _, t in layers.values())
            message = f"pulling {step.reference}: {_megabytes(done)} of {_megabytes(total)} MB"
            loop.call_soon_threadsafe(
                functools.partial(
                    self.events.emit, name, "pulling", message, done=done, total=total
                )
            )

        return report

    async def _start(self, name: str, wanted_hash: str, digest: str | None = None) -> None:
        desired = self.desired.units[name]
        unit = desired.unit
        notify = None
        if unit.ready.mode == "notify":
            notify = NotifySocket(self.executor.notify_dir(name))
        started_at = self.clock()
        adhoc = self.adhoc.get(name)
        try:
            launched = await self._work(
                self.executor.start,
                name,
                unit,
                wanted_hash,
                self._all_units(),
                terminal=adhoc is not None and adhoc.tty,
                console_size=adhoc.console_size if adhoc is not None else None,
                pipes=adhoc is not None,  # relayed (to the log, and its clients): relay.py
                stdin=adhoc is not None and adhoc.interactive,
                digest=digest,
            )
        except Exception as error:
            if notify is not None:
                notify.close()
            self.history[name] = record_exit(
                self.history.get(name),
                Exit(
                    at=self.clock(),
                    hash=wanted_hash,
                    started_at=started_at,
                    ready=False,
                    stopped_for="failure",
                ),
                unit,
            )
            raise ExecutorError(f"cannot start: {error}") from error
        self.errors.pop(name, None)
        self._peers_changed()  # its name and address (or its leaving the bridge) for the others
        if launched.console is not None:
            if adhoc is not None and self.adhoc.get(name) is adhoc:
                _close_console(adhoc)
                adhoc.console = launched.console
            else:
                os.close(launched.console)
        if launched.pipes is not None:
            if adhoc is not None and self.adhoc.get(name) is adhoc:
                adhoc.relay = Relay(name, launched.pipes, hold=adhoc.attach)
                adhoc.relay.start()
            else:
                launched.pipes.close()
        previous_hash, count = self.starts.get(name, ("", 0))
        self.starts[name] = (wanted_hash, count + 1 if previous_hash == wanted_hash else 1)
        self._track(name, launched, notify=notify)
        if adhoc is not None:
            self.live[name].adhoc = adhoc
        log.info("started", unit=name, pid=launched.pid, hash=wanted_hash)
        self.events.emit(name, "started", f"started, pid {launched.pid}", pid=launched.pid)

    def _track(self, name: str, launched: Launched, *, notify: NotifySocket | None) -> None:
        live = Live(
            name=name,
            pid=launched.pid,
            record=launched.record,
            oom_events=launched.oom_events,
            ready_at=launched.record.ready_at,
            notify=notify,
        )
        self.live[name] = live
        self._by_pid[live.pid] = name
        self.watcher.watch(live.pid)
        self._arm_probes(live)
        if live.ready_at is None and live.record.unit.ready.mode == "started":
            self._ready(live)

    async def _stop(self, name: str, why: Any) -> None:
        live = self.live.get(name)
        if live is None:
            return
        unit = live.record.unit
        loop = asyncio.get_running_loop()
        live.exited = loop.create_future()
        signal_name = await self._work(self.executor.stop_signal, unit)
        timeout = unit.container.stop_timeout.total_seconds()
        killed = False
        await self._work(self.executor.signal, name, signal_name)
        ended = await _wait(live.exited, timeout)
        if ended is None:
            killed = True
            await self._work(self.executor.signal, name, "SIGKILL")
            ended = await _wait(live.exited, KILL_TIMEOUT)
        if ended is None and self.watcher.send_signal(live.pid, signal.SIGKILL):
            # The runtime's kill did not end the init (seen under load: the old process of a
            # restarted unit outlived its container): end it through our own pidfd, so a
            # replacement never runs beside it.
            log.warning("the runtime's SIGKILL did not end the init; killed it by pidfd",
                        unit=name, pid=live.pid)  # fmt: skip
            ended = await _wait(live.exited, KILL_TIMEOUT)
        await self._ended(live, ended, killed=killed, stopped_for=why)

    def _on_exits(self) -> None:
        for ended in self.watcher.collect(0):
            name = self._by_pid.pop(ended.pid, None)
            live = self.live.get(name) if name is not None else None
            if live is None:
                continue
            if live.exited is not None and not live.exited.done():
                live.exited.set_result(ended)  # a stop is waiting for it
                continue
            self.busy[live.name] = "stopping"
            task = asyncio.create_task(self._ended_by_itself(live, ended))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _ended_by_itself(self, live: Live, ended: RuntimeExit) -> None:
        try:
            await self._ended(live, ended, killed=False, stopped_for=None)
        finally:
            self.busy.pop(live.name, None)
            self.wake()

    async def _ended(
        self, live: Live, ended: RuntimeExit | None, *, killed: bool, stopped_for: Any
    ) -> None:
        self._close_probes(live)
        result = await self._work(
            self.executor.finish, live.name, ended, killed=killed, events=live.oom_events
        )
        if live.oom_events is not None:
            live.oom_events.close()
        self.live.pop(live.name, None)
        self._by_pid.pop(live.pid, None)
        exit_ = Exit(
            at=self.clock(),
            hash=live.record.hash,
            started_at=live.record.started_at,
            code=result.code,
            signal=result.signal,
            oom=result.oom,
            ready=live.ready_at is not None,
            stopped_for=stopped_for,
            digest=live.record.image_digest,
        )
        self.history[live.name] = record_exit(self.history.get(live.name), exit_, live.record.unit)
        self.exits.setdefault(live.name, deque(maxlen=10)).append(exit_)
        self.events.emit(
            live.name, "exited", describe_exit(exit_), code=result.code, signal=result.signal
        )
        if live.adhoc is not None:
            self._adhoc_ended(live.name, live.adhoc, exit_)
        log.info(
            "ended",
            unit=live.name,
            code=result.code,
            signal=result.signal,
            oom=result.oom,
            killed=killed,
            stopped_for=stopped_for,
        )

    # --- readiness and health ---------------------------------------------------------------

    def _ready(self, live: Live) -> None:
        if live.ready_at is not None:
            return
        live.ready_at = self.clock()
        log.info("ready", unit=live.name)
        self.events.emit(live.name, "ready", "ready")
        task = asyncio.create_task(self._persist_ready(live.name, live.ready_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.wake()

    async def _persist_ready(self, name: str, at: float) -> None:
        with contextlib.suppress(OSError):
            await self._work(self.executor.mark_ready, name, at)

    def _arm_probes(self, live: Live) -> None:
        unit = live.record.unit
        loop = asyncio.get_running_loop()
        if live.notify is None and unit.ready.mode == "notify":
            live.notify = NotifySocket(self.executor.notify_dir(live.name))
        if live.notify is not None:
            notify = live.notify
            loop.add_reader(notify.fileno(), self._on_notify, live, notify)
        if unit.ready.mode == "tcp" and live.ready_at is None and unit.ready.port is not None:
            live.tasks.append(asyncio.create_task(self._probe_tcp(live, unit.ready.port)))
        spec = health_spec(unit, self._image_health(unit))
        if spec is not None:
            live.tasks.append(asyncio.create_task(self._probe_health(live, spec)))

    def _image_health(self, unit: Unit) -> ImageHealthcheck | None:
        record = self.executor.image(unit)
        if record is None:
            return None
        check = self.store.image_config(record).healthcheck
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
                self._ready(live)
        self.wake()

    async def _probe_tcp(self, live: Live, port: int) -> None:
        path = Path(f"/proc/{live.pid}/ns/net")
        while live.ready_at is None:
            if await self._work(_accepts, path, port):
                self._ready(live)
                return
            await asyncio.sleep(TCP_PROBE_INTERVAL)

    async def _probe_health(self, live: Live, spec: HealthSpec) -> None:
        while True:
            await asyncio.sleep(spec.interval)
            passed = await self._work(self._run_check, live.name, spec)
            before = live.health
            live.health = judge(
                before,
                passed=passed,
                spec=spec,
                since_start=self.clock() - live.record.started_at,
            )
            live.health_history.append((self.clock(), passed))
            if live.health.unhealthy and not before.unhealthy:
                log.warning("unhealthy", unit=live.name, failures=live.health.failures)
                self.events.emit(
                    live.name, "unhealthy", f"{live.health.failures} failed checks in a row"
                )
            elif before.unhealthy and not live.health.unhealthy:
                self.events.emit(live.name, "healthy", "its health check passes again")
            if passed and live.record.unit.ready.mode == "healthy":
                self._ready(live)
            if live.health != before:
                self.wake()

    def _run_check(self, name: str, spec: HealthSpec) -> bool:
        try:
            done = self.executor.runtime.exec(name, list(spec.argv), timeout=spec.timeout)
        except Exception:  # a timeout or a vanished container: a failed check
            return False
        return done.returncode == 0

    def _close_probes(self, live: Live) -> None:
        for task in live.tasks:
            task.cancel()
        live.tasks.clear()
        if live.notify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(live.notify.fileno())
            live.notify.close()
            live.notify = None

    # --- adoption and cleanup ---------------------------------------------------------------

    async def _adopt(self) -> None:
        """Containers left running by a previous agent: same PID, exit watching re-armed."""
        for found in await asyncio.to_thread(self.executor.find_containers):
            record = found.record
            if record is not None and record.unit.container.labels.get(ADHOC_LABEL):
                await self._end_adhoc_left(found.name, found.pid if found.running else None)
                continue
            if found.running and found.pid and record is not None:
                events = await asyncio.to_thread(self.executor.watch_oom, found.pid)
                ready_at = record.ready_at
                if ready_at is None and record.unit.ready.mode == "started":
                    ready_at = record.started_at  # ready once running; the record may lag
                live = Live(
                    name=found.name,
                    pid=found.pid,
                    record=record,
                    oom_events=events,
                    ready_at=ready_at,
                    adopted_at=self.clock(),
                )
                self.live[found.name] = live
                self.starts[found.name] = (record.hash, 1)
                self._by_pid[found.pid] = found.name
                self.watcher.watch(found.pid)
                self._arm_probes(live)
                log.info("adopted", unit=found.name, pid=found.pid)
                continue
            # Ended while no agent watched (or no record to adopt it by): exit status unknown.
            result = await self._work(
                self.executor.finish, found.name, None, killed=False, events=None
            )
            if record is not None:
                self.history[found.name] = record_exit(
                    None,
                    Exit(
                        at=self.clock(),
                        hash=record.hash,
                        started_at=record.started_at,
                        code=result.code,
                        signal=result.signal,
                        oom=result.oom,
                        ready=record.ready_at is not None,
                        digest=record.image_digest,
                    ),
                    record.unit,
                )
            log.info("found ended", unit=found.name, running=found.running)

    async def _end_adhoc_left(self, name: str, pid: int | None) -> None:
        """An ad-hoc container (``quayctl run``) of a previous agent is not adopted: its request
        and its terminal died with that agent. It is killed and removed (its network goes with
        the leftovers)."""
        if pid is not None:
            with contextlib.suppress(Exception):
                await self._work(self.executor.signal, name, "SIGKILL")
            deadline = self.clock() + KILL_TIMEOUT
            while _alive(pid) and self.clock() < deadline:
                await asyncio.sleep(0.05)
        await self._work(self.executor.finish, name, None, killed=pid is not None, events=None)
        log.info("removed an ad-hoc container of the previous agent", unit=name, pid=pid)

    async def _cleanup_leftovers(self) -> None:
        try:
            snapshot = await asyncio.to_thread(load_directory, self.config_dir, self._unit_cache)
            existing = set(snapshot.units) | set(snapshot.invalid) | set(self.live)
        except QuayConfigError:
            return
        report = await asyncio.to_thread(self.network.cleanup, existing)
        for removed in report.removed:
            log.info("removed leftover", what=removed)
        for error in report.errors:
            log.warning("leftover not removed", error=error)

    async def _stop_everything(self) -> None:
        for stop in shutdown_plan(self.desired, self._observed()):
            with contextlib.suppress(Exception):
                await self._stop(stop.unit, "shutdown")

    # --- status -----------------------------------------------------------------------------

    def _status_line(self) -> str:
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

    async def _api_status(self, params: Mapping[str, Any]) -> Any:
        del params
        return {
            "agent": {
                "pid": os.getpid(),
                "version": __version__,
                "started_at": self.started_at,
                "config_dir": str(self.config_dir),
                "passes": self.passes,
                "last_pass_at": self.last_pass_at,
            },
            "units": [
                self._unit_status(status) for _, status in sorted(self.plan.statuses.items())
            ],
        }

    def _unit_status(self, status: UnitStatus) -> dict[str, Any]:
        live = self.live.get(status.name)
        desired = self.desired.units.get(status.name)
        detail = status.detail
        error = self.errors.get(status.name)
        if error and status.state in ("backoff", "waiting"):
            detail = f"{detail}; last error: {error}" if detail else error
        unit = desired.unit if desired is not None else (live.record.unit if live else None)
        exits = self.exits.get(status.name)
        return {
            "health": _health_word(live),
            "ip": self._address(status.name, unit),
            "ports": [str(spec) for spec in unit.network.ports] if unit is not None else [],
            "digest": live.record.image_digest if live else None,
            "last_exit": _exit_json(exits[-1]) if exits else None,
            "held": status.name in self.holds,
            "name": status.name,
            "state": status.state,
            "ready": status.ready,
            "detail": detail,
            "pid": live.pid if live else None,
            "started_at": live.record.started_at if live else None,
            "restarts": max(0, self.starts.get(status.name, ("", 1))[1] - 1),
            "next_attempt": status.next_attempt,
            "image": str(desired.unit.container.image) if desired else None,
            "findings": list(status.findings),
            "status_text": live.status_text if live else None,
        }

    def _address(self, name: str, unit: Unit | None) -> str | None:
        if unit is None or unit.network.mode != "bridge":
            return None
        lease = self.network.lease_file.load().get(name)
        return str(lease.ipv4) if lease is not None else None

    def _known(self, params: Mapping[str, Any]) -> str:
        name = str(params.get("name", ""))
        known = set(self.plan.statuses) | set(self.desired.units) | set(self.live)
        if name not in known:
            raise RequestError("not-found", f"no unit {name!r} (quayctl status lists them)")
        return name

    async def _api_show(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params)
        status = self.plan.statuses.get(name) or UnitStatus(name, "waiting")
        summary = self._unit_status(status)
        live = self.live.get(name)
        desired = self.desired.units.get(name)
        unit = desired.unit if desired is not None else (live.record.unit if live else None)
        container = None
        current = None
        if live is not None:
            container = {
                "id": name,
                "pid": live.pid,
                "scope": f"quay-{name}.scope",
                "started_at": live.record.started_at,
                "ready_at": live.ready_at,
            }
            found = await asyncio.to_thread(usage, name)
            if found is not None:
                current = {
                    "memory_bytes": found.memory_bytes,
                    "cpu_seconds": found.cpu_seconds,
                    "pids": found.pids,
                }
        resources = unit.resources if unit is not None else None
        return {
            **summary,
            "unit": unit.model_dump(mode="json", exclude_none=True) if unit else None,
            "container": container,
            "limits": {
                "memory": resources.memory if resources else None,
                "cpus": resources.cpus if resources else None,
                "pids": resources.pids if resources else None,
            },
            "usage": current,
            "health": None
            if live is None or not live.health_history
            else {
                "state": _health_word(live),
                "failures": live.health.failures,
                "history": [{"at": at, "passed": ok} for at, ok in live.health_history],
            },
            "exits": [_exit_json(exit_) for exit_ in self.exits.get(name, ())],
        }

    async def _api_events(self, params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Checked before the stream starts, so a bad ``since`` is a 400, not a broken stream."""
        since = params.get("since") or 0
        if not isinstance(since, int) or since < 0:
            raise RequestError("bad-request", "since must be an event number (0 or more)")
        follow = params.get("follow") in (True, "true", "1", 1)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            async for event in self.events.follow(since, follow=follow):
                yield event.to_json()

        return stream()

    async def _hold(self, name: str, *, held: bool, message: str) -> None:
        """Set or lift an operator's hold, persist it, say so (no-op when already so)."""
        if (name in self.holds) == held:
            return
        if held:
            self.holds.add(name)
        else:
            self.holds.discard(name)
        await asyncio.to_thread(self._save_holds)
        self.events.emit(name, "held" if held else "released", message)
        log.info("held" if held else "released", unit=name)

    async def _api_stop(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params)
        await self._hold(name, held=True, message="stopped by an operator (quayctl stop)")
        await self._next_pass()
        return {"unit": name, "held": True, "message": f"{name} is stopped until quayctl start"}

    async def _api_start(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params)
        await self._hold(name, held=False, message="started by an operator (quayctl start)")
        await self._next_pass()
        return {"unit": name, "held": False, "message": f"{name} starts as its unit says"}

    async def _api_restart(self, params: Mapping[str, Any]) -> Any:
        """Stop and start again now: no backoff, the hold (if any) lifted."""
        name = self._known(params)
        await self._hold(name, held=False, message="restarted by an operator")
        deadline = self.clock() + 30.0
        while name in self.busy and self.clock() < deadline:
            await self._next_pass()  # let the action in flight (a start, a stop) finish first
        if name in self.busy:
            raise RequestError("conflict", f"{name} is {self.busy[name]}; try again in a moment")
        if name in self.live:
            self._dispatch(Stop(name, "restarted by an operator (quayctl restart)", "replace"))
        else:
            history = self.history.get(name)
            if history is not None and history.last_exit is not None:
                # the backoff and the policy step aside: the last run counts as replaced
                last_exit = replace(history.last_exit, stopped_for="replace")
                self.history[name] = History(restarts=0, last_exit=last_exit)
        await self._next_pass()
        return {"unit": name, "message": f"{name} is restarting"}

    async def _api_exec(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params)
        argv = params.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise RequestError("bad-request", "argv must be a non-empty list of strings")
        if name not in self.live:
            raise RequestError("conflict", f"{name} has no running container")
        timeout = float(params.get("timeout") or 60.0)
        try:
            done = await self._work(self.executor.runtime.exec, name, argv, timeout=timeout)
        except Exception as error:
            raise RequestError("failed", str(error)) from error
        return {
            "code": done.returncode,
            "stdout": done.stdout.decode(errors="replace"),
            "stderr": done.stderr.decode(errors="replace"),
        }

    # --- ad-hoc units: quayctl run -------------------------------------------------------------

    async def _api_run(self, params: Mapping[str, Any]) -> Any:
        """An ad-hoc unit: in memory only, restart policy "no", through the normal passes.
        Answers once its container started (or the unit failed to)."""
        document = adhoc_request.unit_document(params)
        image, argv = params["image"], params.get("argv")
        tty, rm = params.get("tty", False), params.get("rm", True)
        interactive, attach = params.get("interactive", False), params.get("attach", tty)
        if not all(isinstance(flag, bool) for flag in (tty, rm, interactive, attach)):
            raise RequestError("bad-request", "tty, rm, interactive and attach are true or false")
        size = _console_size(params.get("console_size"))
        name = params.get("name") or self._run_name()
        if not isinstance(name, str) or not UNIT_NAME.fullmatch(name):
            raise RequestError("bad-request", f"{name!r} is not a unit name")
        if name in self._names() or (self.config_dir / f"{name}.toml").exists():
            raise RequestError("conflict", f"a unit {name!r} exists already")
        try:
            unit = Unit.model_validate(document)
        except ValueError as error:
            raise RequestError("bad-request", f"cannot run {image}: {error}") from None
        self._check_ports(name, unit)
        adhoc = AdHoc(
            unit=unit,
            hash=unit_hash(unit, None),
            tty=tty,
            rm=rm,
            console_size=size,
            interactive=interactive and not tty,
            attach=attach,
        )
        self.adhoc[name] = adhoc
        log.info("ad-hoc unit", unit=name, image=image, argv=argv, tty=tty, rm=rm)
        await self._next_pass()
        while name not in self.live and adhoc.exit is None:
            if self.adhoc.get(name) is not adhoc:
                raise RequestError("conflict", f"{name} was removed before it started")
            pull = self.pulls.get(name)
            failure = self.errors.get(name) or (pull.error if pull is not None else None)
            if failure and name not in self.busy:
                self._drop_adhoc(name)
                code = adhoc_request.start_failure_code(failure) or "failed"
                raise RequestError(code, f"cannot run {image}: {failure}")
            await asyncio.sleep(0.05)
        live = self.live.get(name)
        return {"unit": name, "pid": live.pid if live is not None else None, "tty": tty}

    def _names(self) -> set[str]:
        return (
            set(self.plan.statuses)
            | set(self.desired.units)
            | set(self.desired.invalid)
            | set(self.live)
            | set(self.adhoc)
            | set(self.busy)
        )

    def _run_name(self) -> str:
        while (name := RUN_NAME_PREFIX + secrets.token_hex(3)) in self._names():
            pass
        return name

    def _check_ports(self, name: str, unit: Unit) -> None:
        mine = [mapping for spec in unit.network.ports for mapping in spec.mappings]
        for other, desired in self.desired.units.items():
            for spec in desired.unit.network.ports:
                for mapping in spec.mappings:
                    if other != name and any(m.conflicts_with(mapping) for m in mine):
                        raise RequestError(
                            "conflict", f"port {spec} is published by {other} already"
                        )

    def _adhoc_ended(self, name: str, adhoc: AdHoc, exit_: Exit) -> None:
        adhoc.exit = exit_
        adhoc.ended.set()
        if adhoc.relay is not None:
            adhoc.relay.finish(_exit_json(exit_))
        if adhoc.attached:
            _close_console(adhoc)
        if not adhoc.rm or self.adhoc.get(name) is not adhoc:
            return
        awaited = adhoc.relay.awaited if adhoc.relay is not None else adhoc.console is not None
        if adhoc.attached or not awaited:
            self._drop_adhoc(name)
        else:  # its client has not attached yet: let it get the output and the status
            asyncio.get_running_loop().call_later(ATTACH_GRACE, self._drop_adhoc, name, adhoc)

    def _drop_adhoc(self, name: str, only: AdHoc | None = None) -> None:
        """Forget an ad-hoc unit: the next pass stops its container and releases its network."""
        adhoc = self.adhoc.get(name)
        if adhoc is None or (only is not None and adhoc is not only):
            return
        del self.adhoc[name]
        _close_console(adhoc)
        self.holds.discard(name)
        log.info("ad-hoc unit removed", unit=name)
        self.wake()

    async def _api_kill(self, params: Mapping[str, Any]) -> Any:
        """Send a signal to the unit's container process (``quayctl run`` forwards its own)."""
        name = self._known(params)
        signal_name = adhoc_request.signal_param(params)
        if name not in self.live:
            raise RequestError("conflict", f"{name} is not running")
        try:
            await self._work(self.executor.signal, name, signal_name)
        except Exception as error:
            raise RequestError("failed", f"cannot signal {name}: {error}") from error
        return {"unit": name, "signal": signal_name}

    async def _api_remove(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params)
        if name not in self.adhoc:
            raise RequestError(
                "conflict", f"{name} comes from a unit file: delete the file to remove it"
            )
        self._drop_adhoc(name)
        await self._next_pass()
        return {"unit": name, "message": f"{name} is being removed"}

    def _attach_socket(self) -> socket.socket:
        """``RUN_DIR/attach.sock``, mode 0600 (the API socket's start proved no other agent
        serves this run directory, so a file left there is stale)."""
        path = self.run_dir / ATTACH_SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.fchmod(listener.fileno(), 0o600)
            listener.bind(str(path))
            os.chmod(path, 0o600)
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        return listener

    async def _serve_attach(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError as error:
                log.warning("attach socket: accept failed", error=str(error))
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._attach(connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attach(self, connection: socket.socket) -> None:
        """One client: ``NAME\n`` in; ``+`` with the terminal's master (SCM_RIGHTS) out, then,
        once the container ended, its exit as a JSON line; or ``-WHY\n``."""
        loop = asyncio.get_running_loop()
        with connection:
            connection.setblocking(False)
            try:
                creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                pid, uid, _ = struct.unpack("3i", creds)
                if uid not in (0, os.geteuid()):
                    log.warning("attach refused", uid=uid, pid=pid)
                    await loop.sock_sendall(connection, b"-permission denied: needs root\n")
                    return
                name = await asyncio.wait_for(_read_line(loop, connection), 10.0)
                adhoc = self.adhoc.get(name)
                if adhoc is not None and adhoc.relay is not None:
                    terminal = adhoc.console is not None
                    if adhoc.console is not None:  # its input and size: the client's own
                        socket.send_fds(connection, [b"+"], [adhoc.console])
                    adhoc.attached = True
                    log.info("attached", unit=name, pid=pid, terminal=terminal)
                    await adhoc.relay.serve(connection, announce=not terminal)
                    if adhoc.rm and adhoc.exit is not None:  # it ended before it attached
                        self._drop_adhoc(name, adhoc)
                    return
                if adhoc is None or adhoc.console is None:
                    why = "no such ad-hoc unit" if adhoc is None else "it has no terminal"
                    await loop.sock_sendall(connection, f"-{name}: {why}\n".encode())
                    return
                socket.send_fds(connection, [b"+"], [adhoc.console])
                adhoc.attached = True
                log.info("attached", unit=name, pid=pid)
                await adhoc.ended.wait()
                _close_console(adhoc)
                ended = _exit_json(adhoc.exit) if adhoc.exit is not None else {}
                await loop.sock_sendall(connection, json.dumps(ended).encode() + b"\n")
            except (OSError, TimeoutError, ValueError) as error:
                log.info("attach ended", error=str(error) or type(error).__name__)

    async def _api_image_pull(self, params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """An operator's pull (quayctl image pull): progress lines, then the image."""
        request = image_pulls.parse_request(params, self.executor.state_dir)
        log.info("pulling for an operator", image=request.reference)

        def pulled() -> None:
            log.info("image pulled", image=request.reference, requested_by="api")
            self.wake()  # a unit waiting for this image starts now

        return image_pulls.pull_stream(request, self.executor, self._work, pulled)

    async def _api_reload(self, params: Mapping[str, Any]) -> Any:
        del params
        passes = await self._next_pass()
        return {"passes": passes}

    async def _next_pass(self) -> int:
        """Wake the loop and wait until a pass has planned with what the caller changed."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pass_waiters.append(waiter)
        self.wake()
        return await waiter

    async def _api_plan_dir(self, params: Mapping[str, Any]) -> Any:
        """A dry run: what the agent would do if ``config_dir`` were its config directory
        (Ansible: render into a staging directory, ask, then move it into place)."""
        directory = params.get("config_dir")
        if not isinstance(directory, str) or not directory.startswith("/"):
            raise RequestError("bad-request", "config_dir must be an absolute path")
        try:
            snapshot = await asyncio.to_thread(load_directory, Path(directory))
        except QuayConfigError as error:
            raise RequestError("bad-request", str(error)) from error
        desired = self._preview(snapshot)
        preview = plan(desired, self._observed(desired), self.clock())
        return {
            "config_dir": directory,
            "actions": [_action_json(action) for action in preview.actions],
            "statuses": {
                name: {"state": status.state, "detail": status.detail}
                for name, status in preview.statuses.items()
            },
            "findings": [str(finding) for finding in snapshot.findings],
        }

    def _preview(self, snapshot: ConfigSnapshot) -> Desired:
        """Desired from ``snapshot`` as :meth:`_desired` builds it, changing nothing."""
        present = self.executor.present_images()
        units: dict[str, DesiredUnit] = {}
        for name, loaded in snapshot.units.items():
            digest = None
            if (
                loaded.unit.image.pull == "always"
                and loaded.unit.update.policy == "off"
                and self.executor.reference(loaded.unit) in present
            ):
                record = self.executor.image(loaded.unit)
                digest = record.manifest_digest if record is not None else None
            units[name] = DesiredUnit(name, loaded.unit, unit_hash(loaded.unit, digest))
        invalid: dict[str, tuple[str, ...]] = {}
        self._keep_last_good(snapshot, units, invalid)
        held = frozenset(name for name in self.holds if name in units)
        return Desired(units=units, invalid=invalid, held=held)

    async def _api_plan(self, params: Mapping[str, Any]) -> Any:
        del params
        return {
            "actions": [_action_json(action) for action in self.plan.actions],
            "wake_at": self.plan.wake_at,
        }


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f}"


def _action_json(action: Action) -> dict[str, Any]:
    return {
        "kind": type(action).__name__.lower(),
        "unit": action.unit,
        "reason": action.reason,
        **({"why": action.why} if isinstance(action, Stop) else {}),
    }


def _close_console(adhoc: AdHoc) -> None:
    if adhoc.console is not None:
        with contextlib.suppress(OSError):
            os.close(adhoc.console)
        adhoc.console = None


def _console_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in value)
    ):
        return (value[0], value[1])
    raise RequestError("bad-request", "console_size must be [rows, columns]")


async def _read_line(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await loop.sock_recv(connection, 256)
        if not chunk:
            break
        data += chunk
        if len(data) > 256:
            raise ValueError("the line is too long")
    return data.decode(errors="replace").strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _trim_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            trim_log_file(path, LOG_FILE_MAX)


def _health_word(live: Live | None) -> str | None:
    if live is None or not live.health_history:
        return None
    if live.health.unhealthy:
        return "unhealthy"
    return "healthy" if live.health.healthy else "starting"


def _exit_json(exit_: Exit) -> dict[str, Any]:
    return {
        "at": exit_.at,
        "code": exit_.code,
        "signal": exit_.signal,
        "oom": exit_.oom,
        "description": describe_exit(exit_),
    }


async def _wait(future: asyncio.Future[RuntimeExit], timeout: float) -> RuntimeExit | None:
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        return None


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


def _watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), when it is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
