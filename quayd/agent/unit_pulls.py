"""Pulls of units' images: each unit's pull state (in flight, last error, backoff), the pull
itself with its progress events. Operators' pulls (``quayctl image pull``) are image_pulls.py.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quayd.agent.events import EventLog
from quayd.agent.logs import logger
from quayd.agent.work import Work
from quayd.reconcile.executor import Executor, ExecutorError
from quayd.reconcile.model import DesiredUnit, ImageState
from quayd.reconcile.plan import pull_backoff

if TYPE_CHECKING:
    from quayd.agent.metrics import AgentMetrics
    from quayd.images.model import ImageRecord
    from quayd.images.pull import PullProgress

log = logger("quayd")

PROGRESS_EVERY = 1.0
"""Seconds between two "pulling" progress events of one pull."""


@dataclass
class PullState:
    pulling: bool = False
    checked_at: float | None = None
    error: str | None = None
    failures: int = 0
    retry_at: float | None = None

    def observed(self, present: bool) -> ImageState:
        return ImageState(
            present=present,
            pulling=self.pulling,
            checked_at=self.checked_at,
            error=self.error,
            retry_at=self.retry_at,
        )


class UnitPulls:
    """Each unit's pull state; its only writer."""

    def __init__(
        self,
        *,
        executor: Executor,
        work: Work,
        events: EventLog,
        clock: Callable[[], float],
        metrics: AgentMetrics | None,
    ) -> None:
        self._executor = executor
        self._work = work
        self._events = events
        self._clock = clock
        self._metrics = metrics
        self._states: dict[str, PullState] = {}

    def observed(
        self, units: Mapping[str, DesiredUnit], present: Collection[str]
    ) -> dict[str, ImageState]:
        """What the planner reads of each unit's image (``present``: the stored references)."""
        return {
            name: self._states.get(name, PullState()).observed(
                self._executor.reference(entry.unit) in present
            )
            for name, entry in units.items()
        }

    def error(self, name: str) -> str | None:
        """The last pull's error, until a pull succeeds."""
        state = self._states.get(name)
        return state.error if state is not None else None

    def forget(self, name: str) -> None:
        """The unit is gone, or its next pull starts afresh (an update's target)."""
        self._states.pop(name, None)

    async def pull(
        self,
        name: str,
        entry: DesiredUnit,
        by_digest: str | None = None,
        failed: Callable[[str], None] | None = None,
    ) -> None:
        """Pull the unit's image (or ``by_digest``, a reference an update wants); a failure is
        an event, an error in status and a backoff (``failed`` is told its message)."""
        unit = entry.unit
        state = self._states.setdefault(name, PullState())
        state.pulling = True
        self._events.emit(name, "pulling", f"pulling {unit.container.image}")
        record: ImageRecord
        try:
            if by_digest is None:
                record = await self._work.run(self._executor.pull, unit, self._progress(name))
            else:
                record = await self._work.run(self._executor.pull_reference, by_digest)
        except ExecutorError as error:
            if failed is not None:
                failed(str(error))
            state.failures += 1
            state.error = str(error)
            state.retry_at = self._clock() + pull_backoff(state.failures)
            log.warning("pull failed", unit=name, error=str(error), retry_at=state.retry_at)
            self._events.emit(name, "pull-failed", str(error), retry_at=state.retry_at)
            return
        finally:
            state.pulling = False
        state.checked_at = self._clock()
        state.error = None
        state.failures = 0
        state.retry_at = None
        log.info("pulled", unit=name, image=record.reference, digest=record.manifest_digest)
        self._events.emit(
            name, "pulled", f"pulled {record.reference}", digest=record.manifest_digest
        )

    def _progress(self, name: str) -> Callable[[PullProgress], None]:
        """A progress callback for a pull (called from worker threads): a "pulling" event with
        the bytes so far, at most every :data:`PROGRESS_EVERY` seconds."""
        loop = asyncio.get_running_loop()
        layers: dict[str, tuple[int, int]] = {}
        last = [0.0]
        metrics = self._metrics

        def report(step: PullProgress) -> None:
            if metrics is not None and step.kind == "layer":
                metrics.on_pull_step(step.phase, step.total)
            if step.kind != "layer":
                return
            layers[step.digest] = (step.done, step.total)
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY:
                return
            last[0] = now
            done = sum(d for d, _ in layers.values())
            total = sum(t for _, t in layers.values())
            message = f"pulling {step.reference}: {_megabytes(done)} of {_megabytes(total)} MB"
            loop.call_soon_threadsafe(
                functools.partial(
                    self._events.emit, name, "pulling", message, done=done, total=total
                )
            )

        return report


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f}"
