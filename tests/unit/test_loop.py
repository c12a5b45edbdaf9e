"""The loop with a fake pass, notifier and clock: what wakes a pass, how a burst of file
changes is coalesced, and what systemd is told (READY, RELOADING, WATCHDOG, STATUS)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from quayd.agent import loop as loop_module
from quayd.agent.loop import Loop


class Notifier:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def notify(self, state: str) -> None:
        self.sent.append(state)

    def kinds(self) -> list[str]:
        return [line.split("=")[0] for state in self.sent for line in state.split("\n")]


class Harness:
    def __init__(self, *, wake_at: float | None = None, watchdog: float | None = None) -> None:
        self.passes: list[float] = []
        self.notifier = Notifier()
        self.wake_at = wake_at
        self.loop = Loop(
            self.run_pass,
            clock=time.monotonic,
            notifier=self.notifier,
            wake_at=lambda: self.wake_at,
            status_line=lambda: f"{len(self.passes)} passes",
            watchdog_every=watchdog,
        )

    async def run_pass(self) -> None:
        self.passes.append(time.monotonic())

    async def running(self, body: Callable[[], Awaitable[Any]]) -> Any:
        task = asyncio.create_task(self.loop.run())
        try:
            return await body()
        finally:
            self.loop.stop()
            await asyncio.wait_for(task, 5)


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


def test_the_first_pass_comes_before_ready() -> None:
    harness = Harness()
    asyncio.run(harness.loop.first())
    assert len(harness.passes) == 1
    assert harness.notifier.sent == ["READY=1\nSTATUS=1 passes"]


def test_a_wake_runs_a_pass_and_pings_the_watchdog() -> None:
    harness = Harness()

    async def body() -> None:
        harness.loop.wake()
        await until(lambda: len(harness.passes) == 1)

    asyncio.run(harness.running(body))
    assert harness.notifier.sent[:2] == ["WATCHDOG=1", "WATCHDOG=1\nSTATUS=1 passes"]


def test_a_complete_file_change_runs_a_pass_at_once() -> None:
    harness = Harness()

    async def body() -> None:
        harness.loop.file_event("/etc/quay.d/web.toml", complete=True)
        await until(lambda: len(harness.passes) == 1)

    asyncio.run(harness.running(body))


def test_a_burst_of_files_is_one_pass_once_the_directory_is_quiet() -> None:
    harness = Harness()

    async def body() -> float:
        for index in range(5):
            harness.loop.file_event(f"/etc/quay.d/u{index}.toml", complete=False)
            await asyncio.sleep(0.005)
        last = time.monotonic()
        await until(lambda: len(harness.passes) >= 1)
        await asyncio.sleep(loop_module.COALESCE_SECONDS * 2)
        return last

    last = asyncio.run(harness.running(body))
    assert len(harness.passes) == 1  # one pass for the whole burst, after its last file
    assert harness.passes[0] >= last


def test_the_planners_moment_wakes_a_pass_without_any_event() -> None:
    harness = Harness(wake_at=time.monotonic() + 0.05)

    async def body() -> None:
        await until(lambda: len(harness.passes) == 1)

    asyncio.run(harness.running(body))
    assert harness.passes[0] >= harness.wake_at  # type: ignore[operator]


def test_a_reload_is_a_pass_between_reloading_and_ready() -> None:
    harness = Harness()
    heard: list[str] = []
    harness.loop.on_reload(lambda: heard.append("reload"))

    async def body() -> None:
        harness.loop.reload()
        await until(lambda: len(harness.passes) == 1)
        await until(lambda: "READY" in harness.notifier.kinds())

    asyncio.run(harness.running(body))
    assert heard == ["reload"]
    kinds = harness.notifier.kinds()
    assert kinds.index("RELOADING") < kinds.index("READY")


def test_a_stop_ends_the_loop_without_another_pass() -> None:
    harness = Harness()

    async def body() -> None:
        harness.loop.stop()
        await asyncio.sleep(0.05)

    asyncio.run(harness.running(body))
    assert harness.passes == []


def test_the_watchdog_is_kept_while_the_agent_stops() -> None:
    harness = Harness(watchdog=0.02)

    async def body() -> None:
        async with harness.loop.watchdog_kept():
            await asyncio.sleep(0.1)

    asyncio.run(body())
    assert harness.notifier.sent.count("WATCHDOG=1") >= 3
