"""The planner: ``plan(desired, observed, now) -> Plan``, pure.

No I/O and no clock (``now`` is an argument); the same inputs always give the same plan (units
are looked at in a fixed order, ties broken by name). Like the kubelet's ``computePodActions``,
each pass compares what should run with what runs and proposes the next step: at most ONE action
per unit per pass (per-unit work is serialized: the executor runs it, marks the unit busy, and the
next pass continues from what it observes then). Every action carries a ``reason`` a person can
read (``quayctl plan`` shows them), and every unit gets one :class:`UnitStatus`.

State table, per unit (first matching row wins; the action, then the ``[state]`` shown)::

    busy (an action in flight)             none          [pulling|starting|stopping|removing]
    file invalid, no last good version     none          [invalid]  even if a container runs
    file removed, container live           Stop remove   [stopping]
    file removed, leftovers on the host    Remove        [removing]
    held by an operator, container live    Stop hold     [stopping]
    held by an operator                    none          [stopped]   until quayctl start

    live container, other hash             Stop replace  [stopping]  # RUNNING -> STOPPING
    live, not ready at the deadline        Stop failure  [stopping]  # STARTING -> STOPPING
    live, unhealthy, on_unhealthy=restart  Stop failure  [stopping]  # RUNNING -> STOPPING
    live, not ready yet                    none          [starting]  wake at the deadline
    live, ready (healthy or not)           none          [running]   # STARTING -> RUNNING

    no container, stopped for shutdown     none          [exited]
    no container, policy says no restart   none          [exited]    # EXITED stays EXITED
    no container, backoff not over         none          [backoff]   wake at its end
    no container, to (re)start:                                      # BACKOFF -> STARTING
      its image being pulled               none          [pulling]
      pull failed, retry_at not reached    none          [waiting]   wake at retry_at
      image to pull                        Pull          [pulling]
      a required unit not ready            none          [waiting]
      otherwise                            Start         [starting]

A unit with ``[update] policy`` set takes the rows of :mod:`quayd.reconcile.update` first (for a
live container: after "other hash"; without one: before the restart policy), and starts the digest
the update wants (``Start.digest``, pulled first when it is not stored).

A container that ends goes from ``[running]``/``[starting]`` to an exit the executor records
(:func:`record_exit`); the next pass takes the "no container" rows.

Choices (where ``docs/units.md`` is silent: what systemd, Docker or the kubelet would do):

* **Which exits the restart policy decides.** Only exits the container made by itself and
  quay's ``failure`` stops (not ready in time, unhealthy). A container stopped because its unit
  changed (``replace``) or its file was removed (``remove``, then the file came back) is not an
  exit in the restart sense: the (new) unit starts at once, with no backoff. A container stopped
  for ``shutdown`` stays exited, whatever the policy, for as long as this agent runs (as after
  ``docker stop`` or ``systemctl stop``); the agent's next start has no History and starts it.
* **is_failure.** quay's own ``replace``/``remove``/``shutdown`` stops are never failures (how
  the process answers the stop signal says nothing about its health); ``failure`` stops always
  are. Otherwise: a non-zero status, a signal, an OOM kill, or an exit before ready. An exit whose
  status is unknown (it ended while quayd was down) counts as a failure, so ``on-failure``
  restarts it: on an unattended edge device, running one time too many is the safe side.
* **Failure stops follow the policy.** Not ready in time or unhealthy with ``on_unhealthy =
  "restart"`` stops the container as failed; whether it starts again is the restart policy's
  (``"no"`` leaves it exited, as the kubelet with ``restartPolicy: Never`` after a liveness kill).
* **Backoff.** ``restart.backoff`` doubled per consecutive restart, capped at ``backoff_max``;
  never gives up (no maximum number of restarts).
* **Readiness deadline.** A container not ready *at* ``started_at + ready.timeout`` has failed
  (``>=``: the pass woken at the deadline acts on it instead of needing another one). A
  container adopted after an agent restart, not ready yet, gets its whole ``ready.timeout`` from
  the adoption: no agent watched it meanwhile (its READY=1 or its probes went unseen), and the
  agent's own downtime is not the container's failure (as a kubelet restart re-probes pods).
* **Images.** ``pull = "missing"`` never pulls a stored image (an offline boot must work).
  ``pull = "always"`` pulls before each (re)start: when the image was not checked since the last
  exit. If that pull fails and the image is stored, the container starts with the stored image
  (an edge device must heal offline); the next (re)start after ``retry_at`` tries the registry
  again. An image pinned by digest never changes, so ``always`` has nothing to check for it. The
  image is pulled even while a required unit is not ready yet (the pull overlaps the wait, as
  ``docker compose up`` pulls everything first); only the start waits.
* **Dependencies.** ``requires`` gates only *starting*: a unit starts once every unit it
  requires is desired and ready *this pass* (statuses are computed in dependency order, so a
  dependency being replaced or restarted this pass holds its dependents back). When a dependency
  restarts, its running dependents keep running (systemd's ``Wants=``/``After=``, not
  ``BindsTo=``). A busy unit does not count as ready until the pass after its action completes.
* **Invalid files.** quay never stops anything on bad input: a unit whose file is invalid and
  has no last good version is reported ``invalid`` and whatever runs or remains for it is left
  alone. With a last good version, that version keeps running (and restarting) as before, and
  the status carries the findings.
* **Times in details** are relative to ``now`` ("restarting in 4s"), which keeps the planner
  free of time zones; :attr:`UnitStatus.next_attempt` holds the absolute time.
* **Which units get a status:** every desired or invalid unit, every live container, every
  leftover, and every busy unit (so work in flight shows, even for a unit already gone).
* ``shutdown_plan`` stops every live container, dependents before the units they require.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from quayd.reconcile.describe import describe_change
from quayd.reconcile.exits import (
    PULL_BACKOFF_FIRST,
    PULL_BACKOFF_MAX,
    backoff_delay,
    countdown,
    describe_exit,
    format_seconds,
    is_failure,
    pull_backoff,
    record_exit,
)
from quayd.reconcile.model import (
    Action,
    Busy,
    Container,
    Desired,
    DesiredUnit,
    Exit,
    ImageState,
    Observed,
    Plan,
    Pull,
    Remove,
    Start,
    State,
    Stop,
    UnitStatus,
    UpdateState,
)
from quayd.reconcile.update import (
    Step,
    digest_step,
    idle_step,
    live_step,
    start_reason,
    status_note,
    wanted_digest,
)

# The helpers moved to exits.py are still imported from here by the agent and the tests.
__all__ = [
    "PULL_BACKOFF_FIRST",
    "PULL_BACKOFF_MAX",
    "backoff_delay",
    "dependency_order",
    "describe_exit",
    "format_seconds",
    "is_failure",
    "plan",
    "pull_backoff",
    "record_exit",
    "shutdown_plan",
]

_BUSY_STATES: Mapping[Busy, State] = {
    "pulling": "pulling",
    "starting": "starting",
    "stopping": "stopping",
    "removing": "removing",
}


# --- ordering ----------------------------------------------------------------------------------


def _ordered(names: Iterable[str], before: Callable[[str], Iterable[str]]) -> list[str]:
    """``names`` with each after the names ``before(name)`` lists (those among ``names``);
    ties by name. Names caught in a cycle (validation refuses them) come last, by name."""
    pending = set(names)
    waits_on = {name: {other for other in before(name) if other in pending} for name in pending}
    unlocks: dict[str, list[str]] = {name: [] for name in pending}
    for name, others in waits_on.items():
        for other in others:
            unlocks[other].append(name)
    heap = sorted(name for name, others in waits_on.items() if not others)
    order: list[str] = []
    while heap:
        name = heapq.heappop(heap)
        order.append(name)
        for later in unlocks[name]:
            waits_on[later].discard(name)
            if not waits_on[later]:
                heapq.heappush(heap, later)
    return order + sorted(pending - set(order))


def _requires(desired: Desired, name: str) -> list[str]:
    entry = desired.units.get(name)
    return list(entry.unit.depends.requires) if entry is not None else []


def dependency_order(desired: Desired, names: Iterable[str]) -> list[str]:
    """``names`` with every unit after the units it requires."""
    return _ordered(names, lambda name: _requires(desired, name))


def shutdown_plan(desired: Desired, observed: Observed) -> list[Stop]:
    """Stop every live container, dependents before the units they require."""
    live = set(observed.containers)
    dependents: dict[str, set[str]] = {name: set() for name in live}
    for name in live:
        for required in _requires(desired, name):
            if required in dependents:
                dependents[required].add(name)
    return [
        Stop(unit=name, why="shutdown", reason="quay is stopping its containers")
        for name in _ordered(live, lambda name: dependents[name])
    ]


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decision:
    status: UnitStatus
    action: Action | None = None
    wake_at: float | None = None


def plan(desired: Desired, observed: Observed, now: float) -> Plan:
    """The next action of each unit (at most one), every unit's status, and when to look again."""
    names = set(desired.units) | set(observed.containers) | observed.leftovers
    names |= set(desired.invalid) | set(observed.busy)  # busy: in-flight work shows too
    decisions: dict[str, _Decision] = {}
    for name in dependency_order(desired, names):
        decisions[name] = _decide(name, desired, observed, now, decisions)
    ordered = sorted(decisions)
    deadlines = [d.wake_at for d in decisions.values() if d.wake_at is not None]
    return Plan(
        actions=tuple(a for n in ordered if (a := decisions[n].action) is not None),
        statuses={name: decisions[name].status for name in ordered},
        wake_at=min(deadlines, default=None),
    )


def _decide(
    name: str,
    desired: Desired,
    observed: Observed,
    now: float,
    decided: Mapping[str, _Decision],
) -> _Decision:
    entry = desired.units.get(name)
    findings = entry.findings if entry is not None else desired.invalid.get(name, ())
    busy = observed.busy.get(name)
    if busy is not None:
        return _Decision(
            _status(name, _BUSY_STATES[busy], f"{busy} (in progress)", findings=findings)
        )
    if entry is None:
        return _undesired(name, desired, observed)
    container = observed.containers.get(name)
    if name in desired.held:
        return _with_findings(_held(name, container is not None), entry.findings)
    update = observed.updates.get(name) if entry.unit.update.policy != "off" else None
    if container is not None and observed.restarts.get(name) == container.started_at:
        decision = _stop(name, "replace", "restarted by an operator (quayctl restart)")
    elif container is not None:
        decision = _live(entry, container, now, update)
    else:
        decision = _not_running(entry, desired, observed, now, decided, update=update)
    if update is not None:
        decision = _with_update_note(entry, decision, update, now)
    return _with_findings(decision, entry.findings)


def _from_step(name: str, step: Step) -> _Decision:
    status = _status(name, step.state, step.detail, ready=step.ready, next_attempt=step.wake_at)
    return _Decision(status, step.action, step.wake_at)


def _with_update_note(
    entry: DesiredUnit, decision: _Decision, update: UpdateState, now: float
) -> _Decision:
    note, wake_at = status_note(entry, update, now)
    if note and note not in decision.status.detail:
        detail = "; ".join(part for part in (decision.status.detail, note) if part)
        decision = replace(decision, status=replace(decision.status, detail=detail))
    if wake_at is not None:
        wakes = [t for t in (decision.wake_at, wake_at) if t is not None]
        decision = replace(decision, wake_at=min(wakes))
    return decision


def _status(
    name: str,
    state: State,
    detail: str = "",
    *,
    next_attempt: float | None = None,
    findings: tuple[str, ...] = (),
    ready: bool = False,
) -> UnitStatus:
    return UnitStatus(name, state, detail, next_attempt, findings, ready)


def _with_findings(decision: _Decision, findings: tuple[str, ...]) -> _Decision:
    if not findings:
        return decision
    note = f"the file has {len(findings)} error(s); using its last good version"
    detail = "; ".join(part for part in (decision.status.detail, note) if part)
    return replace(decision, status=replace(decision.status, detail=detail, findings=findings))


# file invalid (no last good) or removed ---------------------------------------------------------


def _undesired(name: str, desired: Desired, observed: Observed) -> _Decision:
    findings = desired.invalid.get(name)
    if findings is not None:  # the file exists but is invalid: touch nothing
        detail = "the file is invalid and has no last good version"
        if name in observed.containers:
            detail += "; its running container is left alone (quay never stops on bad input)"
        return _Decision(_status(name, "invalid", detail, findings=findings))
    if name in observed.containers:
        reason = "unit file removed: stopping its container"
        return _Decision(_status(name, "stopping", reason), Stop(name, reason, "remove"))
    reason = "unit file removed: removing what it left (network attachment, lease, directory)"
    return _Decision(_status(name, "removing", reason), Remove(name, reason))


# held by an operator --------------------------------------------------------------------------


def _held(name: str, live: bool) -> _Decision:
    """``quayctl stop``: stop it and start nothing (no policy, no dependency) until released."""
    if live:
        reason = "stopped by an operator (quayctl stop)"
        return _Decision(_status(name, "stopping", reason), Stop(name, reason, "hold"))
    detail = f"stopped by an operator; `quayctl start {name}` starts it again"
    return _Decision(_status(name, "stopped", detail))


# a live container -----------------------------------------------------------------------------


def _live(
    entry: DesiredUnit, container: Container, now: float, update: UpdateState | None
) -> _Decision:
    name, unit = entry.name, entry.unit
    if container.hash != entry.hash:
        if container.unit is None:
            return _stop(name, "replace", "unit changed: replacing the container")
        change = describe_change(container.unit, unit)
        if change == "no change in the unit":
            change = "a new image digest"  # pull = "always" found one
        return _stop(name, "replace", f"replacing the container: {change}")
    step = live_step(entry, container, update, now) if update is not None else None
    if step is not None:
        return _from_step(name, step)
    timeout = unit.ready.timeout.total_seconds()
    deadline = container.ready_deadline_from + timeout
    if not container.ready and now >= deadline:
        return _stop(name, "failure", f"not ready within {format_seconds(timeout)}")
    if container.unhealthy and unit.health.on_unhealthy == "restart":
        return _stop(name, "failure", "unhealthy (its health check keeps failing)")
    parts = ["unhealthy"] if container.unhealthy else []
    if container.status_text:
        parts.append(container.status_text)
    if container.ready:
        return _Decision(_status(name, "running", "; ".join(parts), ready=True))
    waiting = f"not ready yet ({unit.ready.mode}); fails in {countdown(deadline - now)}"
    detail = "; ".join([waiting, *parts])
    return _Decision(_status(name, "starting", detail), wake_at=deadline)


def _stop(name: str, why: Literal["replace", "failure"], reason: str) -> _Decision:
    return _Decision(_status(name, "stopping", reason), Stop(name, reason, why))


# no live container ------------------------------------------------------------------------------


def _not_running(
    entry: DesiredUnit,
    desired: Desired,
    observed: Observed,
    now: float,
    decided: Mapping[str, _Decision],
    *,
    update: UpdateState | None,
) -> _Decision:
    history = observed.history.get(entry.name)
    last = history.last_exit if history is not None else None
    restarts = history.restarts if history is not None else 0
    image = observed.images.get(entry.name, ImageState())
    if update is not None:
        step = idle_step(entry, update, last, image)
        if step is not None:
            return _from_step(entry.name, step)
    why = _start_reason(entry, last)
    if last is not None and last.hash == entry.hash and last.stopped_for not in _FRESH:
        held = _restart_hold(entry, last, restarts, now)
        if held is not None:
            return held
        why = f"restarting ({describe_exit(last)})"
    digest = wanted_digest(update) if update is not None else None
    if update is not None and digest is not None:
        pulling = digest_step(entry, update, digest, image, now)
        image_step = _from_step(entry.name, pulling) if pulling is not None else None
        why = start_reason(update, last, why)
    else:
        image_step = _image_step(entry, image, last, now)
    if image_step is not None:
        return image_step
    unmet = _unmet_dependency(entry, desired, decided)
    if unmet is not None:
        return _Decision(_status(entry.name, "waiting", unmet))
    if digest is not None or not _pull_wanted(entry, image, last) or not image.error:
        reason = why
    else:
        reason = f"{why}, with the stored image (the registry check failed: {image.error})"
    start = Start(entry.name, entry.hash, reason, digest)
    return _Decision(_status(entry.name, "starting", reason), start)


# Exits after which the unit starts as new, outside the restart policy.
_FRESH = ("replace", "remove", "hold")


def _start_reason(entry: DesiredUnit, last: Exit | None) -> str:
    if last is None:
        return "new unit: starting"
    if last.stopped_for == "remove":
        return "unit file added again: starting"
    if last.stopped_for == "hold":
        return "started by an operator (quayctl start)"
    if last.hash != entry.hash or last.stopped_for == "replace":
        return "unit changed: starting the new version"
    return "starting"


def _restart_hold(entry: DesiredUnit, last: Exit, restarts: int, now: float) -> _Decision | None:
    """The status when the restart policy or the backoff holds the unit; None: start it."""
    name, restart = entry.name, entry.unit.restart
    ended = describe_exit(last)
    if last.stopped_for == "shutdown":
        return _Decision(_status(name, "exited", f"{ended}; starts again when quayd starts"))
    if restart.policy == "no" or (restart.policy == "on-failure" and not is_failure(last)):
        detail = f"{ended}; not restarted (policy {restart.policy})"
        return _Decision(_status(name, "exited", detail))
    due = last.at + backoff_delay(restart, restarts)
    if now >= due:
        return None
    detail = f"{ended}; restarting in {countdown(due - now)}"
    return _Decision(_status(name, "backoff", detail, next_attempt=due), wake_at=due)


def _pull_wanted(entry: DesiredUnit, image: ImageState, last: Exit | None) -> bool:
    """Whether this (re)start should pull first: the image is missing, or ``pull = "always"``
    and the registry was not checked since the last exit (nor ever)."""
    if not image.present:
        return True
    unit = entry.unit
    if unit.image.pull != "always" or unit.container.image_reference.digest is not None:
        return False
    if image.checked_at is None:
        return True
    return last is not None and image.checked_at < last.at


def _image_step(
    entry: DesiredUnit, image: ImageState, last: Exit | None, now: float
) -> _Decision | None:
    """The status (and Pull) while the image holds the start back; None: go on."""
    name, reference = entry.name, str(entry.unit.container.image)
    if image.pulling:
        return _Decision(_status(name, "pulling", f"pulling {reference}"))
    if not _pull_wanted(entry, image, last):
        return None
    retry_later = image.error is not None and image.retry_at is not None and image.retry_at > now
    if retry_later and image.present:
        return None  # the check failed: start with the stored image
    if retry_later:
        assert image.retry_at is not None
        detail = (
            f"pulling {reference} failed: {image.error}; "
            f"retrying in {countdown(image.retry_at - now)}"
        )
        status = _status(name, "waiting", detail, next_attempt=image.retry_at)
        return _Decision(status, wake_at=image.retry_at)
    reason = _pull_reason(image, reference)
    return _Decision(_status(name, "pulling", reason), Pull(name, reference, reason))


def _pull_reason(image: ImageState, reference: str) -> str:
    if image.error is not None:
        return f"retrying the pull of {reference} (it failed: {image.error})"
    if not image.present:
        return f"image {reference} is not stored: pulling it"
    return f'pull = "always": checking the registry for a new {reference} before starting'


def _unmet_dependency(
    entry: DesiredUnit, desired: Desired, decided: Mapping[str, _Decision]
) -> str | None:
    """Why the unit cannot start yet because of a unit it requires; None: it can."""
    for required in entry.unit.depends.requires:
        if required not in desired.units:
            if required in desired.invalid:
                return f"waiting for {required}, which is invalid"
            return f"waiting for {required}, which does not exist"
        decision = decided.get(required)
        if decision is None or not decision.status.ready:
            return f"waiting for {required} to be ready"
    return None
