"""The containers' hosts files, once per burst of starts and removals: each bridged unit's
name and address for the others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from quayd.agent.logs import logger
from quayd.agent.work import Work
from quayd.reconcile.executor import Executor
from quayd.units.model import Unit

log = logger("quayd")

PEER_SYNC_QUIET = 0.05
PEER_SYNC_MAX = 0.5
"""After a bridged unit starts or a unit is removed, the other containers' hosts files are
rewritten once the starts have been quiet for PEER_SYNC_QUIET s, at most PEER_SYNC_MAX s after
the first (one pass over every file per burst, not one per start)."""


class PeerSync:
    """Owns when the peers' hosts files are rewritten next."""

    def __init__(
        self, executor: Executor, work: Work, all_units: Callable[[], Mapping[str, Unit]]
    ) -> None:
        self._executor = executor
        self._work = work
        self._all_units = all_units
        self._changed_at: tuple[float, float] | None = None
        """(first, last) change the peers' hosts files have not seen yet."""
        self._task: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """A unit's name or address came or went: the others need it, soon but once per
        burst (see :data:`PEER_SYNC_QUIET`)."""
        now = time.monotonic()
        first = self._changed_at[0] if self._changed_at is not None else now
        self._changed_at = (first, now)
        if self._task is None or self._task.done():
            self._task = self._work.spawn(self._sync())

    async def _sync(self) -> None:
        while self._changed_at is not None:
            first, last = self._changed_at
            now = time.monotonic()
            wait = min(last + PEER_SYNC_QUIET, first + PEER_SYNC_MAX) - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._changed_at = None  # changes from now on get the next sync
            try:
                await self._work.run(self._executor.sync_peers, self._all_units())
            except Exception as error:  # the 30 s resync repairs what this missed
                log.warning("peers' hosts files not updated", error=str(error))
