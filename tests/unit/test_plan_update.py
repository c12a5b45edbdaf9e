"""The planner's ``[update]`` decisions: each strategy against each way an update can go, run pass
by pass on plain data with a fake clock (a small fake of the executor applies each action)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import pytest

from quayd.reconcile.model import (
    Action,
    Confirm,
    Container,
    Desired,
    DesiredUnit,
    Exit,
    Fetch,
    History,
    ImageState,
    Observed,
    Plan,
    Pull,
    Rollback,
    Start,
    Stop,
    Update,
    UpdateRecord,
    UpdateState,
)
from quayd.reconcile.plan import plan
from quayd.reconcile.records import read_update_record, remove_update_record, write_update_record
from quayd.reconcile.update import protected_digests, short, wanted_digest
from quayd.units.model import Unit

V1 = "sha256:" + "1" * 64
V2 = "sha256:" + "2" * 64
V3 = "sha256:" + "3" * 64
STRATEGIES = ("download-then-replace", "replace-then-download", "stop-then-download")
Behaviour = Literal["ready", "never-ready", "exits-early"]


def unit(strategy: str = "download-then-replace", **update: Any) -> DesiredUnit:
    document = {
        "container": {"image": "registry.lan:5000/app:stable"},
        "ready": {"mode": "started", "timeout": "10s"},
        "update": {"policy": "registry", "strategy": strategy, **update},
    }
    return DesiredUnit("app", Unit.model_validate(document), "h1")


@dataclasses.dataclass
class World:
    """The host as the planner sees it, changed by the actions as the executor would."""

    entry: DesiredUnit
    behaviour: dict[str, Behaviour]
    failing_pulls: set[str] = dataclasses.field(default_factory=set)
    now: float = 1000.0
    record: UpdateRecord = dataclasses.field(default_factory=lambda: UpdateRecord(current=V1))
    offered: str | None = V2
    check_error: str | None = None
    stored: set[str] = dataclasses.field(default_factory=lambda: {V1})
    container: Container | None = None
    last_exit: Exit | None = None
    image: ImageState = dataclasses.field(
        default_factory=lambda: ImageState(present=True, checked_at=0.0)
    )
    fetch_error: str | None = None
    fetch_retry_at: float | None = None
    due: bool = True
    trace: list[Action] = dataclasses.field(default_factory=list)
    containers_seen: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.container = Container("app", "h1", started_at=0.0, ready=True, digest=V1)

    def observed(self) -> Observed:
        update = UpdateState(
            record=self.record,
            offered=self.offered,
            stored=frozenset(self.stored),
            check_error=self.check_error,
            fetch_error=self.fetch_error,
            fetch_retry_at=self.fetch_retry_at,
            due=self.due,
        )
        history = {} if self.last_exit is None else {"app": History(1, self.last_exit)}
        containers = {} if self.container is None else {"app": self.container}
        return Observed(
            containers=containers,
            images={"app": self.image},
            history=history,
            updates={"app": update},
        )

    def run(self, seconds: int) -> Plan:
        result = plan(Desired({"app": self.entry}), self.observed(), self.now)
        for _ in range(seconds):
            self.tick()
            result = plan(Desired({"app": self.entry}), self.observed(), self.now)
            for action in result.actions:
                self.trace.append(action)
                self.apply(action)
            self.containers_seen.append(0 if self.container is None else 1)
        return result

    def tick(self) -> None:
        self.now += 1.0
        container = self.container
        if container is None or container.ready:
            return
        behaviour = self.behaviour.get(container.digest or "", "ready")
        if self.now - container.started_at < 2:
            return
        if behaviour == "ready":
            self.container = dataclasses.replace(container, ready=True, ready_at=self.now)
        elif behaviour == "exits-early":
            self.end(stopped_for=None, code=1)

    def end(self, *, stopped_for: Any, code: int | None = 0) -> None:
        container = self.container
        assert container is not None
        self.last_exit = Exit(
            at=self.now,
            hash=container.hash,
            started_at=container.started_at,
            code=code,
            ready=container.ready,
            stopped_for=stopped_for,
            digest=container.digest,
        )
        self.container = None

    def apply(self, action: Action) -> None:
        if isinstance(action, Fetch | Pull):
            self.pull(action)
        elif isinstance(action, Update):
            self.record = dataclasses.replace(
                self.record, current=action.previous, target=action.target
            )
            if self.container is not None:
                self.end(stopped_for="replace")
            if action.remove_previous and action.previous is not None:
                self.stored.discard(action.previous)
        elif isinstance(action, Start):
            assert self.container is None
            self.container = Container(
                "app", action.hash, started_at=self.now, digest=action.digest
            )
        elif isinstance(action, Stop):
            self.end(stopped_for=action.why)
        elif isinstance(action, Rollback):
            self.record = UpdateRecord(current=action.previous, bad=action.bad, bad_reason="x")
            if self.container is not None:
                self.end(stopped_for="replace")
            self.image = ImageState(present=True, checked_at=self.now)  # the agent resets it
        elif isinstance(action, Confirm):
            self.record = UpdateRecord(current=action.digest, bad=self.record.bad)
        else:
            raise AssertionError(action)

    def pull(self, action: Fetch | Pull) -> None:
        assert action.digest is not None
        error = "registry said 500"
        if action.digest not in self.failing_pulls:
            self.stored.add(action.digest)
            if action.digest == self.offered:  # the error is the update's, not a rollback's
                self.fetch_error = self.fetch_retry_at = None
            self.image = ImageState(present=True, checked_at=self.now)
            return
        # The agent counts a failed pull of an update's target as a failed download too.
        self.fetch_error, self.fetch_retry_at = error, self.now + 60
        if isinstance(action, Pull):
            self.image = ImageState(present=True, error=error, retry_at=self.now + 5)

    def kinds(self) -> list[str]:
        return [type(action).__name__ for action in self.trace]

    def running(self) -> str | None:
        container = self.container
        return container.digest if container is not None and container.ready else None


def expected_start(strategy: str) -> list[str]:
    if strategy == "download-then-replace":
        return ["Fetch", "Update", "Start"]
    if strategy == "replace-then-download":
        return ["Update", "Pull", "Start"]
    return ["Update", "Pull", "Start"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_new_digest_that_becomes_ready_is_confirmed(strategy: str) -> None:
    world = World(unit(strategy), {V2: "ready"})
    result = world.run(30)
    assert world.kinds() == [*expected_start(strategy), "Confirm"]
    assert world.running() == V2
    assert world.record == UpdateRecord(current=V2)
    assert result.statuses["app"].state == "running"
    start = world.trace[2]
    assert isinstance(start, Start)
    assert start.digest == V2
    assert "the update to sha256:222222222222" in start.reason


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("behaviour", ["never-ready", "exits-early"])
def test_a_new_digest_that_fails_is_rolled_back_marked_bad_and_not_retried(
    strategy: str, behaviour: Behaviour
) -> None:
    world = World(unit(strategy), {V2: behaviour})
    result = world.run(120)
    kinds = world.kinds()
    assert kinds[:4] == [*expected_start(strategy), "Rollback"]
    rollback = world.trace[3]
    assert isinstance(rollback, Rollback)
    assert (rollback.previous, rollback.bad) == (V1, V2)
    why = "not ready within 10s" if behaviour == "never-ready" else "exited 1 before it was ready"
    assert why in rollback.reason
    assert "marked bad" in rollback.reason
    if strategy == "replace-then-download":  # V1 was removed for room: pulled back
        assert kinds[4:] == ["Pull", "Start"]
    else:
        assert kinds[4:] == ["Start"]
    assert world.running() == V1
    assert world.record == UpdateRecord(current=V1, bad=V2, bad_reason="x")
    assert kinds.count("Update") == 1  # not retried while the tag points at V2
    status = result.statuses["app"]
    assert status.state == "running"
    assert "not retried until the tag moves" in status.detail
    if behaviour == "never-ready":  # rolled back at the readiness deadline, not later
        assert world.trace[2:4] == [world.trace[2], rollback]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_tag_moving_again_after_a_bad_digest_updates(strategy: str) -> None:
    world = World(unit(strategy), {V2: "never-ready", V3: "ready"})
    world.run(60)
    assert world.record.bad == V2
    world.offered = V3
    world.trace.clear()
    world.run(30)
    assert world.kinds() == [*expected_start(strategy), "Confirm"]
    assert world.running() == V3


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_failed_pull_keeps_the_old_digest_and_marks_nothing_bad(strategy: str) -> None:
    world = World(unit(strategy), {V2: "ready"}, failing_pulls={V2})
    result = world.run(40)
    kinds = world.kinds()
    if strategy == "download-then-replace":
        # The container was never touched; the download is retried after its backoff.
        assert kinds == ["Fetch"]
        assert world.containers_seen == [1] * 40
        assert "downloading the update to sha256:222222222222 failed" in (
            result.statuses["app"].detail
        )
        assert result.wake_at == world.fetch_retry_at
    else:
        assert kinds[:4] == [
            "Update",
            "Pull",
            "Rollback",
            "Start" if strategy[0] == "s" else "Pull",
        ]
        rollback = world.trace[2]
        assert isinstance(rollback, Rollback)
        assert rollback.bad is None
        assert "pulling it failed: registry said 500" in rollback.reason
    assert world.running() == V1
    assert world.record.bad is None
    assert world.record.target is None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_unreachable_registry_changes_nothing_and_says_so(strategy: str) -> None:
    world = World(unit(strategy), {})
    world.offered = None
    world.check_error = "registry.lan:5000: connection refused"
    result = world.run(30)
    assert world.trace == []
    assert world.running() == V1
    status = result.statuses["app"]
    assert (status.state, status.ready) == ("running", True)
    assert status.detail == "update check failed: registry.lan:5000: connection refused"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_agent_restart_between_the_record_and_the_stop_goes_on(strategy: str) -> None:
    """The record says V2 is being rolled out, but V1 still runs (and no history is left)."""
    world = World(unit(strategy), {V2: "ready"})
    world.record = UpdateRecord(current=V1, target=V2)
    world.stored |= {V2} if strategy == "download-then-replace" else set()
    world.run(30)
    kinds = world.kinds()
    assert kinds[0] == "Stop"
    stop = world.trace[0]
    assert isinstance(stop, Stop)
    assert stop.why == "replace"
    pull = [] if strategy == "download-then-replace" else ["Pull"]
    assert kinds[1:] == [*pull, "Start", "Confirm"]
    assert world.running() == V2
    assert max(world.containers_seen) == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("behaviour", ["ready", "never-ready"])
def test_an_agent_restart_while_the_new_container_starts_adopts_it(
    strategy: str, behaviour: Behaviour
) -> None:
    """Adopted from its record, started 15 s before the agent's restart (past its 10 s
    timeout): the deadline runs from the adoption (no agent could see it become ready
    meanwhile), so an agent down longer than the timeout does not mark a good image bad."""
    world = World(unit(strategy), {V2: behaviour})
    world.record = UpdateRecord(current=V1, target=V2)
    world.stored |= {V2}
    world.container = Container(
        "app", "h1", started_at=world.now - 15, digest=V2, watched_from=world.now
    )
    world.run(15)
    if behaviour == "ready":
        assert world.kinds() == ["Confirm"]
        assert world.running() == V2
    else:
        assert world.kinds() == ["Rollback", "Start"]
        # Rolled back 10 s after the adoption, not at once.
        assert world.containers_seen[:10] == [1] * 9 + [0]
        assert world.running() == V1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_power_cut_mid_update_starts_the_target_then_rolls_back_if_it_fails(
    strategy: str,
) -> None:
    """Nothing runs after boot and nothing is remembered but the record: never neither."""
    world = World(unit(strategy), {V2: "exits-early"})
    world.record = UpdateRecord(current=V1, target=V2)
    world.stored |= {V2}
    world.container = None
    world.run(30)
    assert world.kinds() == ["Start", "Rollback", "Start"]
    assert world.running() == V1
    assert world.record.bad == V2


def test_no_rollback_leaves_the_new_digest_to_the_restart_policy() -> None:
    world = World(unit(rollback=False), {V2: "never-ready"})
    world.run(30)
    kinds = world.kinds()
    assert kinds[:3] == ["Fetch", "Update", "Start"]
    assert "Rollback" not in kinds
    stop = world.trace[3]
    assert isinstance(stop, Stop)
    assert stop.why == "failure"


def test_without_a_previous_digest_there_is_nothing_to_roll_back_to() -> None:
    world = World(unit(), {V2: "exits-early"})
    world.record = UpdateRecord(target=V2)
    world.stored |= {V2}
    world.container = None
    world.run(10)
    assert "Rollback" not in world.kinds()


def test_a_closed_window_holds_the_update_and_wakes_when_it_opens() -> None:
    world = World(unit(), {V2: "ready"})
    world.due = False
    observed = dataclasses.replace(
        world.observed(),
        updates={"app": dataclasses.replace(world.observed().updates["app"], opens_at=5000.0)},
    )
    result = plan(Desired({"app": world.entry}), observed, world.now)
    assert result.actions == ()
    assert result.wake_at == 5000.0
    assert "update to sha256:222222222222 pending until the update window" in (
        result.statuses["app"].detail
    )


def test_an_update_waits_until_the_running_container_is_ready() -> None:
    world = World(unit(), {V2: "ready"})
    world.container = Container("app", "h1", started_at=world.now - 1, digest=V1)
    result = plan(Desired({"app": world.entry}), world.observed(), world.now)
    assert result.actions == ()
    assert result.statuses["app"].state == "starting"


def test_the_download_keeps_the_unit_ready_for_its_dependents() -> None:
    world = World(unit(), {V2: "ready"})
    result = plan(Desired({"app": world.entry}), world.observed(), world.now)
    (fetch,) = result.actions
    assert isinstance(fetch, Fetch)
    assert fetch.reference == "registry.lan:5000/app:stable"
    assert fetch.reason == (
        "update sha256:111111111111 to sha256:222222222222: downloading it while the container runs"
    )
    status = result.statuses["app"]
    assert (status.state, status.ready) == ("running", True)


def test_policy_off_ignores_update_state() -> None:
    world = World(unit(), {V2: "ready"})
    entry = DesiredUnit(
        "app",
        unit().unit.model_copy(
            update={"update": unit().unit.update.model_copy(update={"policy": "off"})}
        ),
        "h1",
    )
    result = plan(Desired({"app": entry}), world.observed(), world.now)
    assert result.actions == ()
    assert result.statuses["app"].detail == ""


def test_a_unit_without_update_state_yet_has_no_update_action() -> None:
    world = World(unit(), {V2: "ready"})
    observed = dataclasses.replace(world.observed(), updates={})
    assert plan(Desired({"app": world.entry}), observed, world.now).actions == ()


def test_wanted_digest_and_protected_digests() -> None:
    assert wanted_digest(UpdateState(UpdateRecord(current=V1, target=V2))) == V2
    assert wanted_digest(UpdateState(UpdateRecord(current=V1))) == V1
    assert wanted_digest(UpdateState()) is None
    updates = {
        "a": UpdateState(UpdateRecord(current=V1, target=V2, bad=V3)),
        "b": UpdateState(UpdateRecord(current=V3)),
        "c": UpdateState(),
    }
    assert protected_digests(updates) == {V1, V2, V3}
    assert short(V1) == "sha256:111111111111"


def test_the_update_record_round_trips_and_a_damaged_one_reads_as_empty(tmp_path: Path) -> None:
    record = UpdateRecord(current=V1, target=V2, bad=V3, bad_reason="not ready within 10s")
    write_update_record(tmp_path, "app", record)
    assert read_update_record(tmp_path, "app") == record
    assert (tmp_path / "updates" / "app.json").stat().st_mode & 0o777 == 0o600
    assert read_update_record(tmp_path, "other") == UpdateRecord()
    (tmp_path / "updates" / "app.json").write_text('{"current": 5}')
    assert read_update_record(tmp_path, "app") == UpdateRecord()
    (tmp_path / "updates" / "app.json").write_text("[1]")
    assert read_update_record(tmp_path, "app") == UpdateRecord()
    remove_update_record(tmp_path, "app")
    remove_update_record(tmp_path, "app")
    assert read_update_record(tmp_path, "app") == UpdateRecord()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_target_that_ended_with_the_agent_is_started_again_not_marked_bad(
    strategy: str,
) -> None:
    """Its exit status is unknown (the agent was killed with it, mid-start): not its fault."""
    world = World(unit(strategy), {V2: "ready"})
    world.record = UpdateRecord(current=V1, target=V2)
    world.stored |= {V2}
    world.container = None
    world.last_exit = Exit(at=world.now, hash="h1", started_at=world.now - 1, ready=False,
                           digest=V2)  # fmt: skip
    world.run(10)
    assert world.kinds() == ["Start", "Confirm"]
    assert world.running() == V2
    assert world.record == UpdateRecord(current=V2)


def test_a_dependent_keeps_running_through_its_requirements_update() -> None:
    """``requires`` gates starts only: the update stops and starts ``app``, not ``web``."""
    world = World(unit(), {V2: "ready"})
    web = DesiredUnit(
        "web",
        Unit.model_validate({"container": {"image": "busybox"}, "depends": {"requires": ["app"]}}),
        "w1",
    )
    web_container = Container("web", "w1", started_at=0.0, ready=True)
    for _ in range(30):
        world.tick()
        observed = world.observed()
        observed = dataclasses.replace(
            observed, containers={**observed.containers, "web": web_container}
        )
        result = plan(Desired({"app": world.entry, "web": web}), observed, world.now)
        for action in result.actions:
            assert action.unit == "app", action
            world.trace.append(action)
            world.apply(action)
    assert world.kinds() == ["Fetch", "Update", "Start", "Confirm"]
    assert world.running() == V2
