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


# --- what the planner decides ----------------------------------------------------------------


@dataclass(frozen=True)
class Pull:
    unit: str
    reference: str
    reason: str


@dataclass(frozen=True)
class Start:
    """Create and start a container for ``unit`` at ``hash`` (removing an ended one first)."""

    unit: str
    hash: str
    reason: str


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


Action = Pull | Start | Stop | Remove

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
