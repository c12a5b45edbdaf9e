"""A seccomp profile in the containers/common (Docker) format → an OCI ``linux.seccomp`` object.

The profile Debian installs at ``/usr/share/containers/seccomp.json`` is not in OCI form: it
has an ``archMap`` (the native architecture and its compatible sub-architectures) and rules
guarded by ``includes``/``excludes`` conditions on the container's capabilities, the
architecture and the kernel version. Converting means picking the architectures and the rules
that apply to one container, exactly as containers/common's ``setupSeccomp`` (and moby's) do:

- ``includes.caps``: every listed capability is in the container's bounding set;
  ``excludes.caps``: none of them is.
- ``includes.arches`` / ``excludes.arches``: the architecture is / is not listed (libseccomp
  names: ``amd64``, ``x86``, ``x32``, ``arm64``, ``arm``, ``s390x``, ...).
- ``includes.minKernel``: the kernel is at least that version; ``excludes.minKernel``: it is
  older. An unknown kernel counts as older than any ``minKernel`` (the strict reading: such
  rules usually allow something only newer kernels make safe).

The conversion is pure; :func:`load_default_profile` reads the file and :func:`native_arch` /
:func:`kernel_version` describe the running host.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from quayd.isolation.errors import SeccompProfileError

DEFAULT_PROFILE_PATH = Path("/usr/share/containers/seccomp.json")
MAX_PROFILE_SIZE = 4 << 20

# libseccomp's names for the native architecture (what ``includes.arches`` lists) → the SCMP_ARCH
# constant ``archMap`` entries are keyed by. Only these have archMap entries in containers/common;
# on the others the OCI object lists no architectures and the runtime uses the native one.
SECCOMP_ARCHES = {
    "amd64": "SCMP_ARCH_X86_64",
    "arm64": "SCMP_ARCH_AARCH64",
    "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mipsel64": "SCMP_ARCH_MIPSEL64",
    "mipsel64n32": "SCMP_ARCH_MIPSEL64N32",
    "s390x": "SCMP_ARCH_S390X",
}
# ``uname -m`` → libseccomp's name.
_MACHINE_ARCHES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "x86",
    "i686": "x86",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
}
_KERNEL = re.compile(r"(\d+)\.(\d+)")


def load_default_profile(path: Path = DEFAULT_PROFILE_PATH) -> Mapping[str, Any] | None:
    """The profile at ``path``; None when there is no such file (the caller says so in its logs).

    A file that exists but is not a profile is an error: running without the filter the
    administrator installed would be a silent loss of isolation.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PROFILE_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SeccompProfileError(
            f"seccomp profile {path} cannot be read: {error.strerror}"
        ) from None
    if len(data) > MAX_PROFILE_SIZE:
        raise SeccompProfileError(f"seccomp profile {path} is over {MAX_PROFILE_SIZE} bytes")
    try:
        profile = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise SeccompProfileError(f"seccomp profile {path} is not valid JSON: {error}") from None
    if not isinstance(profile, dict):
        raise SeccompProfileError(f"seccomp profile {path} is not a JSON object")
    return profile


def oci_seccomp(
    profile: Mapping[str, Any],
    *,
    arch: str,
    capabilities: frozenset[str],
    kernel: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object of ``profile`` for one container.

    ``arch`` is libseccomp's name of the native architecture (:func:`native_arch`),
    ``capabilities`` the container's bounding set (``"CAP_SYS_ADMIN"``, ...), ``kernel`` the
    host's ``(major, minor)`` (:func:`kernel_version`) or None when unknown.
    """
    default_action = profile.get("defaultAction")
    if not isinstance(default_action, str) or not default_action:
        raise SeccompProfileError("seccomp profile has no defaultAction")
    result: dict[str, Any] = {"defaultAction": default_action}
    if "defaultErrnoRet" in profile and profile["defaultErrnoRet"] is not None:
        result["defaultErrnoRet"] = _whole(profile["defaultErrnoRet"], "defaultErrnoRet")
    architectures = _architectures(profile, arch)
    if architectures:
        result["architectures"] = architectures
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            result[key] = profile[key]

    syscalls = profile.get("syscalls")
    if syscalls is None:
        syscalls = []
    if not isinstance(syscalls, list):
        raise SeccompProfileError("seccomp profile 'syscalls' is not a list")
    rules = []
    for index, rule in enumerate(syscalls):
        where = f"syscalls[{index}]"
        if not isinstance(rule, Mapping):
            raise SeccompProfileError(f"seccomp profile {where} is not an object")
        if _applies(rule, where, arch=arch, capabilities=capabilities, kernel=kernel):
            converted = _rule(rule, where)
            if converted is not None:
                rules.append(converted)
    result["syscalls"] = rules
    return result


def native_arch(machine: str | None = None) -> str:
    """libseccomp's name of an architecture from ``uname -m`` (the host's when not given)."""
    machine = machine if machine is not None else os.uname().machine
    return _MACHINE_ARCHES.get(machine, machine)


def kernel_version(release: str | None = None) -> tuple[int, int] | None:
    """``(major, minor)`` from a kernel release such as ``"6.1.0-18-amd64"`` (the host's)."""
    release = release if release is not None else os.uname().release
    match = _KERNEL.match(release)
    return (int(match[1]), int(match[2])) if match else None


# --- conversion ----------------------------------------------------------------------------------


def _architectures(profile: Mapping[str, Any], arch: str) -> list[str]:
    listed = profile.get("architectures") or []
    arch_map = profile.get("archMap") or []
    if listed and arch_map:
        raise SeccompProfileError(
            "seccomp profile has both 'architectures' and 'archMap'; use one of them"
        )
    if listed:
        return [_text(a, "architectures[]") for a in _list(listed, "architectures")]
    native = SECCOMP_ARCHES.get(arch)
    for index, entry in enumerate(_list(arch_map, "archMap")):
        if not isinstance(entry, Mapping):
            raise SeccompProfileError(f"seccomp profile archMap[{index}] is not an object")
        if native is not None and entry.get("architecture") == native:
            subs = _list(entry.get("subArchitectures") or [], f"archMap[{index}]")
            return [native, *(_text(s, f"archMap[{index}].subArchitectures[]") for s in subs)]
    return []


def _applies(
    rule: Mapping[str, Any],
    where: str,
    *,
    arch: str,
    capabilities: frozenset[str],
    kernel: tuple[int, int] | None,
) -> bool:
    includes = _conditions(rule.get("includes"), f"{where}.includes")
    excludes = _conditions(rule.get("excludes"), f"{where}.excludes")
    if excludes.get("arches") and arch in excludes["arches"]:
        return False
    if excludes.get("caps") and any(c in capabilities for c in excludes["caps"]):
        return False
    if excludes.get("minKernel") and _at_least(kernel, excludes["minKernel"], where):
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if includes.get("caps") and not all(c in capabilities for c in includes["caps"]):
        return False
    minimum = includes.get("minKernel")
    return not minimum or _at_least(kernel, minimum, where)


def _conditions(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SeccompProfileError(f"seccomp profile {where} is not an object")
    conditions: dict[str, Any] = {}
    for key in ("arches", "caps"):
        if value.get(key):
            conditions[key] = [_text(v, f"{where}.{key}[]") for v in _list(value[key], where)]
    if value.get("minKernel"):
        conditions["minKernel"] = _text(value["minKernel"], f"{where}.minKernel")
    return conditions


def _at_least(kernel: tuple[int, int] | None, minimum: str, where: str) -> bool:
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?", minimum)
    if not match:
        raise SeccompProfileError(f"seccomp profile {where}: minKernel {minimum!r} is not X.Y")
    return kernel is not None and kernel >= (int(match[1]), int(match[2]))


def _rule(rule: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    name = rule.get("name")
    names = rule.get("names")
    if name and names:
        raise SeccompProfileError(f"seccomp profile {where} has both 'name' and 'names'")
    listed = [name] if name else _list(names or [], f"{where}.names")
    if not listed:
        return None
    action = rule.get("action")
    if not isinstance(action, str) or not action:
        raise SeccompProfileError(f"seccomp profile {where} has no action")
    converted: dict[str, Any] = {
        "names": [_text(n, f"{where}.names[]") for n in listed],
        "action": action,
    }
    if rule.get("errnoRet") is not None:
        converted["errnoRet"] = _whole(rule["errnoRet"], f"{where}.errnoRet")
    args = [_arg(a, f"{where}.args[]") for a in _list(rule.get("args") or [], f"{where}.args")]
    if args:
        converted["args"] = args
    return converted


def _arg(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SeccompProfileError(f"seccomp profile {where} is not an object")
    arg: dict[str, Any] = {
        "index": _whole(value.get("index"), f"{where}.index"),
        "value": _whole(value.get("value", 0), f"{where}.value"),
        "op": _text(value.get("op"), f"{where}.op"),
    }
    if value.get("valueTwo"):
        arg["valueTwo"] = _whole(value["valueTwo"], f"{where}.valueTwo")
    return arg


def _list(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise SeccompProfileError(f"seccomp profile {where} is not a list")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SeccompProfileError(f"seccomp profile {where} is not a non-empty string")
    return value


def _whole(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise SeccompProfileError(f"seccomp profile {where} is not a whole number")
    return value
