"""OOM counts and the v2 memory.events watch, on small trees shaped like /sys/fs/cgroup.

The watch is a real inotify watch: writing a tree's memory.events marks it modified as the kernel
does for a cgroup's. (The v1 eventfd needs a real memory cgroup: tests/integration.)
"""

from __future__ import annotations

import selectors
from contextlib import closing
from pathlib import Path

import pytest

from quayd.isolation.oom import (
    MemoryEventsWatch,
    OomEvents,
    kills_only,
    oom_kills,
    oom_verdict,
)

EVENTS = "low 0\nhigh 0\nmax {max}\noom {oom}\noom_kill {kills}\noom_group_kill 0\n"


def events(reached: int = 0, oom: int = 0, kills: int = 0) -> str:
    return EVENTS.format(max=reached, oom=oom, kills=kills)


def cgroup_tree(root: Path, *, limited: bool) -> Path:
    """quay.slice/quay-web.scope/container; the scope holds the limit, ``container`` too when
    ``limited`` (as runc's scope, or crun's child with the limit in linux.resources)."""
    container = root / "quay.slice" / "quay-web.scope" / "container"
    container.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory pids\n")
    level = container
    while level != root:
        (level / "memory.low").write_text("0\n")
        (level / "memory.min").write_text("0\n")
        (level / "memory.max").write_text("max\n")
        (level / "memory.high").write_text("max\n")
        level = level.parent
    (container.parent / "memory.max").write_text(f"{64 << 20}\n")
    if limited:
        (container / "memory.max").write_text(f"{64 << 20}\n")
    (container / "memory.events").write_text(events())
    return container


def readable(watch: OomEvents) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(watch.fileno(), selectors.EVENT_READ)
        return bool(selector.select(0))


def test_oom_kills_v1_adds_up_the_scope_and_the_cgroups_below(tmp_path: Path) -> None:
    scope = tmp_path / "memory" / "quay.slice" / "quay-web.scope"
    (scope / "container").mkdir(parents=True)
    (scope / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (scope / "container" / "memory.oom_control").write_text("oom_kill_disable 0\noom_kill 2\n")
    assert oom_kills("web", cgroup_root=tmp_path) == 2
    assert oom_kills("gone", cgroup_root=tmp_path) is None


def test_oom_kills_v2_reads_memory_events(tmp_path: Path) -> None:
    scope = tmp_path / "quay.slice" / "quay-web.scope"
    scope.mkdir(parents=True)
    (scope / "memory.events").write_text(events(reached=9, oom=1, kills=1))
    assert oom_kills("web", cgroup_root=tmp_path) == 1
    assert oom_kills("other", cgroup_root=tmp_path) is None


def test_kills_only_needs_no_limit_and_no_protection_from_above(tmp_path: Path) -> None:
    container = cgroup_tree(tmp_path, limited=False)
    assert kills_only(container, tmp_path)
    assert not kills_only(container.parent, tmp_path)  # the scope holds the limit
    (tmp_path / "quay.slice" / "memory.low").write_text(f"{1 << 30}\n")
    assert not kills_only(container, tmp_path)  # handed down: "low" events possible


def test_watch_sees_an_oom_kill_in_the_count(tmp_path: Path) -> None:
    container = cgroup_tree(tmp_path, limited=True)
    with closing(MemoryEventsWatch(container, cgroup_root=tmp_path)) as watch:
        assert not watch.kills_only
        assert not readable(watch)
        (container / "memory.events").write_text(events(reached=3))  # the limit reached: no OOM
        assert readable(watch)
        assert not watch.take()
        assert not readable(watch)
        (container / "memory.events").write_text(events(reached=5, oom=1, kills=1))
        assert watch.take()
        assert watch.verdict is True


def test_watch_counts_only_kills_after_it_was_opened(tmp_path: Path) -> None:
    container = cgroup_tree(tmp_path, limited=True)
    (container / "memory.events").write_text(events(reached=5, oom=2, kills=2))  # before adoption
    with closing(MemoryEventsWatch(container, cgroup_root=tmp_path)) as watch:
        (container / "memory.events").write_text(events(reached=6, oom=2, kills=2))
        assert not watch.take()
        assert watch.verdict is False


def test_kills_only_watch_takes_a_change_as_a_kill_after_the_cgroup_is_gone(
    tmp_path: Path,
) -> None:
    container = cgroup_tree(tmp_path, limited=False)
    with closing(MemoryEventsWatch(container, cgroup_root=tmp_path)) as watch:
        assert watch.kills_only
        (container / "memory.events").write_text(events(kills=1))
        (container / "memory.events").unlink()  # systemd removed the scope before the read
        assert watch.take()
        assert watch.verdict is True


def test_kills_only_watch_without_a_change_is_no_oom_even_when_gone(tmp_path: Path) -> None:
    container = cgroup_tree(tmp_path, limited=False)
    with closing(MemoryEventsWatch(container, cgroup_root=tmp_path)) as watch:
        (container / "memory.events").unlink()
        assert not watch.take()
        assert watch.verdict is False


def test_limited_cgroup_gone_before_its_read_is_unknown(tmp_path: Path) -> None:
    # Its max event held the kernel's next notification back; the removal dropped it.
    container = cgroup_tree(tmp_path, limited=True)
    with closing(MemoryEventsWatch(container, cgroup_root=tmp_path)) as watch:
        (container / "memory.events").write_text(events(reached=1))
        (container / "memory.events").unlink()
        assert not watch.take()
        assert watch.verdict is None


def test_watch_needs_a_memory_events_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        MemoryEventsWatch(tmp_path, cgroup_root=tmp_path)


def test_verdict_from_the_count_and_the_watch(tmp_path: Path) -> None:
    container = cgroup_tree(tmp_path, limited=True)
    with closing(MemoryEventsWatch(container, cgroup_root=tmp_path)) as watch:
        assert oom_verdict(1, None) is True
        assert oom_verdict(0, None) is False
        assert oom_verdict(None, None) is None
        assert oom_verdict(0, watch) is False
        assert oom_verdict(None, watch) is False
        (container / "memory.events").unlink()
        watch.take()
        assert oom_verdict(None, watch) is None
        assert oom_verdict(2, watch) is True
