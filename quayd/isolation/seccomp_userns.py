"""No new user namespaces inside a container: the seccomp rules that refuse them (pure).

containers-common's profile (podman's, and quay's default) allows ``clone``, ``clone3`` and
``unshare`` with any flags, so a process in the container can make a user namespace
(``unshare -Urm``), become "root" there and reach kernel code that only root could before:
mounting filesystems, netfilter, and much of the kernel's attack surface of recent years
(CVE-2022-0185, CVE-2023-32233, …). Docker's default profile refuses this to containers without
CAP_SYS_ADMIN; :func:`refuse_user_namespaces` does it the same way on an OCI filter:

- ``clone`` and ``unshare`` are allowed only when the flags (their first argument; the second
  for ``clone`` on s390x, where the kernel swaps them) do not hold ``CLONE_NEWUSER``; with it
  they fail with EPERM (Docker's profile leaves them to its default action, which is EPERM
  there and ENOSYS in containers-common's; EPERM is what a program expects from a refusal);
- ``clone3`` fails with ENOSYS, as in Docker's profile: its flags are in memory, which seccomp
  cannot read, and glibc (2.34+) and musl then fall back to ``clone``, which is checked.

Other namespaces need CAP_SYS_ADMIN in the container's own user namespace, which containers do
not have by default, so only the user namespace needs seccomp's help. ``fork``, threads and
``posix_spawn`` do not pass ``CLONE_NEWUSER`` and work unchanged. A unit opts out with
``[container] user_namespaces = true`` (for rootless podman, buildah or a sandboxing browser in
the container); a unit with CAP_SYS_ADMIN is left alone too, as Docker does.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Mapping
from typing import Any

CLONE_NEWUSER = 0x10000000
GUARDED = ("clone", "unshare")
_FLAGS_SECOND = frozenset({"s390x", "s390"})  # clone(stack, flags, …) there


def refuse_user_namespaces(seccomp: Mapping[str, Any], *, arch: str) -> dict[str, Any]:
    """``seccomp`` (an OCI ``linux.seccomp`` object) with new user namespaces refused.

    Only syscalls the filter allowed outright are narrowed: one it already refuses, or allows
    only with conditions of its own, stays as it is. ``arch`` is libseccomp's name of the
    native architecture (:func:`seccomp.native_arch`)."""
    result = copy.deepcopy(dict(seccomp))
    narrowed: list[str] = []
    rules: list[dict[str, Any]] = []
    for rule in result.get("syscalls") or []:
        names = list(rule.get("names") or [])
        plain_allow = rule.get("action") == "SCMP_ACT_ALLOW" and not rule.get("args")
        guarded = [name for name in names if plain_allow and name in (*GUARDED, "clone3")]
        if not guarded:
            rules.append(rule)
            continue
        narrowed += guarded
        kept = [name for name in names if name not in guarded]
        if kept:
            rules.append({**rule, "names": kept})
    for name in GUARDED:
        if name in narrowed:
            index = 1 if name == "clone" and arch in _FLAGS_SECOND else 0
            rules += _flag_rules(name, index)
    if "clone3" in narrowed:
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    result["syscalls"] = rules
    return result


def _flag_rules(name: str, index: int) -> list[dict[str, Any]]:
    def flag(value_two: int) -> list[dict[str, Any]]:
        # MASKED_EQ in OCI terms: (argument & value) == valueTwo.
        mask = {"index": index, "value": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ"}
        return [{**mask, "valueTwo": value_two}] if value_two else [mask]

    return [
        {"names": [name], "action": "SCMP_ACT_ALLOW", "args": flag(0)},
        {
            "names": [name],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EPERM,
            "args": flag(CLONE_NEWUSER),
        },
    ]
