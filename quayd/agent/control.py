"""What the API may read of the agent and ask of it: frozen views and the :class:`Control`
protocol. The handlers (handlers.py) see only this: they never reach into the agent's rooms,
and the agent's rooms never see HTTP. ``quayd.agent.agent.Agent`` implements it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from quayd.agent.events import EventLog
from quayd.isolation.cgroups import Usage
from quayd.reconcile.model import Action, Exit, Plan
from quayd.units.model import Unit


@dataclass(frozen=True)
class AgentInfo:
    pid: int
    version: str
    started_at: float
    config_dir: str
    passes: int
    last_pass_at: float | None


@dataclass(frozen=True)
class UnitView:
    """One unit as the last pass left it, with its container if one runs."""

    name: str
    state: str
    ready: bool
    detail: str
    """The planner's line, with the last action's error when it waits or backs off."""
    next_attempt: float | None
    findings: tuple[str, ...]
    held: bool
    restarts: int
    unit: Unit | None
    """The version it runs or would run (an invalid file's last good one)."""
    image: str | None
    """The desired unit's image (None for a unit that is only a container now)."""
    ip: str | None
    exits: tuple[Exit, ...]
    running: bool
    pid: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    digest: str | None = None
    status_text: str | None = None
    health: str | None = None
    health_failures: int = 0
    health_history: tuple[tuple[float, bool], ...] = ()


@dataclass(frozen=True)
class RunRequest:
    """An ad-hoc unit (``quayctl run``), its request checked."""

    name: str | None
    unit: Unit
    tty: bool
    rm: bool
    interactive: bool
    attach: bool
    console_size: tuple[int, int] | None


@dataclass(frozen=True)
class ExecResult:
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Preview:
    """What the agent would do with another config directory."""

    plan: Plan
    findings: tuple[str, ...]


class Control(Protocol):
    """The agent as its API sees it. Queries change nothing; commands raise
    :class:`~quayd.agent.api.RequestError` with a code and a message for a person."""

    events: EventLog

    # --- queries -----------------------------------------------------------------------------

    def info(self) -> AgentInfo: ...

    def units(self) -> list[UnitView]:
        """Every unit the last pass planned, by name."""
        ...

    def unit(self, name: str) -> UnitView | None:
        """A unit the agent knows (planned, desired or running); None for any other name."""
        ...

    def planned(self) -> tuple[tuple[Action, ...], float | None]:
        """The last pass's actions and when it wakes next."""
        ...

    def starts(self) -> Mapping[str, tuple[str, int]]:
        """Per unit: the hash it runs and how many containers of that hash started."""
        ...

    def exits(self) -> Mapping[str, tuple[Exit, ...]]: ...

    async def usage(self, name: str) -> Usage | None: ...

    async def preview(self, config_dir: Path) -> Preview:
        """The plan for ``config_dir``'s files (raises QuayConfigError when unreadable)."""
        ...

    # --- commands ----------------------------------------------------------------------------

    async def hold(self, name: str, *, held: bool, message: str) -> None: ...

    async def next_pass(self) -> int:
        """Wake the loop; the number of the first pass planned with what the caller changed."""
        ...

    async def restart(self, name: str) -> None: ...

    async def exec(self, name: str, argv: list[str], timeout: float) -> ExecResult: ...

    async def signal(self, name: str, signal_name: str) -> None: ...

    async def run_adhoc(self, request: RunRequest) -> tuple[str, int | None]:
        """Start an ad-hoc unit; its name and its container's pid (None: it ended already)."""
        ...

    async def remove(self, name: str) -> None: ...

    async def pull_image(self, params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def update(self, params: Mapping[str, Any]) -> Any: ...
