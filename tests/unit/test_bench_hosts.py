"""bench --this-host: when this machine's systemd may be used, and what the report says of it."""

from __future__ import annotations

from bench.hosts import refusal
from bench.report import host_line


def refused(
    *,
    root: bool = True,
    pid1: str = "systemd",
    booted: bool = True,
    quayd_active: bool = False,
    run_dir: bool = False,
) -> str | None:
    """:func:`refusal` of a machine fit for --this-host but for what is given."""
    return refusal(root=root, pid1=pid1, booted=booted, quayd_active=quayd_active, run_dir=run_dir)


def test_a_machine_booted_with_systemd_as_pid_1_is_used() -> None:
    assert refused() is None


def test_refused_where_pid_1_is_not_systemd_saying_what_to_run_instead() -> None:
    reason = refused(pid1="process_api", booted=False)
    assert reason is not None
    assert "'process_api'" in reason
    assert "no /run/systemd/system" in reason
    assert "without it" in reason
    # systemd's name with no /run/systemd/system: not booted by it (a chroot, say)
    assert refused(booted=False) is not None


def test_refused_while_the_packaged_quayd_runs_or_another_bench_does() -> None:
    reason = refused(quayd_active=True)
    assert reason is not None
    assert "systemctl stop quayd" in reason
    reason = refused(run_dir=True)
    assert reason is not None
    assert "/run/quay-bench" in reason
    assert refused(root=False) == ("--this-host needs root (quayd, podman and crun run as root)")


def test_the_report_names_the_host_and_its_cgroup_layout() -> None:
    here = host_line({"host": {"this_host": True, "cgroup_fs": "cgroup2fs"}})
    assert "this machine's own systemd" in here
    assert "cgroup2fs (cgroup v2 unified)" in here
    nested = host_line({"host": {"this_host": False, "cgroup_fs": "tmpfs"}})
    assert "throwaway systemd host" in nested
    assert "tmpfs (cgroup v1 or hybrid)" in nested
    # a --json from before runs named their host
    assert "throwaway systemd host" in host_line({})
    assert "stat" not in host_line({})
