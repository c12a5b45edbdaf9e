"""The planner's ``[update]`` decisions, pure: what :func:`quayd.reconcile.plan.plan` asks of a
unit whose image follows its tag (``policy = "registry"``) or the store (``"local"``).

The digest a unit should run is ``record.target`` while an update is rolled out, else
``record.current`` (else what the store has for the reference: the unit's first image). Each
step is one action, and the record is written (atomically) before the step acts, so a pass
after an agent restart or a power cut sees where the update was and goes on from there.

Table, per unit with ``[update]`` (first matching row wins; plan.py's rows follow when none does)::

    live container, update being rolled out (record.target set):
      it runs the target, ready                  Confirm            [running]
      it runs the target, not ready at deadline  Rollback (bad)     [stopping]  rollback = true
      it runs another digest                     Stop replace       [stopping]  (resumed)
    live container, no update in flight:
      tag checked, digest new, not bad, window open, container ready:
        download-then-replace, not stored        Fetch              [running]   in the background
        download-then-replace, stored            Update             [stopping]
        stop-/replace-then-download              Update             [stopping]
    no container, update being rolled out:
      the target exited before ready             Rollback (bad)     [starting]  rollback = true
      the target ended while the agent was down  Start of the target again (exit status unknown)
      the target's pull failed                   Rollback (not bad) [starting]  rollback = true
      otherwise                                  Pull/Start of the target
    no container otherwise                       Pull/Start of record.current

Choices:

* **Bad digests.** A digest rolled back is not tried again while the tag points at it; the tag
  moving to any other digest makes that one the candidate (and the bad one is then forgotten).
  A failed pull is not the image's fault: it rolls back without marking the digest bad, and the
  next check (or ``fetch_retry_at``) tries again.
* **Not while starting.** An update waits until the running container is ready: replacing a
  container that is not ready yet would hide which of the two failed.
* **The window** holds back only the start of an update (Fetch, Update). Confirm and Rollback
  never wait: a half-done update is finished at once.
* **rollback = false**: the new digest stays whatever happens; its failures follow ``[restart]``.
* **No previous digest** (the unit's first image was an update's target): nothing to roll back
  to, so the failure follows ``[restart]`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from quayd.reconcile.exits import countdown, describe_exit, format_seconds
from quayd.reconcile.model import (
    Action,
    Confirm,
    Container,
    DesiredUnit,
    Exit,
    Fetch,
    ImageState,
    Pull,
    Rollback,
    State,
    Stop,
    Update,
    UpdateState,
)


def short(digest: str | None) -> str:
    """A digest for a person: "sha256:0123456789ab" (12 hex digits, as Docker shows IDs)."""
    if digest is None:
        return "the stored image"
    algorithm, _, hexdigits = digest.partition(":")
    return f"{algorithm}:{hexdigits[:12]}" if hexdigits else digest


@dataclass(frozen=True)
class Step:
    """An update's decision: an action (or none) and what status to show."""

    action: Action | None
    state: State
    """The unit's state while the step runs."""
    detail: str
    ready: bool = False
    wake_at: float | None = None


def wanted_digest(update: UpdateState, container: Container | None = None) -> str | None:
    """The digest the unit should run: the update's target, else the confirmed one, else the
    one the container runs (an update record not written yet), else None (the store's)."""
    record = update.record
    if record.target is not None:
        return record.target
    if record.current is not None:
        return record.current
    return container.digest if container is not None else None


def _previous(update: UpdateState, container: Container | None) -> str | None:
    return update.record.current or (container.digest if container is not None else None)


# --- a live container ----------------------------------------------------------------------


def live_step(
    entry: DesiredUnit, container: Container, update: UpdateState, now: float
) -> Step | None:
    """The update's step for a live container of the current unit hash; None: plan.py's rows."""
    record, name = update.record, entry.name
    if record.target is not None:
        return _live_rollout(entry, container, update, now)
    offered = update.offered
    current = _previous(update, container)
    if offered is None or offered in (current, record.bad):
        return None
    if not container.ready or not update.due:
        return None
    if update.fetch_error is not None and (update.fetch_retry_at or 0.0) > now:
        return None  # its download failed: status_note says why, and wakes at the retry
    what = f"{short(current)} to {short(offered)}"
    strategy = entry.unit.update.strategy
    if strategy == "download-then-replace":
        if offered not in update.stored:
            if update.fetching:
                return Step(None, "running", f"downloading the update to {short(offered)}", True)
            reason = f"update {what}: downloading it while the container runs"
            reference = str(entry.unit.container.image_reference)
            return Step(Fetch(name, reference, offered, reason), "running", reason, True)
        reason = f"updating {what} (downloaded): replacing the container"
        return Step(Update(name, current, offered, reason), "stopping", reason)
    remove = strategy == "replace-then-download"
    then = "removing its image, then downloading" if remove else "then downloading"
    reason = f"updating {what}: stopping the container, {then} the new one"
    return Step(Update(name, current, offered, reason, remove), "stopping", reason)


def _live_rollout(
    entry: DesiredUnit, container: Container, update: UpdateState, now: float
) -> Step | None:
    record, name = update.record, entry.name
    assert record.target is not None
    target = record.target
    if container.digest != target:
        # The record names the target but the old container still runs: the agent stopped
        # between writing the record and stopping it. Go on with the update.
        reason = f"updating {short(container.digest)} to {short(target)}: replacing the container"
        return Step(Stop(name, reason, "replace"), "stopping", reason)
    if container.ready:
        reason = f"updated {short(record.current)} to {short(target)}: ready, confirming it"
        return Step(Confirm(name, target, reason), "running", reason, True)
    timeout = entry.unit.ready.timeout.total_seconds()
    if now < container.ready_deadline_from + timeout:
        return None  # plan.py: starting, wake at the deadline
    if not entry.unit.update.rollback or record.current is None:
        return None  # plan.py: a failure stop, then [restart]
    return _rollback(entry, update, f"not ready within {format_seconds(timeout)}", bad=target)


def _rollback(
    entry: DesiredUnit,
    update: UpdateState,
    why: str,
    *,
    bad: str | None,
    state: State = "stopping",
) -> Step:
    record = update.record
    assert record.target is not None
    assert record.current is not None
    marked = "; marked bad" if bad is not None else ""
    back = short(record.current)
    reason = f"update to {short(record.target)} failed ({why}){marked}: rolling back to {back}"
    return Step(Rollback(entry.name, record.current, bad, reason), state, reason)


# --- no live container -----------------------------------------------------------------------


def idle_step(
    entry: DesiredUnit, update: UpdateState, last: Exit | None, image: ImageState
) -> Step | None:
    """The rollback decided without a container (the target ended, or its pull failed); None:
    plan.py starts (or pulls) :func:`wanted_digest`."""
    record = update.record
    target = record.target
    if target is None or not entry.unit.update.rollback or record.current is None:
        return None
    if last is not None and last.digest == target and not last.known and not _failed(last):
        return None  # it ended while the agent was down (killed with it): not the image's fault
    if last is not None and last.digest == target and (not last.ready or _failed(last)):
        return _rollback(entry, update, describe_exit(last), bad=target, state="starting")
    if target not in update.stored and image.error is not None and not image.pulling:
        why = f"pulling it failed: {image.error}"
        return _rollback(entry, update, why, bad=None, state="starting")
    return None


def _failed(last: Exit) -> bool:
    return last.stopped_for == "failure"


def digest_step(
    entry: DesiredUnit, update: UpdateState, digest: str, image: ImageState, now: float
) -> Step | None:
    """The step while the digest to start is not stored (a pull of it); None: start it."""
    if digest in update.stored:
        return None
    name, reference = entry.name, str(entry.unit.container.image_reference)
    wanted = f"{reference}@{short(digest)}"
    if image.pulling:
        return Step(None, "pulling", f"pulling {wanted}")
    if image.error is not None and image.retry_at is not None and image.retry_at > now:
        wait = countdown(image.retry_at - now)
        detail = f"pulling {wanted} failed: {image.error}; retrying in {wait}"
        return Step(None, "waiting", detail, wake_at=image.retry_at)
    reason = f"image {wanted} is not stored: pulling it"
    return Step(Pull(name, reference, reason, digest), "pulling", reason)


def start_reason(update: UpdateState, last: Exit | None, why: str) -> str:
    """The Start's reason for a unit with ``[update]``: says a rollback or an update."""
    record = update.record
    if record.target is not None:
        return f"{why}: the update to {short(record.target)}"
    if record.bad is not None and last is not None and last.digest == record.bad:
        return f"rolled back: starting {short(record.current)} again"
    return why


# --- status ----------------------------------------------------------------------------------


def status_note(entry: DesiredUnit, update: UpdateState, now: float) -> tuple[str, float | None]:
    """What status adds about the update (a pending or failed one) and when to look again."""
    record = update.record
    parts: list[str] = []
    wake_at: float | None = None
    if record.target is not None:
        parts.append(f"updating {short(record.current)} to {short(record.target)}")
    elif update.offered is not None and update.offered == record.bad:
        parts.append(
            f"update {short(record.bad)} failed ({record.bad_reason or 'rolled back'}); "
            "not retried until the tag moves"
        )
    elif update.offered is not None and update.offered != record.current:
        if not update.due:
            parts.append(f"update to {short(update.offered)} pending until the update window")
            wake_at = update.opens_at
        elif update.fetch_error is not None and update.fetch_retry_at is not None:
            if update.fetch_retry_at > now:
                wake_at = update.fetch_retry_at
            parts.append(f"downloading the update to {short(update.offered)} failed: "
                         f"{update.fetch_error}")  # fmt: skip
    if update.check_error is not None:
        parts.append(f"update check failed: {update.check_error}")
    del entry
    return "; ".join(parts), wake_at


def protected_digests(updates: Mapping[str, UpdateState]) -> frozenset[str]:
    """Digests garbage collection must keep: each unit's current and target."""
    keep: set[str] = set()
    for update in updates.values():
        keep |= {d for d in (update.record.current, update.record.target) if d is not None}
    return frozenset(keep)
