"""An ad-hoc unit (``POST /v1/run``) from its request: pure, so every rule is tested alone.

:func:`unit_document` turns the request's fields (docs/api.md, as ``quayctl run`` spells them
after Docker) into the unit document the agent validates as it validates a file; a field of the
wrong shape is a ``bad-request`` naming it. :func:`start_failure_code` tells a command that
could not be run (Docker's 126 and 127) from the other failures of a start.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from typing import Any

from quayd.agent.api import RequestError

ADHOC_LABEL = "quay.adhoc"
"""The label that marks an ad-hoc unit (``quayctl run``) in its container's record."""

NOT_FOUND = "command-not-found"
"""The error code of a run whose command does not exist in the image (Docker's exit 127)."""
NOT_EXECUTABLE = "command-not-executable"
"""The error code of a run whose command exists but cannot be executed (Docker's exit 126)."""

# The runtimes' words for an exec that failed (crun: "executable file `x` not found in $PATH",
# "open executable: Permission denied"; runc: "exec: \"x\": executable file not found in
# $PATH", "permission denied"), as Docker's daemon reads them to choose 127 or 126.
_NOT_FOUND = re.compile(r"executable file .{0,200}not found", re.I)
_NOT_EXECUTABLE = re.compile(
    r"(open executable|exec\b).{0,200}(permission denied|exec format error)", re.I
)

_STRINGS = ("image", "entrypoint", "network", "user", "workdir", "memory")


def unit_document(params: Mapping[str, Any]) -> dict[str, Any]:
    """The unit of a run request: ``image`` and ``argv`` (its Cmd), ``entrypoint`` (replaces
    the image's Entrypoint, and its Cmd unless ``argv`` is given, as ``docker run
    --entrypoint``), ``env``, ``volumes`` (``SRC:DST[:ro|rw]``: a bind when SRC is a path, a
    named volume otherwise), ``ports``, ``network``, ``memory``, ``user``, ``workdir``; restart
    policy ``"no"`` and the ad-hoc label."""
    for key in _STRINGS:
        value = params.get(key)
        if value is not None and not isinstance(value, str):
            raise RequestError("bad-request", f"{key} must be a string")
    image = params.get("image")
    if not image:
        raise RequestError("bad-request", "image must be an image reference")
    argv = _strings(params, "argv")
    ports = _strings(params, "ports") or []
    volumes = _strings(params, "volumes") or []
    env = params.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise RequestError("bad-request", "env must be an object of strings")
    container: dict[str, Any] = {"image": image, "labels": {ADHOC_LABEL: "true"}}
    entrypoint = params.get("entrypoint")
    if entrypoint is not None:
        container["command"] = [entrypoint] if entrypoint else []
        container["args"] = argv or []
    elif argv:
        container["args"] = argv
    if env:
        container["env"] = dict(env)
    for key in ("user", "workdir"):
        if params.get(key):
            container[key] = params[key]
    document: dict[str, Any] = {
        "container": container,
        "restart": {"policy": "no"},
        "network": {"ports": ports},
    }
    if params.get("network"):
        document["network"]["mode"] = params["network"]
    if params.get("memory"):
        document["resources"] = {"memory": params["memory"]}
    if volumes:
        document["mounts"] = [mount(spec) for spec in volumes]
    return document


def mount(spec: str) -> dict[str, Any]:
    """``-v SRC:DST[:ro|rw]`` as a ``[[mounts]]`` entry: a bind when SRC is an absolute path,
    a named volume otherwise (created on first use, as Docker does)."""
    parts = spec.split(":")
    read_only = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        read_only = parts.pop() == "ro"
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise RequestError(
            "bad-request", f"volume {spec!r} is not SOURCE:TARGET[:ro] (a path or a volume name)"
        )
    source, target = parts
    kind = "bind" if source.startswith("/") else "volume"
    entry: dict[str, Any] = {"type": kind, "source": source, "target": target}
    if read_only:
        entry["read_only"] = True
    return entry


def start_failure_code(message: str) -> str | None:
    """:data:`NOT_FOUND` or :data:`NOT_EXECUTABLE` when a start failed because the command
    could not be executed, else None (a failure of quay's own, Docker's 125)."""
    if _NOT_FOUND.search(message):
        return NOT_FOUND
    if _NOT_EXECUTABLE.search(message):
        return NOT_EXECUTABLE
    return None


def signal_param(params: Mapping[str, Any]) -> str:
    """The ``signal`` of a kill request: a name such as ``SIGINT`` (or ``INT``)."""
    value = params.get("signal", "SIGKILL")
    name = value if not isinstance(value, str) or value.startswith("SIG") else f"SIG{value}"
    if not isinstance(name, str) or name not in signal.Signals.__members__:
        raise RequestError("bad-request", "signal must be a signal's name, such as SIGINT")
    return name


def _strings(params: Mapping[str, Any], key: str) -> list[str] | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestError("bad-request", f"{key} must be a list of strings")
    return list(value)
