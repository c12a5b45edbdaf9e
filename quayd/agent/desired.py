"""What the host should run, from the config directory: each unit with its hash, the last
good version of each invalid file, the ad-hoc units, the holds.

:class:`DesiredState` is the only writer of the last good versions, the units' hashes and the
invalid files' findings. It decides nothing: invalid files keep their last good versions
because the planner is given them (docs/units.md), and the planner decides what that means.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from quayd.agent.events import EventLog
from quayd.agent.logs import logger
from quayd.reconcile.executor import Executor
from quayd.reconcile.model import Desired, DesiredUnit
from quayd.reconcile.records import ContainerRecord, unit_hash
from quayd.units.directory import ConfigSnapshot
from quayd.units.model import Unit

log = logger("quayd")


class DesiredState:
    """Builds :class:`Desired` for each pass (and for a dry run, changing nothing)."""

    def __init__(self, executor: Executor, events: EventLog) -> None:
        self._executor = executor
        self._events = events
        self._last_good: dict[str, tuple[Unit, str]] = {}
        self._hashes: dict[str, str] = {}
        self._hash_memo: dict[str, tuple[Unit, str | None, str]] = {}
        """Per unit: the parsed unit, the image digest and their hash (6 ms a pass for 100)."""
        self._findings: dict[str, str] = {}
        """Per invalid file: its first finding as last reported (each new one is reported)."""

    def build(
        self,
        snapshot: ConfigSnapshot,
        *,
        running: Mapping[str, ContainerRecord],
        adhoc: Mapping[str, DesiredUnit],
        held: Callable[[Collection[str]], frozenset[str]],
        displace: Callable[[str], None],
    ) -> Desired:
        """Desired for a pass: ``running`` gives an invalid file's last good version when this
        agent never saw one (the record of its container); an ad-hoc unit whose name a file
        took is ``displace``d."""
        units: dict[str, DesiredUnit] = {}
        invalid: dict[str, tuple[str, ...]] = {}
        for name, loaded in snapshot.units.items():
            digest = self._pinned_digest(loaded.unit)
            memo = self._hash_memo.get(name)
            if memo is not None and memo[0] is loaded.unit and memo[1] == digest:
                digest_hash = memo[2]  # the same parsed unit (LoadCache): the same hash
            else:
                digest_hash = unit_hash(loaded.unit, digest)
                self._hash_memo[name] = (loaded.unit, digest, digest_hash)
            previous = self._hashes.get(name)
            if previous is not None and previous != digest_hash:
                self._events.emit(name, "changed", "the unit changed", hash=digest_hash)
            self._hashes[name] = digest_hash
            self._last_good[name] = (loaded.unit, digest_hash)
            units[name] = DesiredUnit(name=name, unit=loaded.unit, hash=digest_hash)
        self._last_good_of_invalid(snapshot, running, units, invalid)
        for name, entry in adhoc.items():
            if name in units or name in invalid:
                log.warning(
                    "a unit file took the name of an ad-hoc unit; it replaces it", unit=name
                )
                displace(name)
                continue
            units[name] = entry
        for name in set(self._hashes) - set(units):
            del self._hashes[name]
        for name in set(self._hash_memo) - set(snapshot.units):
            del self._hash_memo[name]
        return Desired(units=units, invalid=invalid, held=held(units))

    def preview(
        self,
        snapshot: ConfigSnapshot,
        *,
        running: Mapping[str, ContainerRecord],
        present: Collection[str],
        held: Callable[[Collection[str]], frozenset[str]],
    ) -> Desired:
        """Desired from ``snapshot`` as :meth:`build` makes it, changing nothing."""
        units: dict[str, DesiredUnit] = {}
        for name, loaded in snapshot.units.items():
            digest = self._pinned_digest(loaded.unit, present)
            units[name] = DesiredUnit(name, loaded.unit, unit_hash(loaded.unit, digest))
        invalid: dict[str, tuple[str, ...]] = {}
        self._keep_last_good(snapshot, running, units, invalid)
        return Desired(units=units, invalid=invalid, held=held(units))

    def _pinned_digest(self, unit: Unit, present: Collection[str] | None = None) -> str | None:
        """With ``pull = "always"`` (and no ``[update]``), the stored image's digest is part of
        the unit's hash: a new digest replaces the container. ``present``: only if stored."""
        if unit.image.pull != "always" or unit.update.policy != "off":
            return None
        if present is not None and self._executor.reference(unit) not in present:
            return None
        record = self._executor.image(unit)
        return record.manifest_digest if record is not None else None

    def _keep_last_good(
        self,
        snapshot: ConfigSnapshot,
        running: Mapping[str, ContainerRecord],
        units: dict[str, DesiredUnit],
        invalid: dict[str, tuple[str, ...]],
    ) -> None:
        """Each invalid file's last good version (from this agent's passes, else the running
        container's record) into ``units`` with its findings; without one, into ``invalid``."""
        for name, bad in snapshot.invalid.items():
            findings = tuple(str(finding) for finding in bad.findings if finding.is_error)
            good = self._last_good.get(name)
            if good is None and name in running:
                good = (running[name].unit, running[name].hash)
            if good is None:
                invalid[name] = findings
            else:
                units[name] = DesiredUnit(name=name, unit=good[0], hash=good[1], findings=findings)

    def _last_good_of_invalid(
        self,
        snapshot: ConfigSnapshot,
        running: Mapping[str, ContainerRecord],
        units: dict[str, DesiredUnit],
        invalid: dict[str, tuple[str, ...]],
    ) -> None:
        """An invalid file keeps its last good version running; without one, nothing runs.
        Each new finding is logged and becomes an event."""
        self._keep_last_good(snapshot, running, units, invalid)
        for name in snapshot.invalid:
            findings = invalid[name] if name in invalid else units[name].findings
            if findings and self._findings.get(name) != findings[0]:
                self._findings[name] = findings[0]
                log.error("invalid unit file", unit=name, findings=list(findings))
                self._events.emit(name, "invalid", findings[0], findings=list(findings))
        for name in list(self._findings):
            if name not in snapshot.invalid:
                del self._findings[name]
        for name in list(self._last_good):
            if name not in units and name not in invalid:
                del self._last_good[name]
