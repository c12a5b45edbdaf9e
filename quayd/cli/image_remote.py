"""``quayctl image pull`` through the running agent (``POST /v1/images/pull``, docs/api.md).

The agent has the HTTP client, the settings and the store loaded already, so this path costs a
request instead of the imports of a pull (about half a second). It imports only the API client
and the progress line. When no agent answers on the socket, or the agent keeps another state
directory than the one this command resolves, or the caller may not change things through the
agent, the caller pulls in-process instead (:mod:`quayd.cli.image_actions`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from quayd.cli import client
from quayd.cli.progress import ProgressDisplay

EXIT_OK = 0
EXIT_FAILED = 1
PULL_PATH = "/v1/images/pull"
_LOCAL = ("conflict", "forbidden", "not-found", "method-not-allowed", "not-implemented")
"""Refusals after which the command pulls in-process: another store, no permission, an older
agent without the route."""


_asked: list[bool] = []
"""Whether :func:`pull` ran in this process already (quayctl's lean path tries it first; the
full parser's handler then does not ask the agent a second time)."""


def pull(args: argparse.Namespace) -> int | None:
    """Pull through the agent; None when the agent cannot do it here (pull in-process)."""
    if _asked:
        return None
    _asked.append(True)
    from quayd.cli.quayctl import DEFAULT_STATE_DIR, agent_socket, setting_dir  # noqa: PLC0415

    socket_path = agent_socket(args)
    state_dir = setting_dir(args, "state_dir", DEFAULT_STATE_DIR)
    if socket_path is None or state_dir is None or not socket_path.exists():
        return None
    body: dict[str, Any] = {"reference": args.reference, "state_dir": str(state_dir)}
    if args.platform:
        body["platform"] = args.platform
    display = None if args.quiet or not sys.stderr.isatty() else ProgressDisplay(args.reference)
    try:
        pulled = _follow(socket_path, body, display)
    except client.AgentUnreachableError:
        return None
    except client.AgentError as error:
        if display:
            display.finish()
        if error.status != 200 and error.code in _LOCAL:
            return None
        print(f"quayctl: {error.message}", file=sys.stderr)
        return EXIT_FAILED
    if display:
        display.finish()
    print(f"{pulled['reference']} {pulled['digest']} {pulled['platform']}")
    return EXIT_OK


def _follow(
    socket_path: Any, body: dict[str, Any], display: ProgressDisplay | None
) -> dict[str, Any]:
    """Read the stream to its ``pulled`` line, drawing progress on the way."""
    for item in client.stream(socket_path, PULL_PATH, timeout=None, method="POST", body=body):
        step = item.get("progress")
        if isinstance(step, dict) and display is not None:
            display.layer(
                str(step.get("digest")),
                int(step.get("done") or 0),
                int(step.get("total") or 0),
                str(step.get("phase")),
            )
        pulled = item.get("pulled")
        if isinstance(pulled, dict):
            return pulled
    raise client.AgentError("bad-reply", "the pull's stream ended without its image", 200)
