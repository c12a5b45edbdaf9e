"""How runs end and when they start again: the restart and pull backoffs, what counts as a
failure, and how an exit reads for a person. Pure; the planner and the agent use them (the
module docstring of :mod:`quayd.reconcile.plan` says why each choice is made)."""

from __future__ import annotations

import math
from datetime import timedelta

from quayd.reconcile.model import Exit, History
from quayd.units.model import RestartTable, Unit
from quayd.units.values import format_duration

PULL_BACKOFF_FIRST = 2.0
PULL_BACKOFF_MAX = 300.0
_MAX_DOUBLINGS = 64  # 2**64 times any backoff is past any cap; keeps the float finite


def backoff_delay(restart: RestartTable, restarts: int) -> float:
    """Seconds to wait before restart number ``restarts`` (1 = the first in a row)."""
    if restarts <= 0:
        return 0.0
    first = restart.backoff.total_seconds()
    cap = restart.backoff_max.total_seconds()
    return min(first * 2.0 ** min(restarts - 1, _MAX_DOUBLINGS), cap)


def pull_backoff(failures: int) -> float:
    """Seconds before retrying a pull after ``failures`` failed in a row: 2 s doubling to 5 min."""
    if failures <= 0:
        return 0.0
    return min(PULL_BACKOFF_FIRST * 2.0 ** min(failures - 1, _MAX_DOUBLINGS), PULL_BACKOFF_MAX)


def is_failure(exit: Exit) -> bool:
    """Whether ``on-failure`` restarts after this exit (see the module docstring)."""
    if exit.stopped_for == "failure":
        return True
    if exit.stopped_for is not None:  # replace, remove, shutdown: quay's own stop
        return False
    if not exit.known:  # ended while quayd was down: restart, the safe side on an edge device
        return True
    return exit.code != 0 or exit.signal is not None or exit.oom is True or not exit.ready


def record_exit(history: History | None, exit: Exit, unit: Unit) -> History:
    """The unit's History after ``exit``: the restart count that sets the next backoff."""
    previous = history.restarts if history is not None else 0
    if exit.stopped_for in ("replace", "remove", "hold"):
        restarts = 0  # a new version, a new file, an operator's start: afresh
    elif exit.stopped_for == "shutdown":
        restarts = previous
    else:
        ran_long = exit.at - exit.started_at >= unit.restart.reset_after.total_seconds()
        restarts = (0 if ran_long else previous) + 1
    return History(restarts=restarts, last_exit=exit)


def describe_exit(exit: Exit) -> str:
    """How a run ended, for a person: "exited 1", "killed by SIGKILL", "OOM-killed"."""
    if exit.stopped_for == "failure":
        text = "stopped as failed (not ready in time, or unhealthy)"
    elif exit.stopped_for == "shutdown":
        text = "stopped by quay's shutdown"
    elif exit.stopped_for == "hold":
        text = "stopped by an operator"
    elif exit.oom:
        text = "OOM-killed"
    elif exit.signal is not None:
        text = f"killed by {exit.signal}"
    elif exit.code is not None:
        text = f"exited {exit.code}"
    else:
        text = "exit status unknown"
    if not exit.ready and exit.stopped_for is None:
        text += " before it was ready"
    return text


def format_seconds(seconds: float) -> str:
    """A duration for a person: "60s", "90s", "5m", "1s500ms"."""
    if seconds < 120 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return format_duration(timedelta(seconds=seconds))


def countdown(seconds: float) -> str:
    return format_seconds(max(1, math.ceil(seconds)))
