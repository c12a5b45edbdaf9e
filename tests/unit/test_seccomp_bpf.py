"""OCI linux.seccomp → the libseccomp calls crun 1.8.1 makes, and the cache key (pure parts)."""

from __future__ import annotations

import base64
import errno
import re
from typing import Any

import pytest

from quayd.isolation.seccomp import DEFAULT_PROFILE_PATH, load_default_profile
from quayd.isolation.seccomp_bpf import (
    ACT_ALLOW,
    ACT_KILL_PROCESS,
    ACT_KILL_THREAD,
    ACT_LOG,
    ACT_TRAP,
    ANNOTATION,
    OPERATORS,
    ArgCmp,
    NotPrecompilableError,
    RuleCall,
    action_value,
    annotation,
    cache_key,
    plan,
    valid_program,
)
from quayd.isolation.spec import seccomp_for
from quayd.units.model import Unit

EQ, NE, MASKED_EQ = (
    OPERATORS["SCMP_CMP_EQ"],
    OPERATORS["SCMP_CMP_NE"],
    OPERATORS["SCMP_CMP_MASKED_EQ"],
)


def errno_action(code: int) -> int:
    return 0x00050000 | code


def oci(*syscalls: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ERRNO", **top, "syscalls": [*syscalls]}


# --- actions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "errno_ret", "value"),
    [
        ("SCMP_ACT_ALLOW", None, ACT_ALLOW),
        ("SCMP_ACT_ERRNO", None, errno_action(errno.EPERM)),  # crun's default errno
        ("SCMP_ACT_ERRNO", errno.ENOSYS, errno_action(errno.ENOSYS)),
        ("SCMP_ACT_TRACE", None, 0x7FF00000 | errno.EPERM),
        ("SCMP_ACT_TRACE", 7, 0x7FF00007),
        ("SCMP_ACT_LOG", None, ACT_LOG),
        ("SCMP_ACT_TRAP", None, ACT_TRAP),
        ("SCMP_ACT_KILL", None, ACT_KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", None, 0),
        ("SCMP_ACT_KILL_PROCESS", None, ACT_KILL_PROCESS),
    ],
)
def test_actions_have_libseccomps_values(name: str, errno_ret: int | None, value: int) -> None:
    assert action_value(name, errno_ret) == value


@pytest.mark.parametrize(
    ("name", "errno_ret", "reason"),
    [
        ("SCMP_ACT_NOTIFY", None, "listener"),
        ("SCMP_ACT_ALLOW", 1, "errnoRet"),  # crun refuses it: leave the refusal to crun
        ("SCMP_ACT_SOMETHING", None, "unknown"),
        (None, None, "unknown"),
    ],
)
def test_actions_raw_data_cannot_carry_take_the_json_path(
    name: str | None, errno_ret: int | None, reason: str
) -> None:
    with pytest.raises(NotPrecompilableError, match=reason):
        action_value(name, errno_ret)


# --- the plan ------------------------------------------------------------------------------------


def test_default_action_architectures_and_one_call_per_name() -> None:
    result = plan(
        oci(
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["vmsplice"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            defaultErrnoRet=38,
            architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        )
    )
    assert result.default_action == errno_action(errno.ENOSYS)
    assert result.architectures == ("x86_64", "x86", "x32")  # seccomp_arch_resolve_name's
    assert result.rules == (
        RuleCall(ACT_ALLOW, "read"),
        RuleCall(ACT_ALLOW, "write"),
        RuleCall(errno_action(errno.EPERM), "vmsplice"),
    )


def test_rules_with_the_default_action_are_left_out_as_crun_does() -> None:
    result = plan(
        oci(
            {"names": ["add_key"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"},  # EPERM: not the default
            defaultErrnoRet=38,
        )
    )
    assert result.rules == (RuleCall(errno_action(errno.EPERM), "keyctl"),)


def test_no_architectures_means_the_native_one_only() -> None:
    assert plan(oci()).architectures == ()


def test_comparisons_on_distinct_arguments_are_one_rule() -> None:
    rule = {
        "names": ["socket"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 22,
        "args": [
            {"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
            {"index": 2, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
        ],
    }
    assert plan(oci(rule, defaultAction="SCMP_ACT_ALLOW")).rules == (
        RuleCall(
            errno_action(errno.EINVAL),
            "socket",
            (ArgCmp(0, EQ, 16, 0), ArgCmp(2, EQ, 9, 0)),  # both must match
        ),
    )


def test_comparisons_on_the_same_argument_are_a_rule_each() -> None:
    # crun cannot AND two comparisons of one argument: it adds a rule per comparison (OR).
    rule = {
        "names": ["personality", "clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [
            {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
            {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 1, "op": "SCMP_CMP_NE"},
        ],
    }
    rules = plan(oci(rule)).rules
    assert rules == tuple(
        RuleCall(ACT_ALLOW, name, (arg,))
        for name in ("personality", "clone")
        for arg in (ArgCmp(0, EQ, 0, 0), ArgCmp(0, EQ, 8, 0), ArgCmp(1, NE, 1, 0))
    )


def test_masked_eq_keeps_ocis_order_value_then_value_two() -> None:
    # clone's namespace flags in Docker's profile: (flags & 0x7E020000) == 0.
    rule = {
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
    }
    (call,) = plan(oci(rule)).rules
    assert call.args == (ArgCmp(0, MASKED_EQ, 0x7E020000, 0),)


def test_64_bit_values_pass_whole() -> None:
    rule = {
        "names": ["personality"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 2**64 - 1, "valueTwo": 2**63, "op": "SCMP_CMP_GE"}],
    }
    (call,) = plan(oci(rule)).rules
    assert call.args == (ArgCmp(0, OPERATORS["SCMP_CMP_GE"], 2**64 - 1, 2**63),)


def test_at_most_six_comparisons_as_crun() -> None:
    args = [{"index": i % 6, "value": i, "op": "SCMP_CMP_NE"} for i in range(8)]
    (call,) = plan(oci({"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": args})).rules
    assert [a.value for a in call.args] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("top", "reason"),
    [
        ({"listenerPath": "/run/agent.sock"}, "listenerPath"),
        ({"flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}, "NEW_LISTENER"),
        ({"defaultAction": "SCMP_ACT_NOTIFY"}, "NOTIFY"),
        ({"architectures": [""]}, "architecture"),
    ],
)
def test_what_raw_data_cannot_carry(top: dict[str, Any], reason: str) -> None:
    with pytest.raises(NotPrecompilableError, match=reason):
        plan(oci(**top))


@pytest.mark.parametrize(
    ("arg", "reason"),
    [
        ({"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}, "index"),
        ({"index": 0, "value": 0, "op": "SCMP_CMP_ABOUT"}, "operator"),
    ],
)
def test_bad_comparisons_are_left_to_crun(arg: dict[str, Any], reason: str) -> None:
    with pytest.raises(NotPrecompilableError, match=reason):
        plan(oci({"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [arg]}))


def test_a_notify_rule_takes_the_json_path() -> None:
    with pytest.raises(NotPrecompilableError, match="NOTIFY"):
        plan(oci({"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}))


def test_flags_crun_knows_are_fine_they_travel_in_the_json() -> None:
    flags = [
        "SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    ]
    assert plan(oci(flags=flags)).rules == ()


@pytest.mark.skipif(not DEFAULT_PROFILE_PATH.is_file(), reason="no containers-common profile")
def test_debians_default_profile() -> None:
    unit = Unit.model_validate({"container": {"image": "busybox", "cap_drop": ["AUDIT_WRITE"]}})
    seccomp = seccomp_for(unit, load_default_profile())
    assert seccomp is not None
    result = plan(seccomp)
    assert result.default_action == errno_action(errno.ENOSYS)
    calls = {(rule.syscall, rule.action, rule.args) for rule in result.rules}
    assert ("vmsplice", errno_action(errno.EPERM), ()) in calls
    assert ("getpid", ACT_ALLOW, ()) in calls
    assert ("add_key", ACT_ALLOW, ()) not in calls  # not listed: the default (ENOSYS)
    assert ("personality", ACT_ALLOW, (ArgCmp(0, EQ, 0xFFFFFFFF, 0),)) in calls
    # Without CAP_AUDIT_WRITE: socket(AF_NETLINK, *, NETLINK_AUDIT) fails with EINVAL.
    audit = (ArgCmp(0, EQ, 16, 0), ArgCmp(2, EQ, 9, 0))
    assert ("socket", errno_action(errno.EINVAL), audit) in calls


# --- key and annotation --------------------------------------------------------------------------


def key(seccomp: dict[str, Any], **overrides: Any) -> str:
    values: dict[str, Any] = {
        "machine": "x86_64",
        "library_version": (2, 5, 4),
        "api_level": 6,
        **overrides,
    }
    return cache_key(seccomp, **values)


def test_cache_key_is_the_canonical_filter_and_what_compiling_depends_on() -> None:
    one = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "A"}]}
    same = {"syscalls": [{"action": "A", "names": ["read"]}], "defaultAction": "SCMP_ACT_ERRNO"}
    assert key(one) == key(same)
    assert re.fullmatch(r"[0-9a-f]{64}", key(one))
    assert key(one) != key({**one, "defaultErrnoRet": 38})
    assert key(one) != key(one, machine="aarch64")
    assert key(one) != key(one, library_version=(2, 5, 5))
    assert key(one) != key(one, api_level=5)


def test_annotation_is_base64_of_the_raw_program() -> None:
    program = bytes(range(256)) * 2
    (name, value), *_ = annotation(program).items()
    assert name == ANNOTATION == "run.oci.seccomp_bpf_data"
    assert base64.b64decode(value, validate=True) == program


@pytest.mark.parametrize(
    ("size", "valid"), [(0, False), (7, False), (8, True), (9000, True), (4096 * 8 + 8, False)]
)
def test_a_program_is_whole_instructions_within_the_kernels_limit(size: int, valid: bool) -> None:
    assert valid_program(b"\0" * size) is valid
