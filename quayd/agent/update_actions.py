"""The agent's ``[update]`` work: the registry checks, the update actions the planner decides
(Fetch, Update, Rollback, Confirm), what the planner observes, and ``quayctl update``.

:class:`UpdateRunner` carries these out; the decisions are the planner's. The update records
are :class:`~quayd.agent.updates.Updates`' own (it is their only writer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from quayd.agent.api import RequestError
from quayd.agent.events import EventLog
from quayd.agent.logs import logger
from quayd.agent.supervision import Supervisor
from quayd.agent.unit_pulls import UnitPulls
from quayd.agent.updates import Updates, others_using
from quayd.agent.work import Work
from quayd.images.errors import ImageError
from quayd.images.store import Store
from quayd.images.versions import by_digest_reference, point_at, remove_versions, versions
from quayd.reconcile.executor import Executor, ExecutorError
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

log = logger("quayd")

UPDATE_ACTIONS = (Fetch, Update, Rollback, Confirm)


class UpdateRunner:
    """Carries out the planner's update actions and the registry checks."""

    def __init__(
        self,
        *,
        updates: Updates,
        executor: Executor,
        store: Store,
        supervisor: Supervisor,
        pulls: UnitPulls,
        work: Work,
        events: EventLog,
        wake: Callable[[], None],
        desired: Callable[[], Desired],
        bandwidth: int | None,
    ) -> None:
        self._updates = updates
        self._executor = executor
        self._store = store
        self._supervisor = supervisor
        self._pulls = pulls
        self._work = work
        self._events = events
        self._wake = wake
        self._desired = desired
        self._bandwidth = bandwidth

    def observe(self, desired: Desired) -> dict[str, UpdateState]:
        """Per unit with ``[update]``: its update as the planner reads it."""
        found: dict[str, UpdateState] = {}
        units = {n: e.unit for n, e in desired.units.items() if e.unit.update.policy != "off"}
        self._updates.forget(set(units))
        for name, unit in units.items():
            reference = self._executor.reference(unit)
            stored = versions(self._store, reference)
            current = self._store.get(reference)
            digest = current.manifest_digest if current is not None else None
            found[name] = self._updates.observed(name, unit, stored, digest)
        return found

    def start_checks(self) -> None:
        """Ask the registry for each due unit's tag digest, in the background (no unit is busy)."""
        units = {name: entry.unit for name, entry in self._desired().units.items()}
        for name in self._updates.due_checks(units):
            self._updates.of(name).checking = True
            self._work.spawn(self._check(name, str(units[name].container.image_reference)))

    async def _resolve(self, name: str, reference: str) -> tuple[str | None, str | None]:
        """(the tag's digest, None) or (None, why the registry could not tell)."""
        from quayd.images.pull import resolve_digest  # noqa: PLC0415 - the HTTP stack, lazily

        unit = self._desired().units[name].unit if name in self._desired().units else None
        platform = None
        if unit is not None and unit.image.platform:
            from quayd.images.model import Platform  # noqa: PLC0415

            platform = Platform.parse(unit.image.platform)
        try:
            digest = await self._work.run(
                lambda: resolve_digest(reference, client=self._executor.registry, platform=platform)
            )
        except ImageError as error:
            return None, str(error)
        return digest, None

    async def _check(self, name: str, reference: str) -> None:
        digest, error = await self._resolve(name, reference)
        if digest is None:
            self._updates.checked(name, None, error)
            log.warning("update check failed", unit=name, image=reference, error=error)
            self._events.emit(name, "update-check-failed", str(error))
        else:
            state = self._updates.of(name)
            moved = digest != state.offered
            self._updates.checked(name, digest, None)
            if moved and digest != state.record.current:
                log.info("update available", unit=name, image=reference, digest=digest)
                self._events.emit(
                    name, "update-available", f"{reference} is now {short(digest)}", digest=digest
                )
        self._wake()

    async def perform(self, action: Action) -> None:
        """Run one update action (the planner's reasons become the events' messages)."""
        name = action.unit
        if isinstance(action, Fetch):
            await self._fetch(name, action)
        elif isinstance(action, Update):
            old = self._updates.of(name).record
            self._updates.save(name, replace(old, current=action.previous, target=action.target))
            self._pulls.forget(name)  # the target's pull starts afresh
            log.info("updating", unit=name, previous=action.previous, target=action.target)
            self._events.emit(
                name, "updating", action.reason, previous=action.previous, target=action.target
            )
            await self._supervisor.stop(name, "replace")
            if action.remove_previous:  # replace-then-download: room for the new one first
                reference = self._executor.reference(self._desired().units[name].unit)
                references = {
                    n: self._executor.reference(e.unit) for n, e in self._desired().units.items()
                }
                sharing = others_using(references, name)
                if sharing:  # their containers run from it: it stays
                    log.info("old image kept: other units use it", unit=name, units=sharing)
                else:
                    await self._work.run(remove_versions, self._store, reference)
        elif isinstance(action, Rollback):
            record = self._updates.of(name).record
            why = action.reason
            self._updates.save(
                name, UpdateRecord(current=action.previous, bad=action.bad, bad_reason=_why(why))
            )
            self._pulls.forget(name)
            log.warning(
                "update failed: rolling back",
                unit=name,
                failed=record.target,
                previous=action.previous,
                reason=why,
            )
            self._events.emit(
                name,
                "update-failed",
                why,
                failed=record.target,
                previous=action.previous,
                bad=action.bad,
            )
            await self._supervisor.stop(name, "replace")
            await self._work.run(self._point_back, name, action.previous)
        elif isinstance(action, Confirm):
            old = self._updates.of(name).record
            previous = old.current
            self._updates.save(name, replace(old, current=action.digest, target=None, forced=False))
            await self._work.run(self._point_back, name, action.digest)  # the tag names what runs
            log.info("updated", unit=name, previous=previous, digest=action.digest)
            self._events.emit(
                name, "updated", action.reason, previous=previous, digest=action.digest
            )

    def _point_back(self, name: str, digest: str) -> None:
        """The tag names the digest rolled back to again (when stored): what an operator's
        ``quayctl image ls`` shows is what runs, and the failed one is only the previous one."""
        reference = self._executor.reference(self._desired().units[name].unit)
        record = versions(self._store, reference).get(digest)
        if record is not None:
            point_at(self._store, reference, record)

    async def _fetch(self, name: str, action: Fetch) -> None:
        state = self._updates.of(name)
        state.fetching = True
        self._events.emit(name, "pulling", action.reason, digest=action.digest)
        try:
            await self._work.run(
                self._executor.pull_reference,
                # By digest: exactly the version checked (the tag may have moved since), and the
                # tag keeps naming what runs until the update is confirmed (Confirm points it).
                by_digest_reference(action.reference, action.digest),
                max_rate=self._bandwidth,  # [updates] bandwidth: a download only
            )
        except ExecutorError as error:
            self._updates.fetched(name, action.digest, str(error))
            log.warning("update download failed", unit=name, digest=action.digest, error=str(error))
            self._events.emit(name, "pull-failed", str(error), digest=action.digest)
            return
        finally:
            state.fetching = False
            self._wake()
        self._updates.fetched(name, action.digest, None)
        self._events.emit(name, "pulled", f"downloaded the update {short(action.digest)}")

    def pull_reference(self, name: str, digest: str) -> str:
        """What to pull for the digest an update wants (its repository, by digest)."""
        return by_digest_reference(
            self._executor.reference(self._desired().units[name].unit), digest
        )

    def pulled(self, name: str, digest: str, error: str | None) -> None:
        """A target's pull ended: a failure counts as a failed download (no new update at once)."""
        state = self._updates.of(name)
        if state.record.target == digest:
            self._updates.fetched(name, digest, error)

    async def update_now(self, params: Mapping[str, Any]) -> Any:
        """``quayctl update [--dry-run] [NAME...]``: check now (outside the window), and update."""
        names = [str(name) for name in params.get("names") or []]
        units = {
            n: e.unit for n, e in self._desired().units.items() if e.unit.update.policy != "off"
        }
        unknown = [name for name in names if name not in units]
        if unknown:
            raise RequestError("not-found", f"no unit with [update] named {', '.join(unknown)}")
        chosen = names or sorted(units)
        dry_run = bool(params.get("dry_run"))
        registry = [name for name in chosen if units[name].update.policy == "registry"]
        looks = await asyncio.gather(
            *(self._resolve(name, str(units[name].container.image_reference)) for name in registry)
        )
        observed = self.observe(self._desired())
        for name, (digest, error) in zip(registry, looks, strict=True):
            if dry_run:  # what the registry says, for the answer only: the planner is not told
                observed[name] = replace(observed[name], offered=digest, check_error=error)
            else:
                self._updates.checked(name, digest, error)
        if not dry_run:
            observed = self.observe(self._desired())
        rows = [self._row(name, observed[name], dry_run=dry_run) for name in chosen]
        if not dry_run:
            self._wake()
        return {"dry_run": dry_run, "units": rows}

    def _row(self, name: str, update: UpdateState, *, dry_run: bool) -> dict[str, Any]:
        """What ``quayctl update`` says of one unit; without ``dry_run`` a new digest is forced
        past the window (the planner's next pass starts the update)."""
        live = self._supervisor.get(name)
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
            self._updates.force(name)
            what = f"updating {short(current)} to {short(offered)}"
        return {"unit": name, "running": running, "current": current, "offered": offered,
                "bad": update.record.bad, "message": what}  # fmt: skip


def _why(reason: str) -> str:
    """ "update to X failed (not ready within 10s); ..." -> "not ready within 10s"."""
    start, end = reason.find("("), reason.find(")")
    return reason[start + 1 : end] if 0 <= start < end else reason
