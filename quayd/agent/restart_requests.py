"""Operators' restarts (``quayctl restart``) accepted and not carried out yet, persisted in
``STATE_DIR/restarts.json``: a restart the API accepted just before the agent crashed (or was
killed) is carried out by the next agent, not lost.

Each request names the container to replace by its start time: the planner stops that
container (and starts the unit again as usual); once the unit runs another container, or none,
the request is done and goes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

from quayd.agent.logs import logger
from quayd.reconcile.model import Container
from quayd.reconcile.records import write_json_atomically

log = logger("quayd")

RESTARTS_FILE = "restarts.json"


class RestartRequests:
    """The pending restarts; the only writer of ``restarts.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / RESTARTS_FILE
        self._pending: dict[str, float] = {}

    def pending(self) -> dict[str, float]:
        return dict(self._pending)

    def load(self) -> None:
        """What a previous agent accepted; an unreadable file is logged and holds none."""
        try:
            document = json.loads(self.path.read_text())
            self._pending = {
                str(name): float(started_at)
                for name, started_at in document.get("restarts", {}).items()
            }
        except FileNotFoundError:
            self._pending = {}
        except (OSError, ValueError, TypeError, AttributeError) as error:
            log.error("restart requests unreadable; none is pending", file=str(self.path),
                      error=str(error))  # fmt: skip
            self._pending = {}

    async def request(self, name: str, started_at: float) -> None:
        """Replace the unit's container that started at ``started_at`` (persisted first)."""
        self._pending[name] = started_at
        await asyncio.to_thread(self._save)

    async def settle(self, containers: Mapping[str, Container]) -> None:
        """Forget the requests carried out: their unit runs another container, or none."""
        done = [
            name
            for name, started_at in self._pending.items()
            if name not in containers or containers[name].started_at != started_at
        ]
        if not done:
            return
        for name in done:
            del self._pending[name]
        await asyncio.to_thread(self._save)

    def _save(self) -> None:
        write_json_atomically(self.path, {"version": 1, "restarts": self._pending})
