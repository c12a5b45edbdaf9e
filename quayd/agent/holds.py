"""Operators' holds (``quayctl stop``): which units stay stopped, persisted across restarts.

The one piece of the agent's memory besides update records that quay persists: an operator's
stop must survive an agent restart (and a reboot), so ``holds.json`` is written atomically each
time a hold is set or lifted. Ad-hoc units (``quayctl run``) can be held too, but only in
memory: they do not outlive the agent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from quayd.agent.events import EventLog
from quayd.agent.logs import logger
from quayd.reconcile.records import write_json_atomically

log = logger("quayd")

HOLDS_FILE = "holds.json"


class Holds:
    """The held units; the only writer of ``STATE_DIR/holds.json``."""

    def __init__(
        self, state_dir: Path, events: EventLog, transient: Callable[[], Collection[str]]
    ) -> None:
        self.path = state_dir / HOLDS_FILE
        self._events = events
        self._transient = transient
        """The names not to persist (the ad-hoc units of this agent)."""
        self._held: set[str] = set()

    def __contains__(self, name: object) -> bool:
        return name in self._held

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._held))

    def among(self, names: Collection[str]) -> frozenset[str]:
        """The held units of ``names`` (what the planner is told)."""
        return frozenset(name for name in self._held if name in names)

    def load(self) -> None:
        """Read the holds a previous agent saved; an unreadable file holds nothing (logged)."""
        try:
            document = json.loads(self.path.read_text())
            self._held = {str(name) for name in document.get("held", [])}
        except FileNotFoundError:
            self._held = set()
        except (OSError, ValueError, AttributeError) as error:
            log.error("holds file unreadable; no unit is held", file=str(self.path),
                      error=str(error))  # fmt: skip
            self._held = set()

    async def set(self, name: str, *, held: bool, message: str) -> None:
        """Set or lift a hold, persist it, say so (nothing when it is so already)."""
        if (name in self._held) == held:
            return
        if held:
            self._held.add(name)
        else:
            self._held.discard(name)
        await asyncio.to_thread(self._save)
        self._events.emit(name, "held" if held else "released", message)
        log.info("held" if held else "released", unit=name)

    def forget(self, name: str) -> None:
        """An ad-hoc unit is gone: its hold (never persisted) goes with it."""
        self._held.discard(name)

    def _save(self) -> None:
        transient = set(self._transient())
        held = sorted(name for name in self._held if name not in transient)
        write_json_atomically(self.path, {"version": 1, "held": held})
