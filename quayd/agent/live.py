"""A container this agent tracks (started by it, or adopted), as the supervisor holds it.

Written by two owners, each its own fields: :class:`~quayd.agent.supervision.Supervisor`
(what the container is: pid, record, OOM events, adoption, a stop waiting for its exit) and
:class:`~quayd.agent.probes.Probes` (what its checks found: readiness, health, STATUS text,
the probes' tasks and notify socket). Everyone else reads it through the supervisor.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from quayd.isolation.container import OomEvents
from quayd.isolation.notify import NotifySocket
from quayd.isolation.runtime import Exit as RuntimeExit
from quayd.reconcile.health import HealthState
from quayd.reconcile.model import Container
from quayd.reconcile.records import ContainerRecord


@dataclass
class Live:
    """A container this agent tracks."""

    name: str
    pid: int
    record: ContainerRecord
    oom_events: OomEvents | None = None
    adopted_at: float | None = None
    """When this agent adopted it (left running by a previous agent); None: started by it."""
    exited: asyncio.Future[RuntimeExit] | None = None
    """Set while a stop waits for the exit (the exit is then the stop's, not a crash)."""
    # The probes' fields:
    ready_at: float | None = None
    health: HealthState = field(default_factory=HealthState)
    health_history: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=10))
    status_text: str | None = None
    notify: NotifySocket | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def observed(self) -> Container:
        return Container(
            name=self.name,
            hash=self.record.hash,
            started_at=self.record.started_at,
            pid=self.pid,
            ready=self.ready_at is not None,
            ready_at=self.ready_at,
            unhealthy=self.health.unhealthy,
            status_text=self.status_text,
            unit=self.record.unit,
            digest=self.record.image_digest,
            watched_from=self.adopted_at,
        )

    def health_word(self) -> str | None:
        """None without a health check run yet; else unhealthy, healthy or starting."""
        if not self.health_history:
            return None
        if self.health.unhealthy:
            return "unhealthy"
        return "healthy" if self.health.healthy else "starting"


@dataclass(frozen=True)
class Launch:
    """How a container's stdio is set up (an ad-hoc unit's; a unit file's has the defaults)."""

    terminal: bool = False
    console_size: tuple[int, int] | None = None
    pipes: bool = False
    """Relayed stdio (to the log and the clients of ``quayctl run``): relay.py."""
    stdin: bool = False
