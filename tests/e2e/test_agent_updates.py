"""``[update]`` against a real registry inside each test host: a tag pushed again updates the
unit, a version that never becomes ready is rolled back, marked bad and not retried, and the next
push updates again (the docker-registry and the pushes are test_agent_images.py's)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quayd.images.model import Platform
from tests.e2e.test_agent_images import REGISTRY, Registry, version_in
from tests.support.agent import (
    HOSTS,
    RUN_DIR,
    Deployment,
    deployed,
    running,
    wait_until,
)
from tests.support.images import Layer, OciLayout, busybox_entries, file
from tests.support.systemd_host import CONTAINER_TEST_MARKS
from tests.support.version_probe import PROBE
from tests.support.vm_host import VmHost

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]


# Ready once a health check finds no "bad" in /version: version "3-bad" never becomes ready.
def unit_text(repository: str) -> str:
    return UNIT.replace("/u/app:", f"/{repository}:")


UNIT = (
    f'[container]\nimage = "{REGISTRY}/u/app:latest"\n'
    'command = ["sh", "-c", "echo running version $(cat /version); '
    "trap 'exit 0' TERM; while :; do sleep 0.2; done\"]\n"
    '[ready]\nmode = "healthy"\ntimeout = "6s"\n'
    '[health]\ncommand = ["sh", "-c", "! grep -q bad /version"]\n'
    'interval = "300ms"\nretries = 1\n'
    '[update]\npolicy = "registry"\nstrategy = "download-then-replace"\n'
)


# No scheduled check during the test: each one is asked for with quayctl update.
SETTINGS = '[updates]\ncheck_interval = "24h"\njitter = "0s"\n'


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, host=request.param, settings=SETTINGS) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def registry(deployment: Deployment) -> Registry:
    registry = Registry(deployment)
    registry.start()
    return registry


def update(
    deployment: Deployment, *options: str, name: str = "app"
) -> subprocess.CompletedProcess[str]:
    argv = [deployment.quayctl, "--run-dir", RUN_DIR, "update", *options, name]
    return deployment.host.run(argv, check=False, timeout=120)


def update_record(deployment: Deployment) -> dict[str, str | None]:
    text = deployment.host.read_file(str(deployment.state_dir / "updates" / "app.json"))
    assert text is not None
    record: dict[str, str | None] = json.loads(text)
    return record


def update_logs(deployment: Deployment, name: str = "app") -> str:
    argv = [deployment.quayctl, "--run-dir", RUN_DIR, "logs", name]
    return deployment.host.run(argv, check=False, timeout=60).stdout


def stored_images(deployment: Deployment) -> dict[str, str]:
    """The store's references and the digests they name (``quayctl image ls --json``)."""
    argv = [deployment.quayctl, "--state-dir", str(deployment.state_dir), "image", "ls", "--json"]
    listed = json.loads(deployment.host.run(argv).stdout)
    return {record["reference"]: record["manifest_digest"] for record in listed}


def kinds(deployment: Deployment, name: str = "app") -> list[str]:
    return [e["kind"] for e in deployment.events() if e["unit"] == name]


def ready_version(deployment: Deployment, version: str, name: str = "app") -> bool:
    unit = deployment.units().get(name)
    if not unit or unit["state"] != "running" or not unit["ready"]:
        return False
    return version_in(deployment, name) == version


def containers_of(deployment: Deployment, name: str) -> int:
    """How many containers the runtime has for the unit (running or created)."""
    listed = deployment.host.run(["crun", "--root", "/run/quay/crun", "list", "-q"]).stdout
    return listed.split().count(name)


def test_updates_roll_back_a_version_that_is_never_ready(
    deployment: Deployment, registry: Registry
) -> None:
    registry.push("u/app", "1")
    deployment.write("app", UNIT)
    running(deployment, "app")
    wait_until("v1 ready", lambda: ready_version(deployment, "1"))
    first_digest = deployment.units()["app"]["digest"]

    registry.push("u/app", "2")
    dry = update(deployment, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"app: would update {first_digest[:19]} to sha256:")
    assert ready_version(deployment, "1")  # a dry run changes nothing
    began = time.monotonic()
    done = update(deployment)
    assert done.returncode == 0, done.stderr
    wait_until("v2 ready", lambda: ready_version(deployment, "2"), timeout=60)
    updated_in = time.monotonic() - began
    second_digest = deployment.units()["app"]["digest"]
    assert second_digest != first_digest
    record = update_record(deployment)
    assert (record["current"], record["target"]) == (second_digest, None)
    assert "updated" in kinds(deployment)
    # Downloaded by digest, the tag pointed at it once confirmed: the store says what runs.
    assert stored_images(deployment)[f"{REGISTRY}/u/app:latest"] == second_digest

    registry.push("u/app", "3-bad")
    began = time.monotonic()
    done = update(deployment)
    assert done.returncode == 0, done.stderr
    wait_until("the rollback", lambda: "update-failed" in kinds(deployment), timeout=60)
    rolled_back_in = time.monotonic() - began
    wait_until("v2 ready again", lambda: ready_version(deployment, "2"), timeout=60)
    failed = [e for e in deployment.events() if e["kind"] == "update-failed"]
    assert "not ready within 6s" in failed[-1]["message"]
    assert "marked bad" in failed[-1]["message"]
    status = deployment.units()["app"]
    assert status["digest"] == second_digest
    assert "not retried until the tag moves" in status["detail"]
    record = update_record(deployment)
    bad = record["bad"]
    assert (record["current"], record["target"]) == (second_digest, None)
    assert bad not in (None, second_digest)
    # Asked again: the bad digest is not tried again.
    updates_before = kinds(deployment).count("updating")
    again = update(deployment)
    assert again.returncode == 0, again.stderr
    assert "failed before (not ready within 6s): not retried" in again.stdout
    time.sleep(2)
    assert kinds(deployment).count("updating") == updates_before
    assert ready_version(deployment, "2")

    registry.push("u/app", "4")
    done = update(deployment)
    assert done.returncode == 0, done.stderr
    wait_until("v4 ready", lambda: ready_version(deployment, "4"), timeout=60)
    assert deployment.units()["app"]["digest"] not in (first_digest, second_digest, bad)
    # One unit, one log: each version's container wrote to it, the rolled back one too.
    logs = update_logs(deployment)
    for version in ("1", "2", "3-bad", "4"):
        assert f"running version {version}" in logs, logs
    print(f"updated in {updated_in:.1f} s, rolled back in {rolled_back_in:.1f} s")
    deployment.delete("app")


def test_a_kill_9_of_the_agent_during_the_replace_converges_to_the_new_version(
    deployment: Deployment, registry: Registry
) -> None:
    registry.push("u/kill", "1")
    deployment.write("kill", unit_text("u/kill"))
    running(deployment, "kill")
    wait_until("v1 ready", lambda: ready_version(deployment, "1", "kill"))
    registry.push("u/kill", "2")
    done = update(deployment, name="kill")
    assert done.returncode == 0, done.stderr
    wait_until("the replace", lambda: "updating" in kinds(deployment, "kill"), timeout=60)
    main_pid = deployment.main_pid()
    deployment.host.run(["kill", "-KILL", str(main_pid)])
    counts: list[int] = []

    def converged() -> bool:
        counts.append(containers_of(deployment, "kill"))
        return deployment.status().get("agent") is not None and ready_version(
            deployment, "2", "kill"
        )

    try:
        wait_until("v2 ready after the agent's restart", converged, timeout=60)
    except AssertionError as error:
        status = deployment.host.systemctl("status", "--no-pager", "-n", "0", "quayd", check=False)
        deployment.host.run(["journalctl", "--sync"], check=False)
        journal = deployment.host.run(
            ["journalctl", "-u", "quayd", "-n", "60", "--no-pager", "-o", "short-monotonic"],
            check=False,
        ).stdout
        raise AssertionError(f"{error}\n{status.stdout}\njournal:\n{journal}") from None
    assert deployment.main_pid() != main_pid
    assert max(counts) <= 1  # never two containers
    assert containers_of(deployment, "kill") == 1
    record = json.loads(
        deployment.host.read_file(str(deployment.state_dir / "updates" / "kill.json")) or "{}"
    )
    assert record["target"] is None
    assert record["current"] == deployment.units()["kill"]["digest"]
    deployment.delete("kill")


@pytest.mark.parametrize("strategy", ["stop-then-download", "replace-then-download"])
def test_the_strategies_that_stop_first_update_and_roll_back(
    deployment: Deployment, registry: Registry, strategy: str
) -> None:
    """replace-then-download removes the old image first: its rollback pulls it back."""
    name = strategy.split("-", maxsplit=1)[0]
    repository = f"u/{name}"
    registry.push(repository, "1")
    text = unit_text(repository).replace('"download-then-replace"', f'"{strategy}"')
    deployment.write(name, text)
    running(deployment, name)
    wait_until("v1 ready", lambda: ready_version(deployment, "1", name))
    registry.push(repository, "2")
    assert update(deployment, name=name).returncode == 0
    wait_until("v2 ready", lambda: ready_version(deployment, "2", name), timeout=60)
    v2 = deployment.units()[name]["digest"]
    registry.push(repository, "3-bad")
    assert update(deployment, name=name).returncode == 0
    wait_until("the rollback", lambda: "update-failed" in kinds(deployment, name), timeout=60)
    wait_until("v2 ready again", lambda: ready_version(deployment, "2", name), timeout=60)
    assert deployment.units()[name]["digest"] == v2
    # v2 was pulled by digest after v1's stop; replace-then-download removed it before v3's
    # pull, so the rollback pulled it back.
    pulled = [
        line
        for line in deployment.journal().splitlines()
        if '"event": "pulled"' in line and f"/{repository}@{v2}" in line
    ]
    assert len(pulled) == (2 if strategy == "replace-then-download" else 1), pulled
    deployment.delete(name)


def load_version(deployment: Deployment, reference: str, version: str) -> None:
    """``quayctl image load`` of an image whose /version says ``version``, as ``reference``."""
    layout = OciLayout(deployment.host.staging / f"layout-local-{version}")
    entries = [*busybox_entries(), file("version", f"{version}\n".encode())]
    descriptor, _ = layout.image([Layer.of(entries)], Platform.host())
    layout.tag(descriptor, "latest")
    deployment.load(layout.root, reference)


def test_local_policy_follows_the_store(deployment: Deployment) -> None:
    """``policy = "local"``: an image loaded under the reference is the update; no registry."""
    reference = "local.test/app:stable"
    load_version(deployment, reference, "1")
    text = unit_text("u/app").replace(f"{REGISTRY}/u/app:latest", reference)
    deployment.write("loc", text.replace('policy = "registry"', 'policy = "local"'))
    running(deployment, "loc")
    wait_until("v1 ready", lambda: ready_version(deployment, "1", "loc"))
    load_version(deployment, reference, "2")
    assert update(deployment, name="loc").returncode == 0
    wait_until("v2 ready", lambda: ready_version(deployment, "2", "loc"), timeout=60)
    v2 = deployment.units()["loc"]["digest"]
    load_version(deployment, reference, "3-bad")
    assert update(deployment, name="loc").returncode == 0
    wait_until("the rollback", lambda: "update-failed" in kinds(deployment, "loc"), timeout=60)
    wait_until("v2 ready again", lambda: ready_version(deployment, "2", "loc"), timeout=60)
    assert deployment.units()["loc"]["digest"] == v2
    # The rollback pointed the reference back at v2: the store says what runs.
    assert stored_images(deployment)[reference] == v2
    time.sleep(1)
    assert kinds(deployment, "loc").count("updating") == 2  # v3 is not tried again
    deployment.delete("loc")


def served(deployment: Deployment, port: int) -> str:
    url = f"http://127.0.0.1:{port}/version"
    done = deployment.host.run(["busybox", "wget", "-q", "-O", "-", url], check=False)
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("strategy", "port"),
    [("download-then-replace", 18091), ("stop-then-download", 18092),
     ("replace-then-download", 18093)],
)  # fmt: skip
def test_unavailability_during_an_update_of_a_unit_ready_on_tcp(
    deployment: Deployment, registry: Registry, strategy: str, port: int
) -> None:
    """Between the old version's last answer and the new one's first, per strategy (printed:
    docs/agent.md quotes it). Each version serves /version with busybox httpd."""
    name = f"tcp{port}"
    repository = f"u/{name}"
    registry.push(repository, "1")
    text = (
        f'[container]\nimage = "{REGISTRY}/{repository}:latest"\n'
        'command = ["busybox", "httpd", "-f", "-p", "8080", "-h", "/"]\n'
        f'[network]\nports = ["{port}:8080"]\n'
        '[ready]\nmode = "tcp"\nport = 8080\ntimeout = "10s"\n'
        f'[update]\npolicy = "registry"\nstrategy = "{strategy}"\n'
    )
    deployment.write(name, text)
    wait_until("v1 answering", lambda: served(deployment, port) == "1")
    registry.push(repository, "2")
    answers: list[tuple[float, str]] = []

    def probe() -> None:
        done = deployment.host.python(PROBE, str(port), "25", timeout=60)
        for line in done.stdout.splitlines():
            at, answer = line.split(" ", 1)
            answers.append((float(at), answer))

    import threading  # noqa: PLC0415

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(1)
    assert update(deployment, name=name).returncode == 0
    prober.join()
    last_old = max(at for at, answer in answers if answer == "1")
    first_new = min(at for at, answer in answers if answer == "2")
    assert [a for _, a in answers if a != "-"][-1] == "2"
    assert last_old < first_new
    gap_ms = (first_new - last_old) * 1000
    print(f"{strategy}: unavailable {gap_ms:.0f} ms ({len(answers)} requests)")
    assert gap_ms < 20_000
    deployment.delete(name)


def slow_to_be_ready(text: str, strategy: str) -> str:
    """UNIT with ``strategy``, each version ready 2 s after its start: a cut within that time
    lands while the new container runs and is not yet ready (or v1 is stopped and v2 pulled)."""
    started = "echo running version $(cat /version); "
    healthy = "! grep -q bad /version"
    assert started in text
    assert healthy in text
    text = text.replace(started, started + "(sleep 2; touch /tmp/up) & ")
    text = text.replace(healthy, "test -f /tmp/up && " + healthy)
    return text.replace('"download-then-replace"', f'"{strategy}"')


@pytest.mark.parametrize("deployment", [HOSTS[1]], indirect=True)  # a power cut needs the guest
@pytest.mark.parametrize(
    ("strategy", "delay"),
    [("download-then-replace", 0.0), ("download-then-replace", 1.2),
     ("stop-then-download", 0.6), ("replace-then-download", 0.6)],
)  # fmt: skip
def test_a_power_cut_during_the_replace_leaves_the_old_or_the_new_version(
    deployment: Deployment, registry: Registry, strategy: str, delay: float
) -> None:
    """The guest's plug pulled ``delay`` s after the replace began (the disk keeps only what
    was flushed, vm_host.py): after the boot the unit runs v1 or v2, one container, from the
    store alone (no registry in that boot) where the strategy kept an image; replace-then-download
    removed v1's before pulling v2, so it needs the registry back. The store verifies, and the
    next update converges to v2."""
    host = deployment.host
    assert isinstance(host, VmHost)
    name = f"cut{strategy.split('-', maxsplit=1)[0]}{int(delay * 10)}"
    repository = f"u/{name}"
    registry.push(repository, "1")
    deployment.write(name, slow_to_be_ready(unit_text(repository), strategy))
    running(deployment, name)
    wait_until("v1 ready", lambda: ready_version(deployment, "1", name))
    registry.push(repository, "2")
    host.run(["sync"])  # the unit, v1 and the pushed v2 are long written, as in the field
    assert update(deployment, name=name).returncode == 0
    wait_until("the replace", lambda: "updating" in kinds(deployment, name), timeout=60)
    time.sleep(delay)
    host.power_cut()
    host.boot()
    if strategy == "replace-then-download":
        registry.start()
    wait_until("quayd after the boot", lambda: deployment.status().get("agent"), timeout=120)
    counts: list[int] = []

    def one_version() -> str | None:
        counts.append(containers_of(deployment, name))
        for version in ("1", "2"):
            if ready_version(deployment, version, name):
                return version
        return None

    try:
        version = wait_until("v1 or v2 ready after the boot", one_version, timeout=120)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{deployment.diagnosis(name)}") from None
    assert max(counts) <= 1, counts  # never two containers
    assert containers_of(deployment, name) == 1
    verify = [deployment.quayctl, "--state-dir", str(deployment.state_dir), "image", "verify"]
    verified = host.run(verify, check=False, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    after = " ".join(kinds(deployment, name))
    print(f"{strategy}, cut {delay} s into the replace: v{version} after the boot ({after})")
    if strategy != "replace-then-download":
        registry.start()
    assert update(deployment, name=name).returncode == 0
    wait_until("v2 ready", lambda: ready_version(deployment, "2", name), timeout=60)
    deployment.delete(name)
