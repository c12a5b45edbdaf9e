"""The agent's ``[update]`` work: the registry checks, the update actions the planner decides
(Fetch, Update, Rollback, Confirm), what the planner observes, and ``quayctl update``.

Kept apart from agent.py, which calls these with itself; the decisions are the planner's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from quayd.agent.logs import logger
from quayd.agent.updates import others_using
from quayd.images.errors import ImageError
from quayd.images.versions import by_digest_reference, point_at, remove_versions, versions
from quayd.reconcile.executor import ExecutorError
from quayd.reconcile.model import (
    Action,
    Confirm,
    Desired,
    Fetch,
    Rollback,
    Update,
    UpdateRecord,
    UpdateState,
)
from quayd.reconcile.update import short

if TYPE_CHECKING:
    from quayd.agent.agent import Agent

log = logger("quayd")

UPDATE_ACTIONS = (Fetch, Update, Rollback, Confirm)


def observe(agent: Agent, desired: Desired) -> dict[str, UpdateState]:
    """Per unit with ``[update]``: its update as the planner reads it."""
    found: dict[str, UpdateState] = {}
    units = {n: e.unit for n, e in desired.units.items() if e.unit.update.policy != "off"}
    agent.updates.forget(set(units))
    for name, unit in units.items():
        reference = agent.executor.reference(unit)
        stored = versions(agent.store, reference)
        current = agent.store.get(reference)
        digest = current.manifest_digest if current is not None else None
        found[name] = agent.updates.observed(name, unit, stored, digest)
    return found


def start_checks(agent: Agent) -> None:
    """Ask the registry for each due unit's tag digest, in the background (no unit is busy)."""
    units = {name: entry.unit for name, entry in agent.desired.units.items()}
    for name in agent.updates.due_checks(units):
        agent.updates.of(name).checking = True
        agent.spawn(_check(agent, name, str(units[name].container.image_reference)))


async def _resolve(agent: Agent, name: str, reference: str) -> tuple[str | None, str | None]:
    """(the tag's digest, None) or (None, why the registry could not tell)."""
    from quayd.images.pull import resolve_digest  # noqa: PLC0415 - the HTTP stack, lazily

    unit = agent.desired.units[name].unit if name in agent.desired.units else None
    platform = None
    if unit is not None and unit.image.platform:
        from quayd.images.model import Platform  # noqa: PLC0415

        platform = Platform.parse(unit.image.platform)
    try:
        digest = await agent.work(
            lambda: resolve_digest(reference, client=agent.executor.registry, platform=platform)
        )
    except ImageError as error:
        return None, str(error)
    return digest, None


async def _check(agent: Agent, name: str, reference: str) -> None:
    digest, error = await _resolve(agent, name, reference)
    if digest is None:
        agent.updates.checked(name, None, error)
        log.warning("update check failed", unit=name, image=reference, error=error)
        agent.events.emit(name, "update-check-failed", str(error))
    else:
        state = agent.updates.of(name)
        moved = digest != state.offered
        agent.updates.checked(name, digest, None)
        if moved and digest != state.record.current:
            log.info("update available", unit=name, image=reference, digest=digest)
            agent.events.emit(
                name, "update-available", f"{reference} is now {short(digest)}", digest=digest
            )
    agent.wake()


async def perform(agent: Agent, action: Action) -> None:
    """Run one update action (the planner's reasons become the events' messages)."""
    name = action.unit
    if isinstance(action, Fetch):
        await _fetch(agent, name, action)
    elif isinstance(action, Update):
        old = agent.updates.of(name).record
        agent.updates.save(name, replace(old, current=action.previous, target=action.target))
        agent.pulls.pop(name, None)  # the target's pull starts afresh
        log.info("updating", unit=name, previous=action.previous, target=action.target)
        agent.events.emit(
            name, "updating", action.reason, previous=action.previous, target=action.target
        )
        await agent.stop_container(name, "replace")
        if action.remove_previous:  # replace-then-download: room for the new one first
            reference = agent.executor.reference(agent.desired.units[name].unit)
            references = {
                n: agent.executor.reference(e.unit) for n, e in agent.desired.units.items()
            }
            sharing = others_using(references, name)
            if sharing:  # their containers run from it: it stays
                log.info("old image kept: other units use it", unit=name, units=sharing)
            else:
                await agent.work(remove_versions, agent.store, reference)
    elif isinstance(action, Rollback):
        record = agent.updates.of(name).record
        why = action.reason
        agent.updates.save(
            name, UpdateRecord(current=action.previous, bad=action.bad, bad_reason=_why(why))
        )
        agent.pulls.pop(name, None)
        log.warning(
            "update failed: rolling back",
            unit=name,
            failed=record.target,
            previous=action.previous,
            reason=why,
        )
        agent.events.emit(
            name,
            "update-failed",
            why,
            failed=record.target,
            previous=action.previous,
            bad=action.bad,
        )
        await agent.stop_container(name, "replace")
        await agent.work(_point_back, agent, name, action.previous)
    elif isinstance(action, Confirm):
        old = agent.updates.of(name).record
        previous = old.current
        agent.updates.save(name, replace(old, current=action.digest, target=None))
        agent.updates.of(name).forced = False
        await agent.work(_point_back, agent, name, action.digest)  # the tag names what runs
        log.info("updated", unit=name, previous=previous, digest=action.digest)
        agent.events.emit(name, "updated", action.reason, previous=previous, digest=action.digest)


def _why(reason: str) -> str:
    """ "update to X failed (not ready within 10s); ..." -> "not ready within 10s"."""
    start, end = reason.find("("), reason.find(")")
    return reason[start + 1 : end] if 0 <= start < end else reason


def _point_back(agent: Agent, name: str, digest: str) -> None:
    """The tag names the digest rolled back to again (when stored): what an operator's
    ``quayctl image ls`` shows is what runs, and the failed one is only the previous one."""
    reference = agent.executor.reference(agent.desired.units[name].unit)
    record = versions(agent.store, reference).get(digest)
    if record is not None:
        point_at(agent.store, reference, record)


async def _fetch(agent: Agent, name: str, action: Fetch) -> None:
    state = agent.updates.of(name)
    state.fetching = True
    agent.events.emit(name, "pulling", action.reason, digest=action.digest)
    try:
        await agent.work(
            agent.executor.pull_reference,
            # By digest: exactly the version checked (the tag may have moved since), and the
            # tag keeps naming what runs until the update is confirmed (Confirm points it).
            by_digest_reference(action.reference, action.digest),
            max_rate=agent.settings.updates.bandwidth,  # [updates] bandwidth: a download only
        )
    except ExecutorError as error:
        agent.updates.fetched(name, action.digest, str(error))
        log.warning("update download failed", unit=name, digest=action.digest, error=str(error))
        agent.events.emit(name, "pull-failed", str(error), digest=action.digest)
        return
    finally:
        state.fetching = False
        agent.wake()
    agent.updates.fetched(name, action.digest, None)
    agent.events.emit(name, "pulled", f"downloaded the update {short(action.digest)}")


def pull_reference(agent: Agent, name: str, digest: str) -> str:
    """What to pull for the digest an update wants (its repository, by digest)."""
    return by_digest_reference(agent.executor.reference(agent.desired.units[name].unit), digest)


def pulled(agent: Agent, name: str, digest: str, error: str | None) -> None:
    """A target's pull ended: a failure counts as a failed download (no new update at once)."""
    state = agent.updates.of(name)
    if state.record.target == digest:
        agent.updates.fetched(name, digest, error)


async def api_update(agent: Agent, params: Mapping[str, Any]) -> Any:
    """``quayctl update [--dry-run] [NAME...]``: check now (outside the window), and update."""
    names = [str(name) for name in params.get("names") or []]
    units = {n: e.unit for n, e in agent.desired.units.items() if e.unit.update.policy != "off"}
    unknown = [name for name in names if name not in units]
    if unknown:
        from quayd.agent.api import RequestError  # noqa: PLC0415

        raise RequestError("not-found", f"no unit with [update] named {', '.join(unknown)}")
    chosen = names or sorted(units)
    dry_run = bool(params.get("dry_run"))
    registry = [name for name in chosen if units[name].update.policy == "registry"]
    looks = await asyncio.gather(
        *(_resolve(agent, name, str(units[name].container.image_reference)) for name in registry)
    )
    observed = observe(agent, agent.desired)
    for name, (digest, error) in zip(registry, looks, strict=True):
        if dry_run:  # what the registry says, for the answer only: the planner is not told
            observed[name] = replace(observed[name], offered=digest, check_error=error)
        else:
            agent.updates.checked(name, digest, error)
    if not dry_run:
        observed = observe(agent, agent.desired)
    rows = [_row(agent, name, observed[name], dry_run=dry_run) for name in chosen]
    if not dry_run:
        agent.wake()
    return {"dry_run": dry_run, "units": rows}


def _row(agent: Agent, name: str, update: UpdateState, *, dry_run: bool) -> dict[str, Any]:
    """What ``quayctl update`` says of one unit; without ``dry_run`` a new digest is forced
    past the window (the planner's next pass starts the update)."""
    live = agent.live.get(name)
    running = live.record.image_digest if live is not None else None
    current = update.record.current or running
    offered = update.offered
    if update.record.target is not None:
        what = f"updating {short(current)} to {short(update.record.target)}"
    elif update.check_error is not None:
        what = f"check failed: {update.check_error}"
    elif offered is None or offered == current:
        what = "up to date"
    elif offered == update.record.bad:
        what = f"{short(offered)} failed before ({update.record.bad_reason}): not retried"
    elif dry_run:
        what = f"would update {short(current)} to {short(offered)}"
    else:
        agent.updates.of(name).forced = True
        what = f"updating {short(current)} to {short(offered)}"
    return {"unit": name, "running": running, "current": current, "offered": offered,
            "bad": update.record.bad, "message": what}  # fmt: skip
