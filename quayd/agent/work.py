"""The agent's background work: the thread pool that runs blocking calls, and its tasks.

One owner for both, so a stopping agent finishes (or cancels) everything it started in one
place. The loop's own reads of the config directory use asyncio's default pool instead, so a
burst of 100 starts never holds up a pass, nor the watchdog with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from quayd.agent.logs import logger

ACTION_THREADS = 8
"""Worker threads for actions (pulls, starts, stops, health checks)."""
FINISH_SECONDS = 20.0
"""How long a stopping agent lets its actions in flight finish (TimeoutStopSec is 30 s)."""

T = TypeVar("T")

log = logger("quayd")


class Work:
    """Blocking calls in the action pool, and the agent's tasks (finished or cancelled when
    the agent stops)."""

    def __init__(self, threads: int = ACTION_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="quay-action")
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``function`` in the action pool and wait for it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: function(*args, **kwargs))

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as one of the agent's tasks."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def pending(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

    async def finish(self, timeout: float = FINISH_SECONDS) -> None:
        """Let tasks in flight end (a removal half done is worse than a later stop) for up to
        ``timeout`` seconds, within systemd's TimeoutStopSec; :meth:`close` cancels the rest."""
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            log.info("finishing actions before stopping", actions=len(pending))
            await asyncio.wait(pending, timeout=timeout)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
