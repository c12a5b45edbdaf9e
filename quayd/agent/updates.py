"""The agent's side of ``[update]``: what it observes for the planner (the tag's digest, the
stored versions, the update record), when it asks the registry, and the record's persistence.

The decisions are the planner's (:mod:`quayd.reconcile.update`); this module only gathers
inputs and keeps the little that cannot be derived (``STATE/updates/NAME.json``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from quayd.images.model import ImageRecord
from quayd.reconcile.model import UpdateRecord, UpdateState
from quayd.reconcile.records import read_update_record, write_update_record
from quayd.units.model import Unit
from quayd.units.settings import UpdateSettings, parse_clock

FETCH_BACKOFF_FIRST = 60.0
FETCH_BACKOFF_MAX = 3600.0


def jitter_share(key: str) -> float:
    """A fixed fraction in [0, 1) for ``key`` (host and unit): the same delay at every check,
    different across a fleet."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def window_state(window: str | None, local: datetime) -> tuple[bool, float]:
    """Whether ``local`` (the host's local time) is inside ``window`` ("HH:MM-HH:MM", may wrap
    midnight), and if not, the seconds until it opens."""
    if window is None:
        return True, 0.0
    start_text, end_text = window.split("-")
    start, end = parse_clock(start_text), parse_clock(end_text)
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if inside:
        return True, 0.0
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    opens = midnight + timedelta(minutes=start)
    if opens <= local:
        opens += timedelta(days=1)
    return False, (opens - local).total_seconds()


def others_using(references: Mapping[str, str], name: str) -> list[str]:
    """The units other than ``name`` whose image reference is ``name``'s (by unit): their
    containers run from its versions, so replace-then-download must not remove them."""
    return sorted(o for o, ref in references.items() if o != name and ref == references[name])


def fetch_backoff(failures: int) -> float:
    """Seconds before the next try of an update's download after ``failures`` in a row."""
    return min(FETCH_BACKOFF_FIRST * 2.0 ** min(max(failures, 1) - 1, 32), FETCH_BACKOFF_MAX)


@dataclass
class UnitUpdate:
    record: UpdateRecord
    offered: str | None = None
    check_error: str | None = None
    checked_at: float | None = None
    checking: bool = False
    fetching: bool = False
    fetch_error: str | None = None
    fetch_failures: int = 0
    fetch_retry_at: float | None = None

    @property
    def forced(self) -> bool:
        """``quayctl update NAME`` asked for it: the window does not hold it back, once."""
        return self.record.forced


@dataclass
class Updates:
    state_dir: Path
    settings: UpdateSettings
    host_key: str
    clock: Callable[[], float]
    local_time: Callable[[], datetime] = datetime.now
    units: dict[str, UnitUpdate] = field(default_factory=dict)
    started_at: float | None = None

    def of(self, name: str) -> UnitUpdate:
        state = self.units.get(name)
        if state is None:
            state = self.units[name] = UnitUpdate(read_update_record(self.state_dir, name))
        return state

    def save(self, name: str, record: UpdateRecord) -> None:
        """Written atomically before the step it records acts (see the planner's table)."""
        write_update_record(self.state_dir, name, record)
        self.of(name).record = record

    def force(self, name: str) -> None:
        """An operator's ``quayctl update NAME``: recorded (atomically) before it is answered."""
        record = self.of(name).record
        if not record.forced:
            self.save(name, replace(record, forced=True))

    def forget(self, names: set[str]) -> None:
        for name in set(self.units) - names:
            del self.units[name]

    def observed(
        self, name: str, unit: Unit, versions: Mapping[str, ImageRecord], stored_current: str | None
    ) -> UpdateState:
        """The planner's view; ``stored_current`` is the digest the store's reference names."""
        state = self.of(name)
        offered = stored_current if unit.update.policy == "local" else state.offered
        due, wait = window_state(self.settings.window, self.local_time())
        due = due or state.forced
        return UpdateState(
            record=state.record,
            offered=offered,
            stored=frozenset(versions),
            check_error=state.check_error,
            fetching=state.fetching,
            fetch_error=state.fetch_error,
            fetch_retry_at=state.fetch_retry_at,
            due=due,
            opens_at=None if due else self.clock() + wait,
        )

    def next_check(self, name: str) -> float:
        """When ``name``'s tag is asked next: one interval after the last check (the first:
        after the agent started), plus the unit's fixed share of the jitter (so a fleet that
        boots at once, power back after a cut, does not ask the registry at once either)."""
        state = self.of(name)
        now = self.clock()
        if self.started_at is None:
            self.started_at = now
        jitter = self.settings.jitter.total_seconds() * jitter_share(f"{self.host_key}/{name}")
        if state.checked_at is None:
            return self.started_at + jitter
        return state.checked_at + self.settings.check_interval.total_seconds() + jitter

    def due_checks(self, units: Mapping[str, Unit]) -> list[str]:
        """Units with ``policy = "registry"`` whose check is due (or forced), not running."""
        now = self.clock()
        inside, _ = window_state(self.settings.window, self.local_time())
        due = []
        for name, unit in sorted(units.items()):
            if unit.update.policy != "registry" or unit.container.image_reference.digest:
                continue
            state = self.of(name)
            if state.checking:
                continue
            if state.forced or (inside and now >= self.next_check(name)):
                due.append(name)
        return due

    def wake_at(self, units: Mapping[str, Unit]) -> float | None:
        times = [
            self.next_check(name)
            for name, unit in units.items()
            if unit.update.policy == "registry" and not self.of(name).checking
        ]
        return min(times, default=None)

    def checked(self, name: str, digest: str | None, error: str | None) -> None:
        state = self.of(name)
        state.checking = False
        state.checked_at = self.clock()
        state.check_error = error
        if digest is not None:
            if digest != state.offered:  # the tag moved: its download is tried afresh
                state.fetch_error, state.fetch_retry_at, state.fetch_failures = None, None, 0
            state.offered = digest

    def fetched(self, name: str, digest: str, error: str | None) -> None:
        """The end of a download of an update's digest (background, or of a target)."""
        state = self.of(name)
        state.fetching = False
        if error is None:
            if digest == state.offered:
                state.fetch_error, state.fetch_retry_at, state.fetch_failures = None, None, 0
            return
        state.fetch_failures += 1
        state.fetch_error = error
        state.fetch_retry_at = self.clock() + fetch_backoff(state.fetch_failures)
