"""Live restore at the agent's start: containers a previous agent left are adopted (same PID,
exit watching re-armed), recorded as ended when they ended unwatched, or removed when they were
ad-hoc; what units no longer in any file left behind is cleaned up.

It decides nothing beyond what a container found is: the supervisor records it, and the first
pass plans from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from quayd.agent.adhoc import ADHOC_LABEL
from quayd.agent.logs import logger
from quayd.agent.supervision import Supervisor
from quayd.agent.work import Work
from quayd.isolation.container import KILL_TIMEOUT
from quayd.net.network import Network
from quayd.reconcile.executor import Executor
from quayd.units.directory import LoadCache, load_directory
from quayd.units.findings import QuayConfigError

log = logger("quayd")

GONE_POLL = 0.05


async def adopt(executor: Executor, supervisor: Supervisor, work: Work) -> None:
    """Each container found on the host: adopted, recorded as ended, or (ad-hoc) removed.
    First, what creates killed with the previous agent left in cgroups is ended."""
    for name in await asyncio.to_thread(executor.end_dead_creates):
        log.warning("ended what a create killed with the last agent left", unit=name)
    for found in await asyncio.to_thread(executor.find_containers):
        record = found.record
        if record is not None and record.unit.container.labels.get(ADHOC_LABEL):
            await _end_adhoc_left(executor, work, found.name, found.pid if found.running else None)
            continue
        if found.running and found.pid and record is not None:
            events = await asyncio.to_thread(executor.watch_oom, found.pid)
            supervisor.adopt(found.name, record, found.pid, events)
            continue
        # Ended while no agent watched (or no record to adopt it by): exit status unknown.
        result = await work.run(executor.finish, found.name, None, killed=False, events=None)
        if record is not None:
            supervisor.found_ended(found.name, record, result)
        log.info("found ended", unit=found.name, running=found.running)


async def _end_adhoc_left(executor: Executor, work: Work, name: str, pid: int | None) -> None:
    """An ad-hoc container (``quayctl run``) of a previous agent is not adopted: its request
    and its terminal died with that agent. It is killed and removed (its network goes with
    the leftovers)."""
    if pid is not None:
        with contextlib.suppress(Exception):
            await work.run(executor.signal, name, "SIGKILL")
        deadline = asyncio.get_running_loop().time() + KILL_TIMEOUT
        while _alive(pid) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(GONE_POLL)
    await work.run(executor.finish, name, None, killed=pid is not None, events=None)
    log.info("removed an ad-hoc container of the previous agent", unit=name, pid=pid)


async def cleanup_leftovers(
    config_dir: Path, cache: LoadCache, network: Network, adopted: set[str]
) -> None:
    """Network leftovers of units in no file (valid or not) and not adopted, removed."""
    try:
        snapshot = await asyncio.to_thread(load_directory, config_dir, cache)
        existing = set(snapshot.units) | set(snapshot.invalid) | adopted
    except QuayConfigError:
        return
    report = await asyncio.to_thread(network.cleanup, existing)
    for removed in report.removed:
        log.info("removed leftover", what=removed)
    for error in report.errors:
        log.warning("leftover not removed", error=error)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
