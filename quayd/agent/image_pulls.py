"""``POST /v1/images/pull``: a pull an operator asks for (``quayctl image pull``), by the agent.

Why through the agent: it has the HTTP client, the settings and the store already loaded, so the
command only sends a request and prints what comes back (about 0.1 s of process start-up instead
of the half second a standalone pull spends importing pydantic, httpx and the store); and the
pull shares the agent's registry connections, credentials cache and download limits. The store
is flock-protected, so a standalone pull (``quayctl image pull --local``, or no agent running)
is still safe beside it.

The answer is a stream of JSON objects (NDJSON): ``{"progress": {...}}`` for each layer step
(at most :data:`PROGRESS_EVERY` apart per layer, plus every change of phase), then one
``{"pulled": {...}}`` with the reference, digest and platform stored. A failed pull ends the
stream with ``{"error": {...}}`` (the API server's last line for an exception).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quayd.agent.api import RequestError
from quayd.images.model import Platform
from quayd.reconcile.executor import ExecutorError
from quayd.units.reference import parse_reference

if TYPE_CHECKING:
    from quayd.images.model import ImageRecord
    from quayd.images.pull import PullProgress
    from quayd.reconcile.executor import Executor

PROGRESS_EVERY = 0.1
"""Seconds between two progress lines of one layer in the same phase."""

Work = Callable[..., Awaitable[Any]]
"""The agent's ``_work``: runs a blocking call in its action pool."""


@dataclass(frozen=True)
class PullRequest:
    reference: str
    platform: Platform | None


def parse_request(params: Mapping[str, Any], state_dir: Path) -> PullRequest:
    """Check the parameters before the stream starts, so a bad one is a 400 (or a 409)."""
    reference = params.get("reference")
    if not isinstance(reference, str) or not reference:
        raise RequestError("bad-request", "reference: an image reference is required")
    try:
        normalised = str(parse_reference(reference))
    except ValueError as error:
        raise RequestError("bad-request", f"reference: {error}") from error
    platform_text = params.get("platform")
    platform = None
    if platform_text is not None:
        if not isinstance(platform_text, str):
            raise RequestError("bad-request", 'platform: a string such as "linux/arm64/v8"')
        try:
            platform = Platform.parse(platform_text)
        except ValueError as error:
            raise RequestError("bad-request", f"platform: {error}") from error
    wanted_store = params.get("state_dir")
    if wanted_store is not None and Path(str(wanted_store)).resolve() != state_dir.resolve():
        # The caller named another store than this agent's: it must pull there itself.
        raise RequestError(
            "conflict", f"this agent's state directory is {state_dir}, not {wanted_store}"
        )
    return PullRequest(reference=normalised, platform=platform)


class ProgressThrottle:
    """Keeps a layer's progress lines to a few a second; a change of phase always goes out."""

    def __init__(self, every: float = PROGRESS_EVERY, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._last: dict[str, tuple[str, float]] = {}

    def wanted(self, digest: str, phase: str) -> bool:
        now = self.clock()
        previous = self._last.get(digest)
        if previous is not None and previous[0] == phase and now - previous[1] < self.every:
            return False
        self._last[digest] = (phase, now)
        return True


def progress_json(step: PullProgress) -> dict[str, Any]:
    return {
        "progress": {
            "kind": step.kind,
            "digest": step.digest,
            "phase": step.phase,
            "done": step.done,
            "total": step.total,
        }
    }


def pulled_json(record: ImageRecord) -> dict[str, Any]:
    return {
        "pulled": {
            "reference": record.reference,
            "digest": record.manifest_digest,
            "platform": str(record.platform),
        }
    }


async def pull_stream(
    request: PullRequest, executor: Executor, work: Work, on_pulled: Callable[[], None]
) -> AsyncIterator[dict[str, Any]]:
    """Run the pull in the action pool; yield its progress, then the image (or raise)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    throttle = ProgressThrottle()

    def report(step: PullProgress) -> None:  # called from the pull's threads
        if step.kind == "layer" and throttle.wanted(step.digest, step.phase):
            loop.call_soon_threadsafe(queue.put_nowait, progress_json(step))

    pulling = asyncio.ensure_future(
        work(executor.pull_reference, request.reference, request.platform, report)
    )
    try:
        while not pulling.done():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({pulling, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        while not queue.empty():
            yield queue.get_nowait()
        try:
            record = pulling.result()
        except ExecutorError as error:
            raise RequestError("failed", f"pulling {request.reference}: {error}") from error
        on_pulled()
        yield pulled_json(record)
    finally:
        # A client that went away does not stop the pull (its content is kept, as docker does);
        # the future's result is only dropped.
        if not pulling.done():
            pulling.add_done_callback(_consume)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
