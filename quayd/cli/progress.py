"""The progress line of ``quayctl image pull`` on a terminal, for a pull in this process (its
``PullProgress`` steps) or in the agent (the ``progress`` lines of its stream).

Light on purpose: the pull through the agent imports this and the API client, nothing more.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from quayd.images.pull import PullProgress

REDRAW_EVERY = 0.1
"""Seconds between two redraws (a layer becoming ready is drawn at once)."""


class ProgressDisplay:
    """One status line on a terminal, redrawn at most ten times a second."""

    def __init__(self, reference: str, stream: TextIO | None = None) -> None:
        self.reference = reference
        self.stream = stream or sys.stderr
        self.layers: dict[str, tuple[int, int, str]] = {}
        self._lock = threading.Lock()
        self._drawn = 0.0

    def __call__(self, event: PullProgress) -> None:
        if event.kind == "layer":
            self.layer(event.digest, event.done, event.total, event.phase)

    def layer(self, digest: str, done: int, total: int, phase: str) -> None:
        with self._lock:
            self.layers[digest] = (done, total, phase)
            now = time.monotonic()
            if now - self._drawn >= REDRAW_EVERY or phase in ("unpacked", "exists"):
                self._drawn = now
                self._draw()

    def _draw(self) -> None:
        done = sum(d for d, _, _ in self.layers.values())
        total = sum(t for _, t, _ in self.layers.values())
        ready = sum(1 for _, _, phase in self.layers.values() if phase in ("unpacked", "exists"))
        line = (
            f"Pulling {self.reference}: {_mb(done)}/{_mb(total)} MB, "
            f"{ready}/{len(self.layers)} layers ready"
        )
        self.stream.write("\r" + line[:200] + "\033[K")
        self.stream.flush()

    def finish(self) -> None:
        with self._lock:
            if self.layers:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f}"
