"""The agent's Prometheus metrics (docs/metrics.md lists them).

The loop never waits for a scrape, and a scrape never touches the loop's state: at the end of
each pass the loop **publishes** a :class:`Snapshot` (frozen values, made from the same data the
status API reads, in well under a millisecond for 100 units), and the metrics server's thread
builds the exposition from the latest one at scrape time (:class:`UnitCollector`), reading each
running container's cgroup and the veth counters itself (:mod:`quayd.isolation.cgroup_stats`,
:mod:`quayd.net.counters`). Replacing the snapshot is one attribute store, atomic for the thread
that reads it.

What only events tell (pass durations, pulls, handled API requests, the start latency) is counted
in prometheus_client's own thread-safe instruments as it happens. Per-unit series disappear with
their unit.
"""

from __future__ import annotations

import inspect
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from quayd import __version__
from quayd.agent.api import HTTP_STATUS, Handler, RequestError
from quayd.isolation.cgroup_stats import CgroupReader, CgroupStats
from quayd.net.counters import Traffic, read_traffic
from quayd.reconcile.model import Exit, State

if TYPE_CHECKING:
    from quayd.agent.control import Control, UnitView
    from quayd.agent.events import Event

STATES: tuple[str, ...] = get_args(State)
"""Every state a unit can be in: ``quay_unit_state`` has one series per state (0 or 1)."""
HEALTH_WORDS = ("starting", "healthy", "unhealthy")
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OPENMETRICS_EOF = b"# EOF\n"
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class UnitSample:
    """One unit as the status API shows it, at the end of a pass."""

    name: str
    state: str
    ready: bool
    health: str | None = None
    """``starting``, ``healthy``, ``unhealthy``; None when the unit has no health check."""
    restarts: int = 0
    """Restarts since the agent started (monotonic; a unit's change is no restart)."""
    oom_kills: int = 0
    """Containers of the unit that the OOM killer ended, since the agent started."""
    last_exit_code: int | None = None
    image: str | None = None
    digest: str | None = None
    running: bool = False
    """Whether a container runs for it now (then its cgroup is read at scrape time)."""


@dataclass(frozen=True)
class Snapshot:
    units: tuple[UnitSample, ...] = ()
    ready: bool = False
    """The agent finished its first pass (systemd's READY=1 comes with it)."""
    last_pass_at: float | None = None


def exit_code(exit_: Exit) -> int | None:
    """The exit status; a signal's death as 128 + its number (what a shell reports)."""
    if exit_.code is not None:
        return exit_.code
    if exit_.signal is not None:
        try:
            return 128 + int(signal.Signals[exit_.signal])
        except KeyError:
            return None
    return None


class RestartCounter:
    """Restarts per unit from the status API's ``starts`` (the unit hash a container runs and
    how often one of that hash started): a count that grows within one hash is a restart; a new
    hash is a replacement, not a restart. Monotonic, as a Prometheus counter must be."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, int]] = {}
        self.totals: dict[str, int] = {}

    def update(self, starts: Mapping[str, tuple[str, int]]) -> dict[str, int]:
        for name, (unit_hash, count) in starts.items():
            before_hash, before = self._seen.get(name, (unit_hash, 1))
            if before_hash == unit_hash and count > before:
                self.totals[name] = self.totals.get(name, 0) + count - before
            self._seen[name] = (unit_hash, count)
        return dict(self.totals)

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self._seen.pop(name, None)
            self.totals.pop(name, None)


class OomCounter:
    """OOM kills that ended a unit's container, from the exits the status API lists (the
    container's own cgroup counter goes with its scope, often before a scrape sees it)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self.totals: dict[str, int] = {}

    def update(self, exits: Mapping[str, Iterable[Exit]]) -> dict[str, int]:
        for name, ended in exits.items():
            last = self._last.get(name, float("-inf"))
            for exit_ in ended:
                if exit_.at > last:
                    last = exit_.at
                    if exit_.oom:
                        self.totals[name] = self.totals.get(name, 0) + 1
            self._last[name] = last
        return dict(self.totals)

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self._last.pop(name, None)
            self.totals.pop(name, None)


class AgentMetrics:
    """The registry one agent serves, and what the loop tells it (:meth:`publish`)."""

    def __init__(
        self,
        *,
        read_cgroup: Callable[[str], CgroupStats | None] | None = None,
        read_traffic: Callable[[Iterable[str]], Mapping[str, Traffic]] = read_traffic,
    ) -> None:
        # No ``_created`` series beside each counter and histogram: they double the output
        # (and the scrape's cost) for a start time process_start_time_seconds already gives.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.snapshot = Snapshot()
        self.pass_seconds = Histogram(
            "quay_agent_pass_duration_seconds",
            "Seconds one reconcile pass took (load, plan, dispatch).",
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.passes = Counter("quay_agent_passes", "Reconcile passes run.", registry=self.registry)
        self.pulls = Counter(
            "quay_agent_pulls",
            "Image pulls for units, by result (ok, failed).",
            ["result"],
            registry=self.registry,
        )
        self.pulled_bytes = Counter(
            "quay_agent_pulled_bytes",
            "Layer bytes downloaded by pulls (layers already stored are not counted).",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "quay_api_requests",
            "Control API requests answered by a handler, by handler and HTTP status.",
            ["route", "code"],
            registry=self.registry,
        )
        # Of all units together: a histogram per unit would be 14 series for each (1,400 of a
        # 100-unit host's 3,500, and 40 % of a scrape's cost); quay_unit_image_info and the
        # events say which unit was slow.
        self.start_seconds = Histogram(
            "quay_unit_start_duration_seconds",
            "Seconds from a container's start to its readiness, of every unit.",
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.updates = Counter(
            "quay_unit_updates",
            "Updates to a new image digest confirmed (the new container came up ready).",
            ["unit"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "quay_unit_rollbacks",
            "Updates that failed and were rolled back to the previous digest.",
            ["unit"],
            registry=self.registry,
        )
        ProcessCollector(namespace="", registry=self.registry)  # RSS, open fds, CPU seconds
        self.registry.register(UnitCollector(self, read_cgroup or CgroupReader(), read_traffic))
        self._restarts = RestartCounter()
        self._ooms = OomCounter()
        self._timed: dict[str, float] = {}
        """Per unit: the start whose latency was observed (one observation per start)."""
        self._events_seen = 0
        self._updated: set[str] = set()
        """Units with update series (only those that had an update or a rollback)."""
        self._lock = threading.Lock()
        self._rendered: dict[str, tuple[tuple[UnitSample, ...], bytes]] = {}
        """Per content type (choose_encoder makes a new encoder each time): the units last
        rendered, and their exposition."""
        self._since = 0.0

    # --- from the loop ---------------------------------------------------------------------------

    def publish_agent(self, control: Control, pass_seconds: float) -> None:
        """After a pass: count it and publish what the agent holds now (the loop's thread)."""
        events = control.events.since(self._events_seen)
        self._events_seen = control.events.last_seq
        views = control.units()
        snapshot = snapshot_of(control, views, self._restarts, self._ooms)
        self.publish(snapshot, events, pass_seconds)
        self._time_starts(views, control.info().started_at)

    def publish(
        self,
        snapshot: Snapshot,
        events: Iterable[Event] = (),
        pass_seconds: float | None = None,
    ) -> None:
        if pass_seconds is not None:
            self.pass_seconds.observe(pass_seconds)
            self.passes.inc()
        for event in events:
            if event.kind == "pulled":
                self.pulls.labels("ok").inc()
            elif event.kind == "pull-failed":
                self.pulls.labels("failed").inc()
            elif event.kind in ("updated", "update-failed"):
                counter = self.updates if event.kind == "updated" else self.rollbacks
                counter.labels(event.unit).inc()
                self._updated.add(event.unit)
        names = {unit.name for unit in snapshot.units}
        for name in set(self._timed) - names:
            del self._timed[name]
        for name in self._updated - names:  # a removed unit's update series go with it
            self.updates.remove(name)
            self.rollbacks.remove(name)
            self._updated.discard(name)
        self._restarts.forget(set(self._restarts.totals) - names)
        self._ooms.forget(set(self._ooms.totals) - names)
        if snapshot.units == self.snapshot.units:  # the same units: keep their rendering
            snapshot = replace(snapshot, units=self.snapshot.units)
        self.snapshot = snapshot

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition the scraper's ``Accept`` asks for, and its content type (the
        metrics server's thread). The per-unit families are rendered once per set of units
        (:class:`UnitFamilies`, most of a 100-unit scrape), the rest at every scrape."""
        encoder, content_type = choose_encoder(accept)
        live = encoder(self.registry)
        units = self.snapshot.units
        with self._lock:
            cached = self._rendered.get(content_type)
        if cached is None or cached[0] is not units:
            cached = (units, encoder(UnitFamilies(units)))
            with self._lock:
                self._rendered[content_type] = cached
        if content_type.startswith("application/openmetrics-text"):
            live = live.removesuffix(OPENMETRICS_EOF)  # one EOF, at the end of it all
        return live + cached[1], content_type

    def _time_starts(self, views: Iterable[UnitView], agent_started: float) -> None:
        for view in views:
            name, started, ready = view.name, view.started_at, view.ready_at
            # Adopted containers started before this agent: their latency was another's.
            if started is None or ready is None:
                continue
            if started < agent_started or self._timed.get(name) == started:
                continue
            self._timed[name] = started
            self.start_seconds.observe(max(0.0, ready - started))

    def on_pull_step(self, phase: str, size: int) -> None:
        """A pull's progress (worker threads): a layer's bytes once it downloaded."""
        if phase == "downloaded":
            self.pulled_bytes.inc(size)

    def counted(self, route: str, handler: Handler) -> Handler:
        """``handler`` counting its answers in ``quay_api_requests_total``."""

        async def call(params: dict[str, Any]) -> Any:
            try:
                result = handler(params)
                if inspect.isawaitable(result):
                    result = await result
            except RequestError as error:
                self.api_requests.labels(route, str(HTTP_STATUS.get(error.code, 400))).inc()
                raise
            except Exception:
                self.api_requests.labels(route, "500").inc()
                raise
            self.api_requests.labels(route, "200").inc()
            return result

        return call


def count_requests(
    metrics: AgentMetrics | None, handlers: dict[str, Handler]
) -> dict[str, Handler]:
    """The API's handlers, each counted in ``quay_api_requests_total`` when metrics are on."""
    if metrics is None:
        return handlers
    return {name: metrics.counted(name, handler) for name, handler in handlers.items()}


def snapshot_of(
    control: Control, views: Iterable[UnitView], restarts: RestartCounter, ooms: OomCounter
) -> Snapshot:
    """The status API's view of every unit, as plain values (the loop's thread)."""
    totals = restarts.update(control.starts())
    oom_totals = ooms.update(control.exits())
    units = tuple(
        UnitSample(
            name=view.name,
            state=view.state,
            ready=view.ready,
            health=view.health,
            restarts=totals.get(view.name, 0),
            oom_kills=oom_totals.get(view.name, 0),
            last_exit_code=exit_code(view.exits[-1]) if view.exits else None,
            image=view.image,
            digest=view.digest,
            running=view.running,
        )
        for view in views
    )
    info = control.info()
    return Snapshot(units=units, ready=info.passes > 0, last_pass_at=info.last_pass_at)


class UnitFamilies(Collector):
    """The per-unit families of one snapshot's units (what only a pass changes)."""

    def __init__(self, units: tuple[UnitSample, ...]) -> None:
        self._units = units

    def collect(self) -> Iterator[Metric]:
        yield from unit_families(self._units)


class UnitCollector(Collector):
    """Builds the per-container and agent families from the latest snapshot, in the scraping
    thread: each running container's cgroup and veth are read at every scrape."""

    def __init__(
        self,
        metrics: AgentMetrics,
        read_cgroup: Callable[[str], CgroupStats | None],
        read_traffic: Callable[[Iterable[str]], Mapping[str, Traffic]],
    ) -> None:
        self._metrics = metrics
        self._read_cgroup = read_cgroup
        self._read_traffic = read_traffic

    def describe(self) -> Iterable[Metric]:
        return ()  # built at scrape time; the registry needs no names in advance

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics.snapshot
        yield from agent_families(snapshot)
        running = [unit.name for unit in snapshot.units if unit.running]
        stats = {name: self._read_cgroup(name) for name in running}
        yield from container_families(stats, self._read_traffic(running))


def agent_families(snapshot: Snapshot) -> Iterator[Metric]:
    build = InfoMetricFamily("quay_build", "quayd's version.", labels=["version", "python"])
    build.add_metric([], {"version": __version__, "python": sys.version.split()[0]})
    yield build
    yield GaugeMetricFamily(
        "quay_agent_ready", "1 once the agent's first pass ran.", value=int(snapshot.ready)
    )
    if snapshot.last_pass_at is not None:
        yield GaugeMetricFamily(
            "quay_agent_last_pass_timestamp_seconds",
            "When the last pass ran (Unix time).",
            value=snapshot.last_pass_at,
        )


def unit_families(units: Iterable[UnitSample]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "quay_unit_state",
        "1 for the state the unit is in, 0 for the others.",
        labels=["unit", "state"],
    )
    ready = GaugeMetricFamily("quay_unit_ready", "1 when the unit is ready.", labels=["unit"])
    health = GaugeMetricFamily(
        "quay_unit_health",
        "1 for the unit's health verdict, 0 for the others (units with a health check).",
        labels=["unit", "health"],
    )
    restarts = CounterMetricFamily(
        "quay_unit_restarts", "Restarts since the agent started.", labels=["unit"]
    )
    ooms = CounterMetricFamily(
        "quay_unit_oom_kills",
        "Containers of the unit the OOM killer ended, since the agent started.",
        labels=["unit"],
    )
    exit_codes = GaugeMetricFamily(
        "quay_unit_last_exit_code",
        "Exit status of the unit's last container (128 + N for signal N).",
        labels=["unit"],
    )
    image = InfoMetricFamily(
        "quay_unit_image", "The image a unit runs, and its digest.", labels=["unit"]
    )
    for unit in units:
        for name in STATES:
            state.add_metric([unit.name, name], int(unit.state == name))
        ready.add_metric([unit.name], int(unit.ready))
        if unit.health is not None:
            for word in HEALTH_WORDS:
                health.add_metric([unit.name, word], int(unit.health == word))
        restarts.add_metric([unit.name], unit.restarts)
        ooms.add_metric([unit.name], unit.oom_kills)
        if unit.last_exit_code is not None:
            exit_codes.add_metric([unit.name], unit.last_exit_code)
        if unit.image is not None:
            image.add_metric([unit.name], {"image": unit.image, "digest": unit.digest or ""})
    yield from (state, ready, health, restarts, ooms, exit_codes, image)


def container_families(
    stats: Mapping[str, CgroupStats | None], traffic: Mapping[str, Traffic]
) -> Iterator[Metric]:
    def family(kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, text: str) -> Any:
        return kind(name, text, labels=["unit"])

    cpu = family(CounterMetricFamily, "quay_container_cpu_seconds", "CPU time of the container.")
    memory = family(GaugeMetricFamily, "quay_container_memory_bytes", "Memory charged now.")
    peak = family(
        GaugeMetricFamily, "quay_container_memory_peak_bytes", "Most memory charged at once."
    )
    ooms = family(
        CounterMetricFamily, "quay_container_oom_kills", "Processes the OOM killer ended."
    )
    pids = family(GaugeMetricFamily, "quay_container_pids", "Processes and threads now.")
    rx = family(
        CounterMetricFamily, "quay_container_network_receive_bytes", "Bytes the container received."
    )
    tx = family(
        CounterMetricFamily, "quay_container_network_transmit_bytes", "Bytes the container sent."
    )
    for name, found in sorted(stats.items()):
        if found is None:
            continue  # ended between the pass and the scrape
        for target, value in (
            (cpu, found.cpu_seconds),
            (memory, found.memory_bytes),
            (peak, found.memory_peak_bytes),
            (ooms, found.oom_kills),
            (pids, found.pids),
        ):
            if value is not None:
                target.add_metric([name], value)
    for name, moved in sorted(traffic.items()):
        rx.add_metric([name], moved.rx_bytes)
        tx.add_metric([name], moved.tx_bytes)
    yield from (cpu, memory, peak, ooms, pids, rx, tx)
