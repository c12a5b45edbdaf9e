"""A create that died leaves the container's init in its cgroup, unknown to the runtime: the next
create of that name ends it and starts (quayd.isolation.leftovers), under both drivers.

Found by the power-cut campaign (issue 19): on a guest slow after its boot a ``crun create`` ran
past its timeout and was killed; its init, waiting for a start that never came, kept
``quay-NAME.scope`` alive, and every later start of the unit failed with "Unit quay-NAME.scope
was already loaded or has a fragment file" (so did both tests here before the fix). Two ways
to that state, each real: the runtime's state removed under a created container, and a runtime
whose create outlives the timeout.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation import runtime as runtime_module
from quayd.isolation.container import Bundle, create, prepare, start, stop
from quayd.isolation.leftovers import end_dead_creates, processes_in, scope_dirs, scope_names
from quayd.isolation.runtime import (
    ExitWatcher,
    OciRuntime,
    RuntimeCommandError,
    become_subreaper,
)
from tests.integration.test_container import (
    ON_TERM_EXIT,
    RUN_DIR,
    Driver,
    _config,
    _runtime,
    _scope,
    assert_nothing_left,
    removed,
)
from tests.support.pulled import pulled_busybox_layers
from tests.support.systemd_host import CONTAINER_TEST_MARKS, RUNTIMES, SystemdHost, systemd_host

pytestmark = CONTAINER_TEST_MARKS

DRIVERS: list[Driver] = ["systemd", "cgroupfs"]


# --- inside the host ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


LIMITS = {"memory": "64M", "pids": 64}


def _bundle(base: Path, name: str, driver: Driver, resources: dict[str, Any] = LIMITS) -> Bundle:
    config = _config(base, name, driver, resources, ON_TERM_EXIT)
    return prepare(name, _layers(base), config, base / "containers" / name)


def _created(bundle: Bundle, runtime: OciRuntime) -> int:
    """container.create (its init waits for a start that never comes); the init's pid."""
    out = os.open(os.devnull, os.O_WRONLY)
    try:
        created = create(bundle, runtime, out)
    finally:
        os.close(out)
    if created.oom_events is not None:
        created.oom_events.close()
    return created.pid


def _cgroup_pids(name: str) -> list[int]:
    return sorted({pid for directory in scope_dirs(name) for pid in processes_in(directory)})


def _start_and_stop(bundle: Bundle, runtime: OciRuntime) -> dict[str, Any]:
    """container.start (which must end what is left), look, stop."""
    out = os.open(os.devnull, os.O_WRONLY)
    try:
        started = start(bundle, runtime, out)
    finally:
        os.close(out)
    seen: dict[str, Any] = {"new_pid": started.pid, "scope": _scope(bundle.name)}
    seen["in_cgroup"] = _cgroup_pids(bundle.name)
    with ExitWatcher() as watcher:
        stop(
            bundle.name,
            signal_name="SIGKILL",
            timeout=5,
            runtime=runtime,
            watcher=watcher,
            pid=started.pid,
            oom_events=started.oom_events,
        )
    if started.oom_events is not None:
        started.oom_events.close()
    return seen


def inside_state_lost(*, runtime: str, driver: Driver, name: str, state_dir: str) -> dict[str, Any]:
    """Create, then take the runtime's state away: the init is left in the cgroup, unknown.
    Then container.start of the name (without quay's cleanup it fails, under the systemd
    driver with the runtime's "Unit quay-NAME.scope was already loaded or has a fragment
    file"; under cgroupfs the new container would share the cgroup with the old init)."""
    become_subreaper()
    oci = _runtime(runtime, driver)
    bundle = _bundle(Path(state_dir), name, driver)
    old_pid = _created(bundle, oci)
    shutil.rmtree(oci.root / name)
    seen: dict[str, Any] = {"old_pid": old_pid, "runtime_ids": oci.list_ids()}
    seen.update(_start_and_stop(bundle, oci))
    seen["old_alive"] = _alive(old_pid)
    return seen


def inside_create_timeout(
    *, runtime: str, driver: Driver, name: str, state_dir: str, wrapper: str
) -> dict[str, Any]:
    """A runtime whose create makes the container, forgets it, then hangs (``wrapper``): killed on
    the create timeout; what is left, then the next start."""
    become_subreaper()
    real = _runtime(runtime, driver)
    hanging = OciRuntime(
        runtime, binary=wrapper, run_dir=Path(RUN_DIR), systemd_cgroup=driver == "systemd"
    )
    bundle = _bundle(Path(state_dir), name, driver)
    runtime_module.CREATE_TIMEOUT = 3.0
    out = os.open(os.devnull, os.O_WRONLY)
    seen: dict[str, Any] = {}
    try:
        create(bundle, hanging, out)
        seen["create"] = "returned"
    except RuntimeCommandError as error:
        seen["create"] = str(error)
    finally:
        os.close(out)
    seen["left_after_failed_create"] = _cgroup_pids(name)
    seen.update(_start_and_stop(bundle, real))
    return seen


def _layers(base: Path) -> list[Path]:
    return [Path(line) for line in (base / "layers.txt").read_text().splitlines()]


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdHost]:
    with systemd_host() as booted:
        layers = pulled_busybox_layers(booted.state_dir, tmp_path_factory.mktemp("registry"))
        (booted.state_dir / "layers.txt").write_text("\n".join(layers))
        yield booted


def hanging_wrapper(host: SystemdHost, runtime: str) -> str:
    """A script that runs the real runtime's create, removes the runtime's state of the new
    container (as a create killed before writing it would), then hangs; other commands pass."""
    path = host.state_dir / f"hanging-{runtime}"
    real = shutil.which(runtime)
    assert real is not None
    path.write_text(
        "#!/bin/sh\n"
        f'{real} "$@" || exit\n'
        'case " $* " in *" create "*) ;; *) exit 0 ;; esac\n'
        'for last in "$@"; do :; done\n'
        'root=$(echo " $* " | sed -E "s/.* --root ([^ ]+) .*/\\1/")\n'
        'rm -rf "$root/$last"\n'
        "exec sleep 600\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_init_left_by_a_lost_create_is_ended_and_the_unit_starts(
    host: SystemdHost, runtime: str, driver: Driver
) -> None:
    name = f"lost-{runtime}-{driver}"
    seen = host.call(
        inside_state_lost,
        runtime=runtime,
        driver=driver,
        name=name,
        state_dir=str(host.state_dir),
        timeout=120,
    )
    assert seen["runtime_ids"] == []  # the runtime no longer knows it
    assert seen["old_alive"] is False
    assert seen["new_pid"] in seen["in_cgroup"], seen
    assert seen["old_pid"] not in seen["in_cgroup"], seen
    if driver == "systemd":
        assert seen["scope"].get("ActiveState") == "active", seen["scope"]
    assert_nothing_left(host, removed(host, runtime, driver, name), name)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_create_killed_on_its_timeout_leaves_no_process_behind(
    host: SystemdHost, runtime: str, driver: Driver
) -> None:
    name = f"hung-{runtime}-{driver}"
    seen = host.call(
        inside_create_timeout,
        runtime=runtime,
        driver=driver,
        name=name,
        state_dir=str(host.state_dir),
        wrapper=hanging_wrapper(host, runtime),
        timeout=120,
    )
    assert "no answer in 3 s" in seen["create"], seen
    assert seen["left_after_failed_create"] == [], seen
    assert seen["new_pid"] in seen["in_cgroup"], seen
    assert_nothing_left(host, removed(host, runtime, driver, name), name)


def inside_sweep(*, runtime: str, names: list[str], state_dir: str) -> dict[str, Any]:
    """Two lost creates and one live container; the agent's start sweep."""
    become_subreaper()
    base = Path(state_dir)
    oci = _runtime(runtime, "systemd")
    pids = {name: _created(_bundle(base, name, "systemd", {"pids": 64}), oci) for name in names}
    lost, kept = names[:-1], names[-1]
    for name in lost:
        shutil.rmtree(oci.root / name)
    ended = end_dead_creates(oci)
    seen = {
        "ended": ended,
        "alive": {name: _alive(pid) for name, pid in pids.items()},
        "scopes": scope_names(),
    }
    oci.delete(kept, force=True)
    return seen


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_agent_start_ends_every_lost_create_and_keeps_what_the_runtime_knows(
    host: SystemdHost, runtime: str
) -> None:
    names = [f"sweep{n}-{runtime}" for n in range(3)]
    seen = host.call(
        inside_sweep, runtime=runtime, names=names, state_dir=str(host.state_dir), timeout=120
    )
    assert seen["ended"] == names[:2], seen
    assert seen["alive"] == {names[0]: False, names[1]: False, names[2]: True}, seen
    assert names[2] in seen["scopes"], seen
    assert not set(names[:2]) & set(seen["scopes"]), seen
    left = [removed(host, runtime, "systemd", name) for name in names]
    for name, what in zip(names, left, strict=True):
        assert_nothing_left(host, {**what, "mounts": left[-1]["mounts"]}, name)
