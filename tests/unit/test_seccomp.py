"""containers/common seccomp profiles → OCI linux.seccomp, on hand-written profiles and Debian's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation.errors import SeccompProfileError
from quayd.isolation.seccomp import (
    DEFAULT_PROFILE_PATH,
    kernel_version,
    load_default_profile,
    native_arch,
    oci_seccomp,
)
from quayd.isolation.spec import DEFAULT_CAPABILITIES

NO_CAPS: frozenset[str] = frozenset()


def profile(*syscalls: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, **top, "syscalls": [*syscalls]}


def allow(name: str, **extra: Any) -> dict[str, Any]:
    return {"names": [name], "action": "SCMP_ACT_ALLOW", **extra}


def names_of(result: dict[str, Any]) -> list[str]:
    return [name for rule in result["syscalls"] for name in rule["names"]]


def convert(
    prof: dict[str, Any],
    *,
    arch: str = "amd64",
    caps: frozenset[str] = NO_CAPS,
    kernel: tuple[int, int] | None = (6, 1),
) -> dict[str, Any]:
    return oci_seccomp(prof, arch=arch, capabilities=caps, kernel=kernel)


# --- hand-written profiles -----------------------------------------------------------------------


def test_top_level_fields() -> None:
    result = convert(profile(allow("read"), flags=["SECCOMP_FILTER_FLAG_LOG"]))
    assert result == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}],
    }


def test_non_oci_fields_are_dropped_and_args_kept() -> None:
    rule = {
        "names": ["personality"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 1,
        "errno": "EPERM",
        "comment": "x",
        "includes": {},
        "excludes": {},
        "args": [
            {"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 1, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"},
        ],
    }
    assert convert(profile(rule))["syscalls"] == [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [
                {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 1, "op": "SCMP_CMP_MASKED_EQ", "valueTwo": 3},
            ],
        }
    ]


def test_null_args_and_single_name() -> None:
    rule = {"name": "socket", "action": "SCMP_ACT_ALLOW", "args": None}
    assert convert(profile(rule))["syscalls"] == [{"names": ["socket"], "action": "SCMP_ACT_ALLOW"}]


ARCH_MAP = [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
]


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("amd64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("arm64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ("ppc64le", None),  # no archMap entry: the runtime uses the native architecture
        ("s390x", None),  # known name, but this profile has no entry for it
    ],
)
def test_arch_map(arch: str, expected: list[str] | None) -> None:
    result = convert(profile(allow("read"), archMap=ARCH_MAP), arch=arch)
    assert result.get("architectures") == expected


def test_plain_architectures_list_is_kept() -> None:
    result = convert(profile(allow("read"), architectures=["SCMP_ARCH_X86_64"]))
    assert result["architectures"] == ["SCMP_ARCH_X86_64"]


def test_architectures_and_arch_map_together_are_refused() -> None:
    with pytest.raises(SeccompProfileError, match="both"):
        convert(profile(architectures=["SCMP_ARCH_X86_64"], archMap=ARCH_MAP))


CAP_RULES = profile(
    allow("always"),
    allow("with_admin", includes={"caps": ["CAP_SYS_ADMIN"]}),
    allow("with_both", includes={"caps": ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]}),
    {
        "names": ["without_admin"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 1,
        "excludes": {"caps": ["CAP_SYS_ADMIN"]},
    },
    allow("without_either", excludes={"caps": ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]}),
)


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        (set(), ["always", "without_admin", "without_either"]),
        ({"CAP_SYS_ADMIN"}, ["always", "with_admin"]),
        ({"CAP_SYS_PTRACE"}, ["always", "without_admin"]),
        ({"CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}, ["always", "with_admin", "with_both"]),
    ],
)
def test_capability_conditions(caps: set[str], expected: list[str]) -> None:
    assert names_of(convert(CAP_RULES, caps=frozenset(caps))) == expected


ARCH_RULES = profile(
    allow("x86_only", includes={"arches": ["amd64", "x32", "x86"]}),
    allow("arm_only", includes={"arches": ["arm", "arm64"]}),
    allow("not_on_s390", excludes={"arches": ["s390", "s390x"]}),
)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("amd64", ["x86_only", "not_on_s390"]),
        ("arm64", ["arm_only", "not_on_s390"]),
        ("s390x", []),
    ],
)
def test_arch_conditions(arch: str, expected: list[str]) -> None:
    assert names_of(convert(ARCH_RULES, arch=arch)) == expected


KERNEL_RULES = profile(
    allow("new_kernel", includes={"minKernel": "4.8"}),
    {"names": ["old_kernel"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "5.10"}},
)


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ((4, 4), ["old_kernel"]),
        ((4, 8), ["new_kernel", "old_kernel"]),
        ((5, 9), ["new_kernel", "old_kernel"]),
        ((5, 10), ["new_kernel"]),
        ((6, 1), ["new_kernel"]),
        (None, ["old_kernel"]),  # unknown: older than any minKernel
    ],
)
def test_kernel_conditions(kernel: tuple[int, int] | None, expected: list[str]) -> None:
    assert names_of(convert(KERNEL_RULES, kernel=kernel)) == expected


def test_conditions_combine() -> None:
    prof = profile(allow("x", includes={"caps": ["CAP_BPF"], "arches": ["amd64"]}))
    assert names_of(convert(prof, caps=frozenset({"CAP_BPF"}))) == ["x"]
    assert names_of(convert(prof, caps=frozenset({"CAP_BPF"}), arch="arm64")) == []
    assert names_of(convert(prof)) == []


@pytest.mark.parametrize(
    ("prof", "message"),
    [
        ({"syscalls": []}, "no defaultAction"),
        ({"defaultAction": ""}, "no defaultAction"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}, "not a list"),
        (profile("read"), r"syscalls\[0\] is not an object"),  # type: ignore[arg-type]
        (profile({"names": ["read"]}), "has no action"),
        (profile({"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}), "both 'name'"),
        (profile(allow("read", includes={"minKernel": "four"})), "minKernel"),
        (profile(allow("read", args=[{"index": -1, "op": "SCMP_CMP_EQ"}])), "index"),
        (profile(allow("read", args=[{"index": 0, "value": 1}])), "op"),
        (profile(allow("read", errnoRet="EPERM")), "errnoRet"),
        (profile(allow("read", includes="caps")), "includes is not an object"),
        (profile(allow("read", includes={"caps": "CAP_X"})), "not a list"),
        (profile(defaultErrnoRet=True), "defaultErrnoRet"),
        (profile(archMap=["SCMP_ARCH_X86_64"]), r"archMap\[0\]"),
    ],
)
def test_malformed_profiles_are_refused(prof: dict[str, Any], message: str) -> None:
    with pytest.raises(SeccompProfileError, match=message):
        convert(prof)


def test_empty_names_rule_is_skipped() -> None:
    assert convert(profile({"names": [], "action": "SCMP_ACT_ALLOW"}))["syscalls"] == []


# --- loading -------------------------------------------------------------------------------------


def test_load_missing_profile_is_none(tmp_path: Path) -> None:
    assert load_default_profile(tmp_path / "none.json") is None


def test_load_profile(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile(allow("read"))))
    assert load_default_profile(path) == profile(allow("read")) | {"syscalls": [allow("read")]}


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_load_broken_profile_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(SeccompProfileError, match=str(path)):
        load_default_profile(path)


def test_load_unreadable_profile_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SeccompProfileError, match="cannot be read"):
        load_default_profile(tmp_path)  # a directory


@pytest.mark.parametrize(
    ("machine", "expected"),
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("i686", "x86"), ("s390x", "s390x")],
)
def test_native_arch(machine: str, expected: str) -> None:
    assert native_arch(machine) == expected


@pytest.mark.parametrize(
    ("release", "expected"),
    [("6.1.0-18-amd64", (6, 1)), ("5.15.0", (5, 15)), ("4.19", (4, 19)), ("weird", None)],
)
def test_kernel_version(release: str, expected: tuple[int, int] | None) -> None:
    assert kernel_version(release) == expected


def test_host_helpers() -> None:
    assert native_arch()
    assert kernel_version() is not None


# --- Debian's /usr/share/containers/seccomp.json -------------------------------------------------


@pytest.fixture(scope="module")
def debian_profile() -> dict[str, Any]:
    loaded = load_default_profile()
    if loaded is None:
        pytest.skip(
            f"{DEFAULT_PROFILE_PATH} absent: apt-get install golang-github-containers-common"
        )
    return dict(loaded)


def allowed(result: dict[str, Any]) -> set[str]:
    return {
        name
        for rule in result["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
        for name in rule["names"]
    }


def errno_rules(result: dict[str, Any]) -> set[str]:
    return {
        name
        for rule in result["syscalls"]
        if rule["action"] == "SCMP_ACT_ERRNO" and "args" not in rule
        for name in rule["names"]
    }


def test_debian_profile_with_docker_defaults(debian_profile: dict[str, Any]) -> None:
    result = convert(debian_profile, caps=DEFAULT_CAPABILITIES)
    assert result["defaultAction"] == "SCMP_ACT_ERRNO"
    assert result["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    ok = allowed(result)
    assert {"read", "write", "openat", "execve", "clone", "exit_group"} <= ok
    assert "arch_prctl" in ok  # amd64 only
    assert "arm_fadvise64_64" not in ok  # arm only
    assert "chroot" in ok  # CAP_SYS_CHROOT is a default capability
    # This profile (Podman's) leaves mount, unshare and ptrace to the capability checks.
    assert {"mount", "unshare", "ptrace"} <= ok
    assert {"kexec_load", "userfaultfd", "swapon"} <= errno_rules(result)
    # Capability-guarded calls are refused with EPERM (not the default ENOSYS) without the cap.
    denied = errno_rules(result)
    for name in ("bpf", "perf_event_open", "kcmp", "process_madvise", "init_module", "acct",
                 "settimeofday", "ioperm", "vhangup", "open_by_handle_at"):  # fmt: skip
        assert name not in ok, name
        assert name in denied, name
    for rule in result["syscalls"]:
        assert set(rule) <= {"names", "action", "errnoRet", "args"}
        for arg in rule.get("args", []):
            assert set(arg) <= {"index", "value", "valueTwo", "op"}
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize(
    ("cap", "syscalls"),
    [
        ("CAP_SYS_PTRACE", {"kcmp", "process_madvise"}),
        (
            "CAP_SYS_ADMIN",
            {"bpf", "fanotify_init", "lookup_dcookie", "perf_event_open", "quotactl"},
        ),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_RAWIO", {"ioperm", "iopl"}),
        ("CAP_SYS_PACCT", {"acct"}),
        ("CAP_SYS_TTY_CONFIG", {"vhangup"}),
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
    ],
)
def test_debian_profile_cap_conditional_syscalls(
    debian_profile: dict[str, Any], cap: str, syscalls: set[str]
) -> None:
    without = convert(debian_profile, caps=DEFAULT_CAPABILITIES)
    with_cap = convert(debian_profile, caps=DEFAULT_CAPABILITIES | {cap})
    assert syscalls <= allowed(with_cap)
    assert not syscalls & allowed(without)
    assert syscalls <= errno_rules(without)
    assert not syscalls & errno_rules(with_cap)


def test_debian_profile_audit_socket_rules_follow_cap_audit_write(
    debian_profile: dict[str, Any],
) -> None:
    def socket_rules(caps: frozenset[str]) -> list[dict[str, Any]]:
        result = convert(debian_profile, caps=caps)
        return [r for r in result["syscalls"] if r["names"] == ["socket"]]

    with_audit = socket_rules(DEFAULT_CAPABILITIES | {"CAP_AUDIT_WRITE"})  # cap_add
    assert with_audit == [{"names": ["socket"], "action": "SCMP_ACT_ALLOW"}]
    without = socket_rules(DEFAULT_CAPABILITIES)  # not a default since podman's set
    assert without
    assert all("args" in r for r in without)


def test_debian_profile_on_arm64(debian_profile: dict[str, Any]) -> None:
    result = convert(debian_profile, arch="arm64", caps=DEFAULT_CAPABILITIES)
    assert result["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arm_fadvise64_64" in allowed(result)
    assert "arch_prctl" not in allowed(result)
