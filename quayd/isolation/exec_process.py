"""The process of an ``exec`` in a running container, from the container's own spec (pure).

``crun exec ID CMD`` and ``runc exec ID CMD`` build the new process from their command-line
options, not from the container's ``config.json``: without ``--no-new-privs`` it may gain
privileges through a setuid binary, and the capabilities, rlimits and user are the runtime's
defaults rather than the container's. Both runtimes also take the whole process as a file
(``exec --process FILE``, the OCI ``process`` object), and that is how quay runs every exec (its
API's, health checks, ``quayctl exec -it``): :func:`exec_process` takes the container's
``process`` and replaces only what an exec is about, so the new process has the container's
``noNewPrivileges``, capability sets, rlimits, user, environment and working directory. The
seccomp filter and the namespaces, cgroup and LSM labels are the container's anyway (the runtime
applies the container's ``linux`` section to every process it starts in it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from quayd.isolation.errors import IsolationError

# Keys of the container's process that describe its first process only, never an exec's.
_FIRST_PROCESS_ONLY = ("args", "commandLine", "consoleSize", "terminal")
_NUMERIC_USER = re.compile(r"(\d{1,10})(?::(\d{1,10}))?")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


class ExecProcessError(IsolationError):
    """The container's spec gives no process to start an exec from, or the request is unusable."""


def exec_process(
    container_spec: Mapping[str, Any],
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    terminal: bool = False,
) -> dict[str, Any]:
    """The OCI ``process`` object that runs ``argv`` in the container of ``container_spec``.

    ``env`` entries replace or add to the container's environment; ``cwd`` replaces its working
    directory; ``user`` (``UID[:GID]``, numbers only: names would have to be looked up in the
    image) replaces its user, without the supplementary groups.
    """
    if not argv:
        raise ExecProcessError("exec needs a command")
    base = container_spec.get("process")
    if not isinstance(base, Mapping):
        raise ExecProcessError("the container's config.json has no process to exec like")
    process = {key: value for key, value in base.items() if key not in _FIRST_PROCESS_ONLY}
    process["args"] = list(argv)
    process["terminal"] = terminal
    process["env"] = _env(base.get("env"), env or {})
    if cwd is not None:
        if not cwd.startswith("/"):
            raise ExecProcessError(f"the working directory {cwd!r} is not absolute")
        process["cwd"] = cwd
    if user is not None:
        process["user"] = _user(user)
    # Only the container's own init speaks for its readiness: an exec'd process that finds
    # NOTIFY_SOCKET (systemd-notify in a health check) must not mark it ready.
    process["env"] = [entry for entry in process["env"] if not entry.startswith("NOTIFY_SOCKET=")]
    process.setdefault("noNewPrivileges", True)
    return process


def _env(container: Any, overrides: Mapping[str, str]) -> list[str]:
    entries = [entry for entry in container if isinstance(entry, str)] if container else []
    for key in overrides:
        if not key or "=" in key or "\0" in key or "\0" in overrides[key]:
            raise ExecProcessError(f"{key!r} is not an environment variable name")
    kept = [entry for entry in entries if entry.partition("=")[0] not in overrides]
    return kept + [f"{key}={value}" for key, value in overrides.items()]


def _user(user: str) -> dict[str, int]:
    match = _NUMERIC_USER.fullmatch(user)
    if not match:
        raise ExecProcessError(f"exec user {user!r} is not UID or UID:GID (numbers)")
    uid = int(match[1])
    gid = int(match[2]) if match[2] is not None else uid
    if uid > _MAX_ID or gid > _MAX_ID:
        raise ExecProcessError(f"exec user {user!r}: an id above {_MAX_ID}")
    return {"uid": uid, "gid": gid}
