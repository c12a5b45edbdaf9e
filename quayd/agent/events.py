"""What happened, in order: the agent's event log behind ``quayctl events``.

Every event has a sequence number, a time, the unit it concerns, a kind and a message a person
can read ("exited 1; restarting in 4s"). The log keeps the last :data:`KEEP` events in memory
(an agent restart starts a new log: the journal holds the long history, since every event is
also logged). Followers wait on a condition: no polling, and a slow follower only misses what
fell out of the ring, which it is told (``kind = "lost"``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

KEEP = 1000

KINDS = frozenset(
    {
        "changed",
        "invalid",
        "pulling",
        "pulled",
        "pull-failed",
        "starting",
        "started",
        "ready",
        "unhealthy",
        "healthy",
        "exited",
        "restarting",
        "stopping",
        "stopped",
        "removed",
        "held",
        "released",
        "lost",
        "update-available",
        "update-check-failed",
        "updating",
        "updated",
        "update-failed",
    }
)


@dataclass(frozen=True)
class Event:
    seq: int
    at: float
    unit: str
    kind: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "unit": self.unit,
            "kind": self.kind,
            "message": self.message,
            **self.fields,
        }


class EventLog:
    def __init__(self, *, keep: int = KEEP, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=keep)
        self._seq = 0
        self._clock = clock
        self._changed: asyncio.Condition | None = None
        self._wakers: set[asyncio.Task[None]] = set()

    def emit(self, unit: str, kind: str, message: str, **fields: Any) -> Event:
        assert kind in KINDS, kind
        self._seq += 1
        event = Event(self._seq, self._clock(), unit, kind, message, fields)
        self._events.append(event)
        if self._changed is not None:
            self._notify()
        return event

    def _notify(self) -> None:
        condition = self._condition()

        async def wake() -> None:
            async with condition:
                condition.notify_all()

        task = asyncio.get_running_loop().create_task(wake())
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def since(self, seq: int) -> list[Event]:
        return [event for event in self._events if event.seq > seq]

    @property
    def last_seq(self) -> int:
        return self._seq

    async def follow(self, since: int = 0, *, follow: bool = True) -> AsyncIterator[Event]:
        """The events after ``since``, then (``follow``) new ones as they come, forever."""
        seen = since
        condition = self._condition()
        while True:
            pending = self.since(seen)
            if pending and pending[0].seq > seen + 1 and seen > 0:
                yield Event(0, self._clock(), "", "lost", f"{pending[0].seq - seen - 1} events")
            for event in pending:
                yield event
                seen = event.seq
            if not follow:
                return
            async with condition:
                if not self.since(seen):
                    await condition.wait()
