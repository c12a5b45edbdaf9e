"""How the agent's records read in the API's JSON (pure): exits and actions."""

from __future__ import annotations

from typing import Any

from quayd.reconcile.model import Action, Exit, Stop
from quayd.reconcile.plan import describe_exit


def exit_json(exit_: Exit) -> dict[str, Any]:
    return {
        "at": exit_.at,
        "code": exit_.code,
        "signal": exit_.signal,
        "oom": exit_.oom,
        "description": describe_exit(exit_),
    }


def action_json(action: Action) -> dict[str, Any]:
    return {
        "kind": type(action).__name__.lower(),
        "unit": action.unit,
        "reason": action.reason,
        **({"why": action.why} if isinstance(action, Stop) else {}),
    }
