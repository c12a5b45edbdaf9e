"""refuse_user_namespaces: clone/unshare with CLONE_NEWUSER refused, clone3 ENOSYS; the spec's
filter has it unless the unit allows user namespaces (or has CAP_SYS_ADMIN)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from quayd.isolation.seccomp import DEFAULT_PROFILE_PATH, load_default_profile
from quayd.isolation.seccomp_bpf import ACT_ALLOW, ArgCmp, plan
from quayd.isolation.seccomp_userns import CLONE_NEWUSER, refuse_user_namespaces
from quayd.isolation.spec import seccomp_for
from quayd.units.model import Unit

MASKED_EQ = 7


def errno_action(code: int) -> int:
    return 0x00050000 | code  # SCMP_ACT_ERRNO(code)


FILTER: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "syscalls": [
        {"names": ["read", "clone", "clone3", "unshare", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["setns"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
    ],
}


def flags_rules(index: int, name: str) -> list[dict[str, Any]]:
    masked = {"index": index, "value": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ"}
    return [
        {"names": [name], "action": "SCMP_ACT_ALLOW", "args": [masked]},
        {
            "names": [name],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EPERM,
            "args": [{**masked, "valueTwo": CLONE_NEWUSER}],
        },
    ]


def test_clone_and_unshare_allowed_only_without_clone_newuser() -> None:
    result = refuse_user_namespaces(FILTER, arch="amd64")
    assert result["syscalls"] == [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["setns"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        *flags_rules(0, "clone"),
        *flags_rules(0, "unshare"),
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    assert result["defaultAction"] == "SCMP_ACT_ERRNO"
    assert FILTER["syscalls"][0]["names"] == ["read", "clone", "clone3", "unshare", "write"]


def test_on_s390x_clones_flags_are_its_second_argument() -> None:
    result = refuse_user_namespaces(FILTER, arch="s390x")
    assert flags_rules(1, "clone")[0] in result["syscalls"]
    assert flags_rules(0, "unshare")[0] in result["syscalls"]


def test_what_the_filter_does_not_allow_outright_is_left_alone() -> None:
    seccomp = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}],
            },
        ],
    }
    assert refuse_user_namespaces(seccomp, arch="amd64") == seccomp


def test_libseccomp_takes_both_rules_of_one_syscall() -> None:
    """crun's own calls (seccomp_bpf.plan mirrors them) accept the pair of rules."""
    result = plan(refuse_user_namespaces(FILTER, arch="amd64"))
    calls = {(rule.syscall, rule.action, rule.args) for rule in result.rules}
    newuser = ArgCmp(0, MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
    assert ("unshare", ACT_ALLOW, (ArgCmp(0, MASKED_EQ, CLONE_NEWUSER, 0),)) in calls
    assert ("unshare", errno_action(errno.EPERM), (newuser,)) in calls
    # clone3's ENOSYS is the default action here, so crun adds no rule for it at all.
    assert result.default_action == errno_action(errno.ENOSYS)
    assert not [call for call in calls if call[0] == "clone3"]


@pytest.mark.skipif(not DEFAULT_PROFILE_PATH.is_file(), reason="no containers-common profile")
@pytest.mark.parametrize(
    ("container", "refused"),
    [
        pytest.param({}, True, id="default"),
        pytest.param({"user_namespaces": True}, False, id="user_namespaces"),
        pytest.param({"cap_add": ["SYS_ADMIN"]}, False, id="sys_admin"),
        pytest.param({"cap_add": ["NET_ADMIN"]}, True, id="other-cap"),
    ],
)
def test_the_spec_refuses_user_namespaces_unless_the_unit_allows_them(
    container: dict[str, Any], refused: bool
) -> None:
    unit = Unit.model_validate({"container": {"image": "busybox", **container}})
    seccomp = seccomp_for(unit, load_default_profile())
    assert seccomp is not None
    guarded = [r for r in seccomp["syscalls"] if r["names"] in (["unshare"], ["clone"])]
    plain = {n for r in seccomp["syscalls"] if not r.get("args") for n in r["names"]}
    if refused:
        assert len(guarded) == 4
        assert not {"clone", "unshare"} & plain
    else:
        assert guarded == []
        assert {"clone", "clone3", "unshare"} <= plain
