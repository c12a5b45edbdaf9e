"""The plain data the planner reads and writes: no I/O, no project imports beyond ``units``.

Time is a float of seconds on one clock the agent chooses (``time.time()``: exits recorded
before an agent restart stay comparable after it). The planner only compares and adds times.

*Desired* is what the config directory says (with the last good version of a unit whose file
became invalid). *Observed* is what the live system says, plus the little the agent remembers
between passes (:class:`History`: restart counts for backoff, the last exit) and what is in
flight (:attr:`Observed.busy`). :func:`quayd.reconcile.plan.plan` turns both into
:class:`Action` values (each with a reason a person can read: they are what ``quayctl plan``
shows) and one :class:`UnitStatus` per unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from quayd.units.model import Unit

# --- desired ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DesiredUnit:
    name: str
    unit: Unit
    """The effective unit (drop-ins merged, defaults filled)."""
    hash: str
    """Canonical hash of the effective unit: a container runs one hash; another hash means the
    unit changed and the container is replaced."""
    findings: tuple[str, ...] = ()
    """Errors of the unit's *current* file when ``unit`` is its last good version (the file
    became invalid): what keeps running is the last good version, and status shows these."""


@dataclass(frozen=True)
class Desired:
    units: Mapping[str, DesiredUnit]
    invalid: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Units whose file is invalid and which have no last good version: nothing runs for them."""
    held: frozenset[str] = frozenset()
    """Units an operator stopped (``quayctl stop``): kept stopped until ``quayctl start``."""


# --- observed --------------------------------------------------------------------------------

StopReason = Literal["replace", "remove", "failure", "shutdown", "hold"]


@dataclass(frozen=True)
class Exit:
    """How a container's run ended."""

    at: float
    hash: str
    """The unit hash that container ran."""
    started_at: float
    code: int | None = None
    """Exit status; None when killed by a signal or unknown (it ended while quayd was down)."""
    signal: str | None = None
    oom: bool | None = None
    ready: bool = True
    """Whether it had become ready before it ended (an exit before ready is a failure)."""
    stopped_for: StopReason | None = None
    """Set when quay stopped it: "replace" (the unit changed, or an operator's restart),
    "remove" (the unit went), "failure" (not ready in time, unhealthy), "shutdown" (quay told to
    stop everything), "hold" (an operator's ``quayctl stop``). None: it ended by itself."""
    digest: str | None = None
    """The image (manifest) digest it ran, when known: an update's rollback is decided on it."""

    @property
    def known(self) -> bool:
        return self.code is not None or self.signal is not None


@dataclass(frozen=True)
class Container:
    """A unit's live container (created or running; an ended one is an :class:`Exit`)."""

    name: str
    hash: str
    started_at: float
    pid: int | None = None
    ready: bool = False
    """The unit's readiness is met (``ready.mode``): started, READY=1, first healthy check,
    or the port accepts connections. The executor's probes set it."""
    ready_at: float | None = None
    unhealthy: bool = False
    """Health checks failed ``retries`` times in a row after ``start_period``."""
    status_text: str | None = None
    """The last STATUS= the container sent through its notify socket."""
    unit: Unit | None = None
    """The unit it runs (from its record): plan reasons say what changed since."""
    digest: str | None = None
    """The image (manifest) digest it runs (from its record)."""
    watched_from: float | None = None
    """When this agent began watching it, if later than its start (adopted after an agent
    restart). No agent saw it between the two: its readiness deadline counts from here."""

    @property
    def ready_deadline_from(self) -> float:
        """The instant ``ready.timeout`` counts from: the start, or the adoption if later."""
        return max(self.started_at, self.watched_from or self.started_at)


@dataclass(frozen=True)
class ImageState:
    present: bool = False
    """The unit's image is in the local store."""
    pulling: bool = False
    checked_at: float | None = None
    """When a pull (which checks the registry for a new digest) last succeeded."""
    error: str | None = None
    """The last pull failure, kept until a pull succeeds."""
    retry_at: float | None = None
    """After a failed pull, no new pull before this time (capped backoff)."""


@dataclass(frozen=True)
class History:
    """What the agent remembers of a unit between passes (in memory: a restart of the agent
    starts each unit's backoff afresh, which is the safe direction)."""

    restarts: int = 0
    """Consecutive runs that ended within ``restart.reset_after`` of their start (each one
    doubles the next backoff); back to 0 after a run that lasted longer."""
    last_exit: Exit | None = None


@dataclass(frozen=True)
class UpdateRecord:
    """What the agent persists of a unit's ``[update]`` (written atomically before each step):
    only what the live system cannot tell after a restart or a power cut."""

    current: str | None = None
    """The digest confirmed to run (ready). None: not known yet (the unit's first image)."""
    target: str | None = None
    """The digest being rolled out and not yet confirmed; while it is set, ``current`` is the
    previous digest, kept in the store for a rollback."""
    bad: str | None = None
    """A digest that was rolled back: not tried again while the tag points at it."""
    bad_reason: str = ""
    """Why it was rolled back, for status: "not ready within 30s"."""
    forced: bool = False
    """An operator asked for this update now (``quayctl update NAME``): the window does not
    hold it back. Persisted like the rest, so an agent crash does not lose the request; cleared
    when the update is confirmed or rolled back."""


@dataclass(frozen=True)
class UpdateState:
    """A unit's update as the agent observes it (for units with ``[update] policy`` set)."""

    record: UpdateRecord = UpdateRecord()
    offered: str | None = None
    """The digest the tag points at: the registry's at the last check (``registry``), the
    store's (``local``). None: not checked yet."""
    stored: frozenset[str] = frozenset()
    """Digests of the unit's image repository present in the store."""
    check_error: str | None = None
    """The last check of the registry failed (unreachable, refused): no update is decided."""
    fetching: bool = False
    """The background pull of ``offered`` is in flight."""
    fetch_error: str | None = None
    """The last pull of an update's digest failed (the background one, or the pull of a
    target after its container was stopped): no new update before ``fetch_retry_at``."""
    fetch_retry_at: float | None = None
    due: bool = True
    """The update window is open now (or ``quayctl update`` asked for it)."""
    opens_at: float | None = None
    """When the window opens next, while it is closed."""


Busy = Literal["pulling", "starting", "stopping", "removing"]


@dataclass(frozen=True)
class Observed:
    containers: Mapping[str, Container] = field(default_factory=dict)
    """Live containers by unit name (at most one per unit)."""
    images: Mapping[str, ImageState] = field(default_factory=dict)
    """Per unit: its image (keyed by unit name; a missing entry means not present)."""
    history: Mapping[str, History] = field(default_factory=dict)
    busy: Mapping[str, Busy] = field(default_factory=dict)
    """Units with an action still being executed: the planner gives them no new one."""
    leftovers: frozenset[str] = frozenset()
    """Units that are not desired but still have something on the host (network attachment,
    lease, container directory) to remove."""
    updates: Mapping[str, UpdateState] = field(default_factory=dict)
    """Per unit with ``[update] policy`` other than "off"; a missing entry: nothing known yet."""
    restarts: Mapping[str, float] = field(default_factory=dict)
    """Operators' restarts not carried out yet: per unit, the start time of the container to
    replace (persisted, so one accepted just before an agent crash is carried out after it)."""


# --- what the planner decides ----------------------------------------------------------------


@dataclass(frozen=True)
class Pull:
    unit: str
    reference: str
    reason: str
    digest: str | None = None
    """Pull this digest of the reference's repository (an update's target, or the previous
    digest for a rollback); None: what the reference points at."""


@dataclass(frozen=True)
class Start:
    """Create and start a container for ``unit`` at ``hash`` (removing an ended one first)."""

    unit: str
    hash: str
    reason: str
    digest: str | None = None
    """Run this image digest (a unit with ``[update]``); None: the store's for the reference."""


@dataclass(frozen=True)
class Stop:
    """Stop the unit's container (stop signal, timeout, SIGKILL) and remove it; volumes stay."""

    unit: str
    reason: str
    why: StopReason


@dataclass(frozen=True)
class Remove:
    """Remove what a unit that no longer exists left: network attachment, lease, directory."""

    unit: str
    reason: str


@dataclass(frozen=True)
class Fetch:
    """Pull ``digest`` in the background for an update; the running container is not touched."""

    unit: str
    reference: str
    digest: str
    reason: str


@dataclass(frozen=True)
class Update:
    """Record ``target`` as being rolled out (``previous`` kept for a rollback), then stop the
    running container (if any); ``remove_previous``: remove its image first (small disks)."""

    unit: str
    previous: str | None
    target: str
    reason: str
    remove_previous: bool = False


@dataclass(frozen=True)
class Rollback:
    """Record ``bad`` as failed (None: not the image's fault, as a failed pull) and ``previous``
    as what runs, then stop the container of the failed digest, if it is still live."""

    unit: str
    previous: str
    bad: str | None
    reason: str


@dataclass(frozen=True)
class Confirm:
    """The update to ``digest`` is ready: record it as current (the previous image may go)."""

    unit: str
    digest: str
    reason: str


Action = Pull | Start | Stop | Remove | Fetch | Update | Rollback | Confirm

State = Literal[
    "invalid",  # file invalid, nothing runs for it
    "waiting",  # for a dependency, or for a pull to be retried
    "pulling",
    "starting",  # running, not ready yet
    "running",  # ready
    "stopping",
    "exited",  # ended and not restarted (policy)
    "stopped",  # stopped by an operator (quayctl stop) until quayctl start
    "backoff",  # ended; restarts at next_attempt
    "removing",
]


@dataclass(frozen=True)
class UnitStatus:
    name: str
    state: State
    detail: str = ""
    """One line for a person: "waiting for db to be ready", "exited 1; restarting at 12:00:05"."""
    next_attempt: float | None = None
    findings: tuple[str, ...] = ()
    """Errors of the current file (also while the last good version runs)."""
    ready: bool = False


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    statuses: Mapping[str, UnitStatus]
    wake_at: float | None = None
    """The earliest time a new pass is needed even if nothing happens (a backoff ends, a
    readiness deadline passes); None: only events matter."""
