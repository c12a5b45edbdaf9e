"""Rules that relate several keys of a unit, or several units, each pointing at the key it is about.

Pure functions over validated models: they return :class:`Problem`\\ s (a key path, a message, what
would be accepted); the loader turns them into findings with a file and a line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from quayd.units.fieldtypes import ABSOLUTE_ACCEPTED, absolute_path_problem
from quayd.units.model import (
    ContainerTable,
    HealthTable,
    Mount,
    NetworkTable,
    ReadyTable,
    ResourcesTable,
    RestartTable,
    Unit,
    UpdateTable,
)
from quayd.units.tomlpos import KeyPath
from quayd.units.values import PortMapping

# Sysctls that belong to a namespace the container has of its own (the list runc enforces).
_IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
        "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
    }
)  # fmt: skip
_SYSCTL_ACCEPTED = (
    'a sysctl of the container\'s own namespaces: net.* (not with network.mode = "host"), '
    "fs.mqueue.*, kernel.domainname, or one of " + ", ".join(sorted(_IPC_SYSCTLS))
)
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MIN_MEMORY = 6 * 1024 * 1024  # Docker's floor: below it a container cannot even start its runtime.


@dataclass(frozen=True)
class Problem:
    loc: KeyPath
    message: str
    accepted: str | None = None
    value: str | None = None


def check_unit(unit: Unit) -> list[Problem]:
    """Every rule that relates keys inside one unit."""
    return check_tables({name: getattr(unit, name) for name in Unit.model_fields})


def check_tables(tables: Mapping[str, Any]) -> list[Problem]:
    """The rules whose tables are all present in ``tables`` (validated table models by name).

    When some tables of a file are invalid, the rules over the others still run, so a file's
    problems are all reported at once.
    """
    problems: list[Problem] = []
    for needs, rule in _RULES:
        if all(name in tables for name in needs):
            problems += rule(*(tables[name] for name in needs))
    return problems


def _check_container(container: ContainerTable) -> list[Problem]:
    problems = []
    if container.command is not None and not container.command:
        problems.append(
            Problem(
                ("container", "command"),
                "an empty command would run nothing",
                "leave the key out to use the image's command",
            )
        )
    for index, cap in enumerate(container.cap_add):
        if cap in container.cap_drop and cap != "ALL":
            problems.append(
                Problem(("container", "cap_add", index), f"{cap} is in both cap_add and cap_drop")
            )
    return problems


def _check_sysctls(container: ContainerTable, network: NetworkTable) -> list[Problem]:
    problems = []
    for name in container.sysctls:
        problem = _sysctl_problem(name, host_network=network.mode == "host")
        if problem:
            problems.append(Problem(("container", "sysctls", name), problem, _SYSCTL_ACCEPTED))
    return problems


def _sysctl_problem(name: str, *, host_network: bool) -> str | None:
    name = name.replace("/", ".")
    if name.startswith("net."):
        if host_network:
            return 'net.* sysctls would change the host\'s network: not with network.mode = "host"'
        return None
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue.") or name == "kernel.domainname":
        return None
    if name == "kernel.hostname":
        return "set container.hostname instead"
    return "not namespaced: it would change the whole host"


def _check_restart(restart: RestartTable) -> list[Problem]:
    if restart.backoff_max < restart.backoff:
        return [
            Problem(
                ("restart", "backoff_max"),
                "backoff_max is shorter than backoff",
                "a duration at least as long as restart.backoff",
            )
        ]
    return []


def _check_ready(ready: ReadyTable) -> list[Problem]:
    if ready.mode == "tcp" and ready.port is None:
        return [
            Problem(
                ("ready", "mode"),
                'mode = "tcp" needs ready.port, the container port to connect to',
                "add port = 1-65535 to [ready]",
            )
        ]
    if ready.mode != "tcp" and ready.port is not None:
        return [Problem(("ready", "port"), 'port is used only with mode = "tcp"')]
    return []


def _check_health(health: HealthTable) -> list[Problem]:
    problems = []
    if health.command is not None and not health.command:
        problems.append(
            Problem(
                ("health", "command"),
                "an empty health command checks nothing",
                'an array such as ["/bin/check", "--quick"], or no key to use the image\'s',
            )
        )
    if health.interval is not None and not health.interval:
        problems.append(
            Problem(("health", "interval"), "the interval must be longer than 0s", 'e.g. "30s"')
        )
    if health.timeout is not None and not health.timeout:
        problems.append(
            Problem(("health", "timeout"), "the timeout must be longer than 0s", 'e.g. "5s"')
        )
    return problems


def _check_resources(resources: ResourcesTable) -> list[Problem]:
    memory = resources.memory
    if memory is not None and memory < MIN_MEMORY:
        return [
            Problem(
                ("resources", "memory"),
                "too little memory for any container to start",
                'a size of at least "6M"',
            )
        ]
    return []


def _check_network(network: NetworkTable) -> list[Problem]:
    problems = []
    if network.mode != "bridge":
        if network.ports:
            problems.append(
                Problem(
                    ("network", "ports"),
                    f'ports are published only with mode = "bridge", not "{network.mode}"',
                    'mode = "bridge", or no ports ("host" lets the container bind host ports)',
                )
            )
        if network.aliases:
            problems.append(
                Problem(
                    ("network", "aliases"),
                    f'aliases resolve only on the bridge, not with mode = "{network.mode}"',
                )
            )
    published = [(i, mapping) for i, spec in enumerate(network.ports) for mapping in spec.mappings]
    reported: set[int] = set()
    for position, (index, mapping) in enumerate(published):
        for earlier, other in published[:position]:
            if earlier != index and index not in reported and mapping.conflicts_with(other):
                reported.add(index)
                problems.append(
                    Problem(
                        ("network", "ports", index),
                        f"host port {mapping.host_port}/{mapping.protocol} "
                        f"is already published by ports[{earlier}]",
                    )
                )
    return problems


def _check_mounts(mounts: list[Mount]) -> list[Problem]:
    problems = []
    targets: dict[str, int] = {}
    for index, mount in enumerate(mounts):
        problems += [
            Problem(("mounts", index, *loc), message, accepted)
            for loc, message, accepted in _mount_problems(mount)
        ]
        target = mount.target.rstrip("/") or "/"
        if target == "/":
            problems.append(
                Problem(("mounts", index, "target"), "cannot mount over the container's root")
            )
        elif target in targets:
            problems.append(
                Problem(
                    ("mounts", index, "target"),
                    f"mounts[{targets[target]}] already mounts {target}",
                )
            )
        targets.setdefault(target, index)
    return problems


def _mount_problems(mount: Mount) -> list[tuple[KeyPath, str, str | None]]:
    problems: list[tuple[KeyPath, str, str | None]] = []
    if mount.type == "tmpfs":
        if mount.source is not None:
            problems.append((("source",), "a tmpfs mount has no source", "no source key"))
        if mount.size == 0:
            problems.append(
                (("size",), "a tmpfs of size 0 would be unlimited", 'a size such as "64M"')
            )
        return problems
    if mount.size is not None:
        problems.append((("size",), "size applies only to tmpfs mounts", "no size key"))
    if mount.source is None:
        what = "a volume name" if mount.type == "volume" else "an absolute host path"
        problems.append(((), f'a {mount.type} mount needs "source"', what))
    elif mount.type == "volume" and not _VOLUME_NAME.fullmatch(mount.source):
        problems.append(
            (
                ("source",),
                "not a volume name",
                "a name of letters, digits, '_', '.' and '-' (a host path needs type = \"bind\")",
            )
        )
    elif mount.type == "bind":
        problem = absolute_path_problem(mount.source)
        if problem:
            problems.append((("source",), f"bind source: {problem}", ABSOLUTE_ACCEPTED))
    return problems


def _check_update(container: ContainerTable, update: UpdateTable) -> list[Problem]:
    if update.policy == "registry" and container.image_reference.digest is not None:
        return [
            Problem(
                ("update", "policy"),
                "the image is pinned by digest: the registry can never offer another one",
                'a tag in container.image ("app:stable"), or policy = "off"',
            )
        ]
    return []


_RULES: list[tuple[tuple[str, ...], Callable[..., list[Problem]]]] = [
    (("container",), _check_container),
    (("container", "network"), _check_sysctls),
    (("restart",), _check_restart),
    (("ready",), _check_ready),
    (("health",), _check_health),
    (("resources",), _check_resources),
    (("network",), _check_network),
    (("mounts",), _check_mounts),
    (("container", "update"), _check_update),
]


# --- across units --------------------------------------------------------------------------------


def check_together(units: Mapping[str, Unit], known_names: set[str]) -> dict[str, list[Problem]]:
    """Rules across units: requires, dependency cycles, host ports, names.

    ``units`` are the valid units; ``known_names`` also holds the names of units whose files exist
    but are invalid (a unit may require one of those: its last good version may still run).
    """
    problems: dict[str, list[Problem]] = {name: [] for name in units}
    for name, unit in units.items():
        for index, needed in enumerate(unit.depends.requires):
            if needed == name:
                problems[name].append(
                    Problem(("depends", "requires", index), "a unit cannot require itself")
                )
            elif needed not in known_names:
                problems[name].append(
                    Problem(
                        ("depends", "requires", index),
                        f'there is no unit "{needed}" ({needed}.toml)',
                        "the name of another unit in the config directory",
                    )
                )
    for cycle in _cycles(units):
        text = " → ".join([*cycle, cycle[0]])
        for name in cycle:
            problems[name].append(
                Problem(("depends", "requires"), f"requires forms a cycle: {text}")
            )
    _check_ports_together(units, problems)
    _check_names_together(units, known_names, problems)
    return {name: found for name, found in problems.items() if found}


def _cycles(units: Mapping[str, Unit]) -> list[list[str]]:
    """Each dependency cycle once, as the units on it (Tarjan's strongly connected components)."""
    graph = {
        name: [n for n in unit.depends.requires if n in units and n != name]
        for name, unit in units.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        # Recursion depth is bounded by the number of units in one directory.
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def _check_ports_together(units: Mapping[str, Unit], problems: dict[str, list[Problem]]) -> None:
    published: list[tuple[str, int, PortMapping]] = [
        (name, index, mapping)
        for name, unit in sorted(units.items())
        for index, spec in enumerate(unit.network.ports)
        for mapping in spec.mappings
    ]
    reported: set[tuple[str, int]] = set()
    for position, (name, index, mapping) in enumerate(published):
        for other_name, other_index, other in published[position + 1 :]:
            if other_name == name or not mapping.conflicts_with(other):
                continue
            port = f"{mapping.host_port}/{mapping.protocol}"
            for here, at, there in ((name, index, other_name), (other_name, other_index, name)):
                if (here, at) not in reported:
                    reported.add((here, at))
                    problems[here].append(
                        Problem(
                            ("network", "ports", at),
                            f'host port {port} is also published by unit "{there}"',
                            "a host port (or host address) no other unit publishes",
                        )
                    )


def _check_names_together(
    units: Mapping[str, Unit], known_names: set[str], problems: dict[str, list[Problem]]
) -> None:
    """A name resolves to one unit: an alias cannot be another unit's name or another's alias.

    Names are compared case-insensitively, as DNS compares them.
    """
    claims: dict[str, list[tuple[str, int, str]]] = {}
    for name, unit in sorted(units.items()):
        for index, alias in enumerate(unit.network.aliases):
            claims.setdefault(alias.lower(), []).append((name, index, alias))
    for folded, claimants in claims.items():
        for name, index, alias in claimants:
            others = sorted({other for other, _, _ in claimants if other != name})
            if folded in known_names and folded != name:
                message = f'"{alias}" already names unit "{folded}"'
            elif others:
                message = f'"{alias}" is also an alias of unit "{others[0]}"'
            else:
                continue
            problems[name].append(
                Problem(
                    ("network", "aliases", index),
                    message,
                    "a name no other unit uses or answers to",
                )
            )
