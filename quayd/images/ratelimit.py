"""A byte rate shared by the download threads of one pull (``[updates] bandwidth``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST_SECONDS = 0.25
"""Bytes worth this long may go at once: chunks arrive in bursts, and a sleep per chunk of a few
kilobytes would cost more than it paces."""


class RateLimiter:
    """Paces callers to ``rate`` bytes per second in total (a leaky bucket): each ``take``
    sleeps until its bytes fit."""

    def __init__(
        self,
        rate: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be above 0 bytes per second, not {rate}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._free_at = clock()
        """When the bytes taken so far will have gone at ``rate``."""

    def take(self, count: int) -> None:
        with self._lock:
            now = self._clock()
            self._free_at = max(self._free_at, now) + count / self.rate
            wait = self._free_at - now - BURST_SECONDS
        if wait > 0:
            self._sleep(wait)
