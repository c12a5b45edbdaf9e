"""The pure planner: every transition as plain data with a fake clock (times are bare floats)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quayd.reconcile.model import (
    Action,
    Busy,
    Container,
    Desired,
    DesiredUnit,
    Exit,
    History,
    ImageState,
    Observed,
    Plan,
    Pull,
    Remove,
    Start,
    Stop,
    UnitStatus,
)
from quayd.reconcile.plan import (
    backoff_delay,
    dependency_order,
    describe_exit,
    format_seconds,
    is_failure,
    plan,
    pull_backoff,
    record_exit,
    shutdown_plan,
)
from quayd.units.model import Unit

NOW = 1000.0
STORED = ImageState(present=True, checked_at=0.0)
PINNED = "busybox@sha256:" + "a" * 64


def unit(**tables: Any) -> Unit:
    container = {"image": "busybox:1.36", **tables.pop("container", {})}
    return Unit.model_validate({"container": container, **tables})


def want(name: str, hash: str = "h1", findings: tuple[str, ...] = (), **tables: Any) -> DesiredUnit:
    return DesiredUnit(name=name, unit=unit(**tables), hash=hash, findings=findings)


def desired(*units: DesiredUnit, invalid: Mapping[str, tuple[str, ...]] | None = None) -> Desired:
    return Desired(units={u.name: u for u in units}, invalid=dict(invalid or {}))


def live(name: str, hash: str = "h1", *, started_at: float = 0.0, **fields: Any) -> Container:
    return Container(name=name, hash=hash, started_at=started_at, **{"ready": True, **fields})


def ended(hash: str = "h1", *, at: float = 900.0, started_at: float = 890.0, **fields: Any) -> Exit:
    return Exit(at=at, hash=hash, started_at=started_at, **{"code": 1, **fields})


def seen(
    *containers: Container,
    images: Mapping[str, ImageState] | None = None,
    history: Mapping[str, History] | None = None,
    busy: Mapping[str, Busy] | None = None,
    leftovers: frozenset[str] = frozenset(),
) -> Observed:
    return Observed(
        containers={c.name: c for c in containers},
        images=dict(images or {}),
        history=dict(history or {}),
        busy=dict(busy or {}),
        leftovers=leftovers,
    )


def crashed(exit: Exit, restarts: int = 1) -> History:
    return History(restarts=restarts, last_exit=exit)


def summary(action: Action) -> tuple[str, ...]:
    match action:
        case Pull(unit=name, reference=reference):
            return ("pull", name, reference)
        case Start(unit=name, hash=hash):
            return ("start", name, hash)
        case Stop(unit=name, why=why):
            return ("stop", name, why)
        case Remove(unit=name):
            return ("remove", name)
    raise AssertionError(action)


def actions(result: Plan) -> list[tuple[str, ...]]:
    return [summary(a) for a in result.actions]


def states(result: Plan) -> dict[str, str]:
    return {name: status.state for name, status in result.statuses.items()}


def status(result: Plan, name: str) -> UnitStatus:
    return result.statuses[name]


# --- the transitions, one row each ---------------------------------------------------------------

WEB = want("web")
ALWAYS = want("web", image={"pull": "always"})
CHECKED_LATE = ImageState(present=True, checked_at=950.0)
CHECK_FAILED = ImageState(present=True, checked_at=0.0, error="registry down", retry_at=NOW + 30)
CHECK_RETRY = ImageState(present=True, checked_at=0.0, error="registry down", retry_at=NOW)
PULL_FAILED = ImageState(error="connection refused", retry_at=NOW + 8)
PULL_RETRY = ImageState(error="connection refused", retry_at=NOW - 1)
RESTART = {"web": crashed(ended(at=100.0))}  # long past its 1 s backoff

TRANSITIONS: list[tuple[str, Desired, Observed, list[tuple[str, ...]], dict[str, str]]] = [
    # images
    (
        "new unit: pull first",
        desired(WEB),
        seen(),
        [("pull", "web", "busybox:1.36")],
        {"web": "pulling"},
    ),
    (
        "new unit, image stored: start",
        desired(WEB),
        seen(images={"web": STORED}),
        [("start", "web", "h1")],
        {"web": "starting"},
    ),
    (
        "pull in progress: wait",
        desired(WEB),
        seen(images={"web": ImageState(pulling=True)}),
        [],
        {"web": "pulling"},
    ),
    (
        "pull=missing never pulls a stored image, even unchecked",
        desired(WEB),
        seen(images={"web": ImageState(present=True)}, history=RESTART),
        [("start", "web", "h1")],
        {"web": "starting"},
    ),
    (
        "pull=always, never checked: pull",
        desired(ALWAYS),
        seen(images={"web": ImageState(present=True)}),
        [("pull", "web", "busybox:1.36")],
        {"web": "pulling"},
    ),
    (
        "pull=always, checked before the last exit: pull before restarting",
        desired(ALWAYS),
        seen(images={"web": STORED}, history=RESTART),
        [("pull", "web", "busybox:1.36")],
        {"web": "pulling"},
    ),
    (
        "pull=always, checked since the last exit: start",
        desired(ALWAYS),
        seen(images={"web": CHECKED_LATE}, history={"web": crashed(ended(at=900.0))}),
        [("start", "web", "h1")],
        {"web": "starting"},
    ),
    (
        "pull=always, check failed, image stored: start with it",
        desired(ALWAYS),
        seen(images={"web": CHECK_FAILED}, history=RESTART),
        [("start", "web", "h1")],
        {"web": "starting"},
    ),
    (
        "pull=always, check failed long ago: check again at this restart",
        desired(ALWAYS),
        seen(images={"web": CHECK_RETRY}, history=RESTART),
        [("pull", "web", "busybox:1.36")],
        {"web": "pulling"},
    ),
    (
        "pull=always, pinned by digest: nothing to check",
        desired(want("web", container={"image": PINNED}, image={"pull": "always"})),
        seen(images={"web": ImageState(present=True)}),
        [("start", "web", "h1")],
        {"web": "starting"},
    ),
    (
        "pull failed, image missing: wait for retry_at",
        desired(WEB),
        seen(images={"web": PULL_FAILED}),
        [],
        {"web": "waiting"},
    ),
    (
        "pull failed, retry_at reached: pull again",
        desired(WEB),
        seen(images={"web": PULL_RETRY}),
        [("pull", "web", "busybox:1.36")],
        {"web": "pulling"},
    ),
    # a live container
    ("unchanged and ready: nothing", desired(WEB), seen(live("web")), [], {"web": "running"}),
    (
        "changed: stop to replace",
        desired(want("web", "h2")),
        seen(live("web", "h1")),
        [("stop", "web", "replace")],
        {"web": "stopping"},
    ),
    (
        "replaced: start the new version at once",
        desired(want("web", "h2")),
        seen(
            images={"web": STORED},
            history={
                "web": crashed(
                    ended("h1", at=NOW, stopped_for="replace", code=None, signal="SIGTERM"),
                    restarts=0,
                )
            },
        ),
        [("start", "web", "h2")],
        {"web": "starting"},
    ),
    (
        "changed back (A, B, A) while stopped for replace: no backoff",
        desired(WEB),
        seen(
            images={"web": STORED},
            history={"web": crashed(ended(at=NOW, stopped_for="replace"), restarts=9)},
        ),
        [("start", "web", "h1")],
        {"web": "starting"},
    ),
    (
        "not ready yet: starting",
        desired(WEB),
        seen(live("web", started_at=NOW - 10, ready=False)),
        [],
        {"web": "starting"},
    ),
    (
        "not ready at the deadline: stop as failed",
        desired(WEB),
        seen(live("web", started_at=NOW - 60, ready=False)),
        [("stop", "web", "failure")],
        {"web": "stopping"},
    ),
    (
        "unhealthy, on_unhealthy=restart: stop as failed",
        desired(want("web", health={"on_unhealthy": "restart"})),
        seen(live("web", unhealthy=True)),
        [("stop", "web", "failure")],
        {"web": "stopping"},
    ),
    (
        "unhealthy, on_unhealthy=none: report only",
        desired(WEB),
        seen(live("web", unhealthy=True)),
        [],
        {"web": "running"},
    ),
    # removed files
    (
        "file removed, container live: stop",
        desired(),
        seen(live("web")),
        [("stop", "web", "remove")],
        {"web": "stopping"},
    ),
    (
        "file removed, container gone: remove leftovers",
        desired(),
        seen(leftovers=frozenset({"web"})),
        [("remove", "web")],
        {"web": "removing"},
    ),
    (
        "file removed, container live and leftovers: stop first",
        desired(),
        seen(live("web"), leftovers=frozenset({"web"})),
        [("stop", "web", "remove")],
        {"web": "stopping"},
    ),
    (
        "file added again after a remove: start",
        desired(WEB),
        seen(
            images={"web": STORED},
            history={"web": crashed(ended(at=NOW, stopped_for="remove"), restarts=0)},
        ),
        [("start", "web", "h1")],
        {"web": "starting"},
    ),
    # invalid files
    (
        "invalid with last good running: keep it",
        desired(want("web", findings=("web.toml:3: x",))),
        seen(live("web")),
        [],
        {"web": "running"},
    ),
    (
        "invalid, no last good, a container runs: leave it alone",
        desired(invalid={"web": ("web.toml:3: x",)}),
        seen(live("web")),
        [],
        {"web": "invalid"},
    ),
    (
        "invalid, no last good, leftovers: leave them",
        desired(invalid={"web": ("web.toml:3: x",)}),
        seen(leftovers=frozenset({"web"})),
        [],
        {"web": "invalid"},
    ),
    (
        "invalid, no last good, nothing on the host",
        desired(invalid={"web": ("e",)}),
        seen(),
        [],
        {"web": "invalid"},
    ),
    # shutdown exits
    (
        "stopped by shutdown: stays exited even with policy always",
        desired(WEB),
        seen(
            images={"web": STORED},
            history={"web": crashed(ended(at=100.0, stopped_for="shutdown", code=143))},
        ),
        [],
        {"web": "exited"},
    ),
]


@pytest.mark.parametrize(
    ("case", "want_desired", "observed", "expected_actions", "expected_states"),
    TRANSITIONS,
    ids=[row[0] for row in TRANSITIONS],
)
def test_transition(
    case: str,
    want_desired: Desired,
    observed: Observed,
    expected_actions: list[tuple[str, ...]],
    expected_states: dict[str, str],
) -> None:
    result = plan(want_desired, observed, NOW)
    assert actions(result) == expected_actions
    assert states(result) == expected_states
    for action in result.actions:
        assert action.reason
    assert all(s.name == n for n, s in result.statuses.items())


# --- reasons and details a person reads ----------------------------------------------------------


def test_the_readiness_timeout_reads_as_a_duration() -> None:
    result = plan(desired(WEB), seen(live("web", started_at=NOW - 61, ready=False)), NOW)
    assert result.actions == (Stop("web", "not ready within 60s", "failure"),)
    longer = desired(want("web", ready={"timeout": "2m"}))
    result = plan(longer, seen(live("web", started_at=NOW - 121, ready=False)), NOW)
    assert result.actions[0].reason == "not ready within 2m"


def test_replace_reason() -> None:
    result = plan(desired(want("web", "h2")), seen(live("web")), NOW)
    assert result.actions == (Stop("web", "unit changed: replacing the container", "replace"),)


def test_starting_wakes_at_the_readiness_deadline() -> None:
    result = plan(desired(WEB), seen(live("web", started_at=NOW - 10, ready=False)), NOW)
    assert result.wake_at == NOW + 50
    assert status(result, "web").ready is False
    assert "fails in 50s" in status(result, "web").detail


def test_an_adopted_container_gets_its_whole_readiness_timeout_from_the_adoption() -> None:
    """Started 61 s ago (past its 60 s timeout) but adopted 1 s ago by a restarted agent."""
    adopted = live("web", started_at=NOW - 61, ready=False, watched_from=NOW - 1)
    result = plan(desired(WEB), seen(adopted), NOW)
    assert result.actions == ()
    assert result.wake_at == NOW + 59
    assert "fails in 59s" in status(result, "web").detail
    result = plan(desired(WEB), seen(adopted), NOW + 59)
    assert result.actions == (Stop("web", "not ready within 60s", "failure"),)


def test_running_detail_carries_unhealthy_and_status_text() -> None:
    container = live("web", unhealthy=True, status_text="serving 3 clients")
    result = plan(desired(WEB), seen(container), NOW)
    assert status(result, "web") == UnitStatus(
        "web", "running", "unhealthy; serving 3 clients", ready=True
    )


def test_invalid_file_shows_findings_and_says_the_container_is_left_alone() -> None:
    result = plan(desired(invalid={"web": ("web.toml:3: bad",)}), seen(live("web")), NOW)
    web = status(result, "web")
    assert web.findings == ("web.toml:3: bad",)
    assert "left alone" in web.detail


def test_last_good_version_status_carries_the_findings() -> None:
    result = plan(desired(want("web", findings=("web.toml:3: bad",))), seen(live("web")), NOW)
    web = status(result, "web")
    assert (web.state, web.ready, web.findings) == ("running", True, ("web.toml:3: bad",))
    assert "last good version" in web.detail


def test_last_good_version_restarts_as_before() -> None:
    restarting = seen(images={"web": STORED}, history=RESTART)
    result = plan(desired(want("web", findings=("bad",))), restarting, NOW)
    assert actions(result) == [("start", "web", "h1")]


def test_pull_failure_waits_with_the_error_and_retry_time() -> None:
    result = plan(desired(WEB), seen(images={"web": PULL_FAILED}), NOW)
    web = status(result, "web")
    assert web.next_attempt == NOW + 8
    assert result.wake_at == NOW + 8
    assert "connection refused" in web.detail
    assert "retrying in 8s" in web.detail


def test_starting_with_the_stored_image_says_why() -> None:
    result = plan(desired(ALWAYS), seen(images={"web": CHECK_FAILED}, history=RESTART), NOW)
    assert "registry down" in result.actions[0].reason
    assert "stored image" in result.actions[0].reason


@pytest.mark.parametrize("kind", ["pulling", "starting", "stopping", "removing"])
def test_busy_units_get_no_action(kind: Busy) -> None:
    for observed in (
        seen(busy={"web": kind}),
        seen(live("web", "h0", ready=False, started_at=0.0), busy={"web": kind}),
        seen(leftovers=frozenset({"web"}), busy={"web": kind}),
    ):
        for want_desired in (desired(WEB), desired()):
            result = plan(want_desired, observed, NOW)
            assert result.actions == ()
            assert states(result) == {"web": kind}


# --- restart policies ----------------------------------------------------------------------------

CRASHES: list[tuple[str, Exit, str, str]] = [
    # policy, the exit, expected state, expected detail (starts with)
    ("no", ended(code=0), "exited", "exited 0"),
    ("no", ended(code=1), "exited", "exited 1"),
    ("no", ended(code=None, signal="SIGKILL"), "exited", "killed by SIGKILL"),
    ("no", ended(code=None, oom=True, signal="SIGKILL"), "exited", "OOM-killed"),
    ("no", ended(code=None), "exited", "exit status unknown"),
    ("no", ended(stopped_for="failure", ready=False), "exited", "stopped as failed"),
    ("on-failure", ended(code=0), "exited", "exited 0"),
    ("on-failure", ended(code=1), "starting", "restarting (exited 1)"),
    (
        "on-failure",
        ended(code=None, signal="SIGSEGV"),
        "starting",
        "restarting (killed by SIGSEGV)",
    ),
    ("on-failure", ended(code=0, oom=True), "starting", "restarting (OOM-killed)"),
    ("on-failure", ended(code=None), "starting", "restarting (exit status unknown)"),
    ("on-failure", ended(code=0, ready=False), "starting", "restarting (exited 0 before it was"),
    ("on-failure", ended(code=143, stopped_for="failure"), "starting", "restarting (stopped as"),
    ("on-failure", ended(code=143, stopped_for="shutdown"), "exited", "stopped by quay's shutdown"),
    ("always", ended(code=0), "starting", "restarting (exited 0)"),
    ("always", ended(code=1), "starting", "restarting (exited 1)"),
    ("always", ended(code=0, stopped_for="shutdown"), "exited", "stopped by quay's shutdown"),
]


@pytest.mark.parametrize(("policy", "exit", "state", "detail"), CRASHES)
def test_crash_under_each_policy(policy: str, exit: Exit, state: str, detail: str) -> None:
    unit_ = want("web", restart={"policy": policy})
    result = plan(desired(unit_), seen(images={"web": STORED}, history={"web": crashed(exit)}), NOW)
    assert states(result) == {"web": state}
    assert status(result, "web").detail.startswith(detail)
    expected = [("start", "web", "h1")] if state == "starting" else []
    assert actions(result) == expected


# restarts in a row, seconds after the exit, expected state (backoff 1 s doubling, capped at 10 s)
BACKOFF_TIMING = [
    (1, 0.0, "backoff"),
    (1, 0.999, "backoff"),
    (1, 1.0, "starting"),
    (2, 1.5, "backoff"),
    (2, 2.0, "starting"),
    (3, 3.9, "backoff"),
    (3, 4.0, "starting"),
    (4, 7.9, "backoff"),
    (4, 8.0, "starting"),
    (5, 9.9, "backoff"),  # 16 s capped at 10 s
    (5, 10.0, "starting"),
    (60, 10.0, "starting"),
    (0, 0.0, "starting"),
]


@pytest.mark.parametrize(("restarts", "after", "state"), BACKOFF_TIMING)
def test_backoff_timing_on_a_fake_clock(restarts: int, after: float, state: str) -> None:
    unit_ = want("web", restart={"backoff": "1s", "backoff_max": "10s"})
    history = {"web": crashed(ended(at=500.0), restarts=restarts)}
    result = plan(desired(unit_), seen(images={"web": STORED}, history=history), 500.0 + after)
    assert states(result) == {"web": state}
    if state == "backoff":
        due = 500.0 + min(2 ** (restarts - 1), 10)
        assert status(result, "web").next_attempt == due
        assert result.wake_at == due
        assert result.actions == ()
    else:
        assert actions(result) == [("start", "web", "h1")]


def test_backoff_detail_says_what_happened_and_when_it_restarts() -> None:
    history = {"web": crashed(ended(code=3, at=NOW - 1), restarts=3)}
    result = plan(desired(WEB), seen(images={"web": STORED}, history=history), NOW)
    assert status(result, "web").detail == "exited 3; restarting in 3s"


def test_a_crash_loop_backs_off_then_a_long_run_resets_it() -> None:
    restart = {"backoff": "1s", "backoff_max": "4s", "reset_after": "60s"}
    unit_ = want("web", restart=restart)
    history: History | None = None
    clock = 0.0
    delays = []
    for ran in (1.0, 1.0, 1.0, 1.0, 1.0, 60.0, 1.0):
        exit = ended(at=clock + ran, started_at=clock)
        history = record_exit(history, exit, unit_.unit)
        clock = exit.at
        observed = seen(images={"web": STORED}, history={"web": history})
        waiting = plan(desired(unit_), observed, clock)
        delay = waiting.wake_at - clock if waiting.wake_at is not None else 0.0
        delays.append(delay)
        clock += delay
        assert actions(plan(desired(unit_), observed, clock)) == [("start", "web", "h1")]
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0, 1.0, 2.0]


# --- dependencies --------------------------------------------------------------------------------

DB = want("db")
APP = want("app", depends={"requires": ["db"]})
ALL_STORED = dict.fromkeys(("a", "b", "c", "app", "db", "web", "z"), STORED)


def chain(*names: str) -> list[DesiredUnit]:
    """``names[0]`` requires ``names[1]`` requires ..."""
    units = [want(n, depends={"requires": [after]}) for n, after in itertools.pairwise(names)]
    return [*units, want(names[-1])]


DEPENDENCIES: list[tuple[str, Desired, Observed, list[tuple[str, ...]], dict[str, str]]] = [
    (
        "both new: the dependency starts, the dependent waits",
        desired(DB, APP),
        seen(images=ALL_STORED),
        [("start", "db", "h1")],
        {"app": "waiting", "db": "starting"},
    ),
    (
        "dependency started, not ready: wait",
        desired(DB, APP),
        seen(live("db", ready=False, started_at=NOW - 1), images=ALL_STORED),
        [],
        {"app": "waiting", "db": "starting"},
    ),
    (
        "dependency ready: start",
        desired(DB, APP),
        seen(live("db"), images=ALL_STORED),
        [("start", "app", "h1")],
        {"app": "starting", "db": "running"},
    ),
    (
        "dependency being replaced this pass: wait",
        desired(want("db", "h2"), APP),
        seen(live("db"), images=ALL_STORED),
        [("stop", "db", "replace")],
        {"app": "waiting", "db": "stopping"},
    ),
    (
        "dependency busy: wait",
        desired(DB, APP),
        seen(live("db"), images=ALL_STORED, busy={"db": "stopping"}),
        [],
        {"app": "waiting", "db": "stopping"},
    ),
    (
        "dependency restarts: the running dependent keeps running",
        desired(DB, APP),
        seen(live("app"), images=ALL_STORED, history={"db": crashed(ended(at=NOW), restarts=1)}),
        [],
        {"app": "running", "db": "backoff"},
    ),
    (
        "image pulled while the dependency is not ready",
        desired(DB, APP),
        seen(images={"db": STORED}),
        [("pull", "app", "busybox:1.36"), ("start", "db", "h1")],
        {"app": "pulling", "db": "starting"},
    ),
    (
        "dependency with findings, last good ready: start",
        desired(want("db", findings=("db.toml:1: x",)), APP),
        seen(live("db"), images=ALL_STORED),
        [("start", "app", "h1")],
        {"app": "starting", "db": "running"},
    ),
    ("dependency does not exist", desired(APP), seen(images=ALL_STORED), [], {"app": "waiting"}),
    (
        "dependency invalid",
        desired(APP, invalid={"db": ("db.toml:1: x",)}),
        seen(images=ALL_STORED),
        [],
        {"app": "waiting", "db": "invalid"},
    ),
    (
        "chain of 3, only the last ready: the middle starts",
        desired(*chain("c", "b", "a")),
        seen(live("a"), images=ALL_STORED),
        [("start", "b", "h1")],
        {"a": "running", "b": "starting", "c": "waiting"},
    ),
    (
        "chain of 3, two ready: the first starts",
        desired(*chain("c", "b", "a")),
        seen(live("a"), live("b"), images=ALL_STORED),
        [("start", "c", "h1")],
        {"a": "running", "b": "running", "c": "starting"},
    ),
    (
        "chain against name order: the required unit's status counts",
        desired(*chain("a", "b", "z")),
        seen(live("z"), live("b"), images=ALL_STORED),
        [("start", "a", "h1")],
        {"a": "starting", "b": "running", "z": "running"},
    ),
    (
        "chain against name order, middle replaced: the first waits",
        desired(
            want("a", depends={"requires": ["b"]}),
            want("b", "h2", depends={"requires": ["z"]}),
            want("z"),
        ),
        seen(live("z"), live("b"), images=ALL_STORED),
        [("stop", "b", "replace")],
        {"a": "waiting", "b": "stopping", "z": "running"},
    ),
]


@pytest.mark.parametrize(
    ("case", "want_desired", "observed", "expected_actions", "expected_states"),
    DEPENDENCIES,
    ids=[row[0] for row in DEPENDENCIES],
)
def test_dependencies(
    case: str,
    want_desired: Desired,
    observed: Observed,
    expected_actions: list[tuple[str, ...]],
    expected_states: dict[str, str],
) -> None:
    result = plan(want_desired, observed, NOW)
    assert actions(result) == expected_actions
    assert states(result) == expected_states


@pytest.mark.parametrize(
    ("want_desired", "detail"),
    [
        (desired(DB, APP), "waiting for db to be ready"),
        (desired(APP), "waiting for db, which does not exist"),
        (desired(APP, invalid={"db": ("x",)}), "waiting for db, which is invalid"),
    ],
)
def test_dependency_waiting_detail(want_desired: Desired, detail: str) -> None:
    result = plan(want_desired, seen(images={"db": ImageState(pulling=True), "app": STORED}), NOW)
    assert status(result, "app").detail == detail


def test_a_cycle_does_not_crash_and_starts_nothing_in_it() -> None:
    cycle = desired(want("a", depends={"requires": ["b"]}), want("b", depends={"requires": ["a"]}))
    result = plan(cycle, seen(images=ALL_STORED), NOW)
    assert states(result) == {"a": "waiting", "b": "waiting"}
    assert dependency_order(cycle, ["b", "a"]) == ["a", "b"]


def test_dependency_order_puts_required_units_first() -> None:
    units = desired(*chain("a", "b", "z"), want("m"))
    assert dependency_order(units, ["a", "b", "m", "z", "gone"]) == ["gone", "m", "z", "b", "a"]


# --- the plan as a whole -------------------------------------------------------------------------


def mixed() -> tuple[Desired, Observed]:
    units = desired(
        DB,
        APP,
        want("api", "h2"),
        want("cron", restart={"policy": "no"}),
        want("edge", image={"pull": "always"}),
        want("late"),
        want("slow"),
        invalid={"broken": ("broken.toml:1: x",)},
    )
    observed = seen(
        live("db"),
        live("api", "h1"),
        live("slow", ready=False, started_at=NOW - 20),
        live("gone"),
        live("broken"),
        images={**ALL_STORED, "edge": PULL_FAILED, "late": STORED, "cron": STORED},
        history={
            "cron": crashed(ended(code=0)),
            "late": crashed(ended(at=NOW - 1), restarts=3),
        },
        leftovers=frozenset({"old"}),
    )
    return units, observed


def test_a_mixed_pass() -> None:
    result = plan(*mixed(), NOW)
    assert actions(result) == [
        ("stop", "api", "replace"),
        ("start", "app", "h1"),
        ("stop", "gone", "remove"),
        ("remove", "old"),
    ]
    assert states(result) == {
        "api": "stopping",
        "app": "starting",
        "broken": "invalid",
        "cron": "exited",
        "db": "running",
        "edge": "waiting",
        "gone": "stopping",
        "late": "backoff",
        "old": "removing",
        "slow": "starting",
    }
    # backoff ends at NOW + 3, the pull retry at NOW + 8, slow's deadline at NOW + 40
    assert result.wake_at == NOW + 3


def test_wake_at_is_none_when_only_events_matter() -> None:
    assert plan(desired(WEB), seen(live("web")), NOW).wake_at is None
    assert plan(desired(), seen(), NOW) == Plan(actions=(), statuses={}, wake_at=None)


def test_same_inputs_same_plan_whatever_the_mapping_order() -> None:
    units, observed = mixed()
    flipped_units = Desired(
        units=dict(reversed(list(units.units.items()))), invalid=dict(units.invalid)
    )
    flipped = dataclasses.replace(
        observed,
        containers=dict(reversed(list(observed.containers.items()))),
        images=dict(reversed(list(observed.images.items()))),
    )
    first = plan(units, observed, NOW)
    assert plan(units, observed, NOW) == first
    assert plan(flipped_units, flipped, NOW) == first
    assert list(plan(flipped_units, flipped, NOW).statuses) == sorted(first.statuses)


def test_one_action_per_unit_even_when_several_would_apply() -> None:
    # changed, not ready past its deadline and unhealthy at once: one Stop, for the change
    units = desired(want("web", "h2", health={"on_unhealthy": "restart"}))
    container = live("web", "h1", ready=False, unhealthy=True, started_at=0.0)
    result = plan(units, seen(container, leftovers=frozenset({"web"})), NOW)
    assert actions(result) == [("stop", "web", "replace")]


# --- shutdown ------------------------------------------------------------------------------------


def test_shutdown_stops_dependents_before_what_they_require() -> None:
    units = desired(
        DB,
        want("cache"),
        want("app", depends={"requires": ["db", "cache"]}),
        want("web", depends={"requires": ["app"]}),
        want("idle"),
        invalid={"broken": ("x",)},
    )
    observed = seen(*(live(n) for n in ("db", "cache", "app", "web", "orphan", "broken")))
    stops = shutdown_plan(units, observed)
    order = [s.unit for s in stops]
    assert order == ["broken", "orphan", "web", "app", "cache", "db"]
    assert {s.why for s in stops} == {"shutdown"}
    assert all(s.reason for s in stops)


def test_shutdown_with_a_dependency_not_running() -> None:
    units = desired(DB, APP)
    assert [s.unit for s in shutdown_plan(units, seen(live("db")))] == ["db"]
    assert shutdown_plan(units, seen()) == []


# --- the helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "backoff_max", "restarts", "delay"),
    [
        ("1s", "5m", -1, 0.0),
        ("1s", "5m", 0, 0.0),
        ("1s", "5m", 1, 1.0),
        ("1s", "5m", 2, 2.0),
        ("1s", "5m", 3, 4.0),
        ("1s", "5m", 9, 256.0),
        ("1s", "5m", 10, 300.0),
        ("1s", "5m", 10_000, 300.0),
        ("2s", "1m", 5, 32.0),
        ("2s", "1m", 6, 60.0),
        ("500ms", "1s", 2, 1.0),
        ("0s", "0s", 4, 0.0),
    ],
)
def test_backoff_delay(backoff: str, backoff_max: str, restarts: int, delay: float) -> None:
    restart = unit(restart={"backoff": backoff, "backoff_max": backoff_max}).restart
    assert backoff_delay(restart, restarts) == delay


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0), (9, 300.0), (1000, 300.0)],
)
def test_pull_backoff(failures: int, delay: float) -> None:
    assert pull_backoff(failures) == delay


IS_FAILURE = [
    (ended(code=0), False),
    (ended(code=1), True),
    (ended(code=137), True),
    (ended(code=None, signal="SIGKILL"), True),
    (ended(code=0, oom=True), True),
    (ended(code=0, oom=False), False),
    (ended(code=0, ready=False), True),
    (ended(code=None), True),  # unknown: ended while quayd was down
    (ended(code=0, stopped_for="failure"), True),
    (ended(code=None, signal="SIGTERM", stopped_for="failure"), True),
    (ended(code=143, stopped_for="replace"), False),
    (ended(code=None, signal="SIGTERM", stopped_for="remove"), False),
    (ended(code=143, stopped_for="shutdown", ready=False), False),
]


@pytest.mark.parametrize(("exit", "failed"), IS_FAILURE)
def test_is_failure(exit: Exit, failed: bool) -> None:
    assert is_failure(exit) is failed


RESET_AFTER = unit(restart={"reset_after": "10m"})
RECORD_EXIT = [
    # previous restarts (None: no history), the exit, restarts after
    (None, ended(at=10.0, started_at=5.0), 1),
    (0, ended(at=10.0, started_at=5.0), 1),
    (4, ended(at=10.0, started_at=5.0), 5),
    (4, ended(at=609.0, started_at=10.0), 5),  # ran 599 s: not reset
    (4, ended(at=610.0, started_at=10.0), 1),  # ran 600 s: reset, then this one counts
    (4, ended(at=10.0, started_at=5.0, code=0), 5),  # every other exit counts
    (4, ended(at=10.0, started_at=5.0, stopped_for="failure"), 5),
    (4, ended(at=10.0, started_at=5.0, stopped_for="replace"), 0),
    (4, ended(at=10.0, started_at=5.0, stopped_for="remove"), 0),
    (4, ended(at=10.0, started_at=5.0, stopped_for="shutdown"), 4),
    (4, ended(at=9999.0, started_at=5.0, stopped_for="shutdown"), 4),
    (None, ended(at=10.0, started_at=5.0, stopped_for="shutdown"), 0),
]


@pytest.mark.parametrize(("previous", "exit", "restarts"), RECORD_EXIT)
def test_record_exit(previous: int | None, exit: Exit, restarts: int) -> None:
    history = None if previous is None else History(restarts=previous, last_exit=ended(at=1.0))
    assert record_exit(history, exit, RESET_AFTER) == History(restarts=restarts, last_exit=exit)


@pytest.mark.parametrize(
    ("exit", "text"),
    [
        (ended(code=0), "exited 0"),
        (ended(code=None, signal="SIGKILL"), "killed by SIGKILL"),
        (ended(code=None, signal="SIGKILL", oom=True), "OOM-killed"),
        (ended(code=None), "exit status unknown"),
        (ended(code=2, ready=False), "exited 2 before it was ready"),
    ],
)
def test_describe_exit(exit: Exit, text: str) -> None:
    assert describe_exit(exit) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1s"), (60, "60s"), (90, "90s"), (120, "2m"), (300, "5m"), (1.5, "1s500ms")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


# --- property: never two actions for a unit, never a Stop on bad input ---------------------------

NAMES = ("a", "b", "c", "d")
POOL = [
    unit(),
    unit(restart={"policy": "no"}),
    unit(restart={"policy": "on-failure", "backoff": "2s"}),
    unit(health={"on_unhealthy": "restart"}, ready={"mode": "tcp", "port": 80}),
    unit(image={"pull": "always"}),
    unit(depends={"requires": ["a"]}),
    unit(depends={"requires": ["b", "c"]}, restart={"policy": "on-failure"}),
    unit(depends={"requires": ["d"]}, image={"pull": "always"}),
]
HASHES = st.sampled_from(["h1", "h2"])
TIMES = st.sampled_from([0.0, 500.0, 990.0, 999.0, NOW, 1001.0])

exits = st.builds(
    Exit,
    at=TIMES,
    hash=HASHES,
    started_at=st.sampled_from([0.0, 400.0, 995.0]),
    code=st.sampled_from([None, 0, 1, 137]),
    signal=st.sampled_from([None, "SIGKILL"]),
    oom=st.sampled_from([None, False, True]),
    ready=st.booleans(),
    stopped_for=st.sampled_from([None, "replace", "remove", "failure", "shutdown"]),
)
containers = st.builds(
    Container,
    name=st.just("x"),
    hash=HASHES,
    started_at=TIMES,
    ready=st.booleans(),
    unhealthy=st.booleans(),
    status_text=st.sampled_from([None, "ok"]),
)
images = st.builds(
    ImageState,
    present=st.booleans(),
    pulling=st.booleans(),
    checked_at=st.sampled_from([None, 0.0, 995.0]),
    error=st.sampled_from([None, "refused"]),
    retry_at=st.sampled_from([None, 500.0, 2000.0]),
)
histories = st.builds(History, restarts=st.integers(0, 12), last_exit=st.none() | exits)
roles = st.sampled_from(["desired", "last good", "invalid", "absent"])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Desired, Observed, float]:
    units: dict[str, DesiredUnit] = {}
    invalid: dict[str, tuple[str, ...]] = {}
    live_: dict[str, Container] = {}
    for name in NAMES:
        role = draw(roles)
        if role in ("desired", "last good"):
            findings = ("x.toml:1: bad",) if role == "last good" else ()
            units[name] = DesiredUnit(name, draw(st.sampled_from(POOL)), draw(HASHES), findings)
        elif role == "invalid":
            invalid[name] = ("x.toml:1: bad",)
        if draw(st.booleans()):
            live_[name] = dataclasses.replace(draw(containers), name=name)
    observed = Observed(
        containers=live_,
        images=draw(st.dictionaries(st.sampled_from(NAMES), images)),
        history=draw(st.dictionaries(st.sampled_from(NAMES), histories)),
        busy=draw(
            st.dictionaries(
                st.sampled_from(NAMES),
                st.sampled_from(["pulling", "starting", "stopping", "removing"]),
                max_size=2,
            )
        ),
        leftovers=frozenset(draw(st.lists(st.sampled_from(NAMES), max_size=4))),
    )
    return Desired(units=units, invalid=invalid), observed, draw(TIMES)


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_property_one_action_per_unit_and_no_stop_on_bad_input(
    world: tuple[Desired, Observed, float],
) -> None:
    units, observed, now = world
    result = plan(units, observed, now)
    acted = [action.unit for action in result.actions]
    assert len(acted) == len(set(acted))
    for action in result.actions:
        assert action.unit not in units.invalid
        assert action.unit not in observed.busy
        assert action.reason
    expected = set(units.units) | set(units.invalid) | set(observed.containers)
    assert set(result.statuses) == expected | observed.leftovers | set(observed.busy)
    assert result == plan(units, observed, now)
    attempts = [s.next_attempt for s in result.statuses.values() if s.next_attempt is not None]
    if attempts:
        assert result.wake_at is not None
        assert result.wake_at <= min(attempts)


# --- scenarios across passes, the executor's part played by hand --------------------------------


def test_scenario_new_unit_pull_then_start_then_running() -> None:
    units = desired(WEB)
    assert actions(plan(units, seen(), NOW)) == [("pull", "web", "busybox:1.36")]
    assert states(plan(units, seen(busy={"web": "pulling"}), NOW)) == {"web": "pulling"}
    pulled = ImageState(present=True, checked_at=NOW + 1)
    assert actions(plan(units, seen(images={"web": pulled}), NOW + 1)) == [("start", "web", "h1")]
    started = seen(live("web", started_at=NOW + 2, ready=False), images={"web": pulled})
    assert states(plan(units, started, NOW + 2)) == {"web": "starting"}
    ready = seen(live("web", started_at=NOW + 2), images={"web": pulled})
    assert plan(units, ready, NOW + 3).actions == ()
    assert status(plan(units, ready, NOW + 3), "web").ready


def test_scenario_changed_unit_stop_replace_then_start_the_new_hash() -> None:
    changed = desired(want("web", "h2", image={"pull": "always"}))
    old = live("web", "h1", started_at=0.0)
    image = ImageState(present=True, checked_at=0.0)
    assert actions(plan(changed, seen(old, images={"web": image}), NOW)) == [
        ("stop", "web", "replace")
    ]
    exit = ended("h1", at=NOW + 1, started_at=0.0, code=0, stopped_for="replace")
    history = {"web": record_exit(None, exit, changed.units["web"].unit)}
    after = seen(images={"web": image}, history=history)
    # pull = "always": a new version checks the registry first, then starts without backoff
    assert actions(plan(changed, after, NOW + 1)) == [("pull", "web", "busybox:1.36")]
    checked = seen(images={"web": ImageState(present=True, checked_at=NOW + 2)}, history=history)
    result = plan(changed, checked, NOW + 2)
    assert actions(result) == [("start", "web", "h2")]
    assert result.actions[0].reason == "unit changed: starting the new version"


def test_scenario_removed_unit_stop_then_remove_then_gone() -> None:
    assert actions(plan(desired(), seen(live("web")), NOW)) == [("stop", "web", "remove")]
    left = seen(leftovers=frozenset({"web"}))
    assert actions(plan(desired(), left, NOW + 1)) == [("remove", "web")]
    assert plan(desired(), seen(), NOW + 2) == Plan(actions=(), statuses={}, wake_at=None)


# --- operator holds (quayctl stop / start) -------------------------------------------------------


def held(*units: DesiredUnit, names: frozenset[str]) -> Desired:
    return Desired(units={u.name: u for u in units}, held=names)


def test_a_held_unit_with_a_container_is_stopped_for_the_operator() -> None:
    result = plan(held(WEB, names=frozenset({"web"})), seen(live("web")), NOW)
    assert actions(result) == [("stop", "web", "hold")]
    assert status(result, "web").state == "stopping"


@pytest.mark.parametrize("policy", ["always", "on-failure", "no"])
def test_a_held_unit_stays_stopped_whatever_its_policy(policy: str) -> None:
    web = want("web", restart={"policy": policy})
    stopped = {"web": History(last_exit=ended(stopped_for="hold", code=0))}
    result = plan(held(web, names=frozenset({"web"})), seen(history=stopped), NOW)
    assert actions(result) == []
    assert status(result, "web").state == "stopped"
    assert "quayctl start web" in status(result, "web").detail
    assert result.wake_at is None


@pytest.mark.parametrize("policy", ["always", "on-failure", "no"])
def test_a_released_unit_starts_at_once_whatever_its_policy(policy: str) -> None:
    web = want("web", restart={"policy": policy})
    stopped = {"web": History(restarts=0, last_exit=ended(at=NOW - 0.1, stopped_for="hold"))}
    result = plan(desired(web), seen(images={"web": STORED}, history=stopped), NOW)
    assert actions(result) == [("start", "web", "h1")]
    assert "operator" in status(result, "web").detail


def test_a_held_dependency_keeps_its_dependents_waiting() -> None:
    app = want("app", depends={"requires": ["web"]})
    result = plan(
        held(WEB, app, names=frozenset({"web"})),
        seen(images={"web": STORED, "app": STORED}),
        NOW,
    )
    assert states(result) == {"app": "waiting", "web": "stopped"}


def test_a_hold_resets_the_restart_count() -> None:
    history = record_exit(
        History(restarts=5), ended(stopped_for="hold"), unit(restart={"policy": "always"})
    )
    assert history.restarts == 0
    assert not is_failure(ended(stopped_for="hold", code=137))


def test_a_replace_says_what_changed_when_the_running_unit_is_known() -> None:
    running = live("web", "h0", unit=unit(resources={"memory": "256M"}))
    result = plan(desired(want("web", resources={"memory": "512M"})), seen(running), NOW)
    (stop,) = result.actions
    assert isinstance(stop, Stop)
    assert stop.reason == "replacing the container: resources.memory 256M → 512M"


def test_a_new_digest_alone_is_named_as_such() -> None:
    running = live("web", "h0", unit=unit(image={"pull": "always"}))
    result = plan(desired(want("web", image={"pull": "always"})), seen(running), NOW)
    assert result.actions[0].reason == "replacing the container: a new image digest"


def test_an_operators_restart_request_stops_the_container_it_names() -> None:
    observed = dataclasses.replace(seen(live("web", started_at=100.0)), restarts={"web": 100.0})
    result = plan(desired(WEB), observed, NOW)
    assert result.actions == (Stop("web", "restarted by an operator (quayctl restart)", "replace"),)
    assert states(result) == {"web": "stopping"}


def test_a_restart_request_for_an_earlier_container_is_done_and_changes_nothing() -> None:
    observed = dataclasses.replace(seen(live("web", started_at=200.0)), restarts={"web": 100.0})
    result = plan(desired(WEB), observed, NOW)
    assert result.actions == ()
    assert states(result) == {"web": "running"}


def test_a_restart_request_waits_for_the_units_action_in_flight() -> None:
    observed = dataclasses.replace(
        seen(live("web", started_at=100.0), busy={"web": "starting"}), restarts={"web": 100.0}
    )
    assert plan(desired(WEB), observed, NOW).actions == ()
