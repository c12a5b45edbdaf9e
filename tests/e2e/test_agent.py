"""quayd as a systemd service in each test host, driven only through files and signals.

The packaged ``packaging/systemd/quayd.service`` runs in the host (in the namespace host its
``ExecStart`` points at the venv's quayd and the test's directories; in the VM it is installed as
a user installs it; both with a 3 s watchdog), started with systemctl, and watched through
``systemctl show``, ``quayctl status --json`` and the containers' PIDs. The image is built
from busybox-static and loaded into the store (no registry: the units use ``pull = "missing"``,
as an offline device does).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quayd.agent.agent import COALESCE_MAX_SECONDS
from tests.support.agent import (
    HOSTS,
    IMAGE,
    NOTIFY_IMAGE,
    Deployment,
    deployed,
    running,
    wait_until,
)
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

SERVE = "mkdir -p /tmp/w; echo hello-$VERSION > /tmp/w/index.html; exec httpd -f -p 80 -h /tmp/w"
WEB = f"""
[container]
image = "{IMAGE}"
command = ["sh", "-c", "{SERVE}"]
env = {{ VERSION = "1" }}
stop_timeout = "2s"
[ready]
mode = "tcp"
port = 80
[restart]
backoff = "1s"
[network]
ports = ["8080:80"]
"""
WORKER = f"""
[container]
image = "{IMAGE}"
command = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
[restart]
backoff = "1s"
[depends]
requires = ["web"]
"""


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, start=False, host=request.param) as deployment:  # started below
        yield deployment


# --- the scenario, in order (each test builds on the state the previous one left) -------------


def test_the_service_is_active_only_once_ready_and_reports_counts(deployment: Deployment) -> None:
    deployment.write("web", WEB)
    deployment.write("worker", WORKER)
    deployment.host.systemctl("start", "quayd")  # returns once READY=1 (Type=notify)
    shown = deployment.show("ActiveState", "StatusText", "Type", "WatchdogUSec")
    assert shown["ActiveState"] == "active"
    assert shown["Type"] == "notify"
    assert "running" in shown["StatusText"]
    assert "invalid" in shown["StatusText"]
    wait_until("web and worker running", lambda: deployment.running_pid("worker"))
    assert deployment.http() == "hello-1"
    wait_until(
        "StatusText counting 2 running",
        lambda: "2 running" in deployment.show("StatusText")["StatusText"],
    )


def test_units_live_in_scopes_under_quay_slice(deployment: Deployment) -> None:
    pid = wait_until("web running", lambda: deployment.running_pid("web"))
    scope = deployment.host.systemctl("show", "quay-web.scope", "-p", "Slice,ActiveState").stdout
    assert "Slice=quay.slice" in scope
    assert "ActiveState=active" in scope
    cgroup = deployment.host.run(["cat", f"/proc/{pid}/cgroup"]).stdout
    assert "quay-web.scope" in cgroup
    assert "quayd.service" not in cgroup


def test_a_second_quayd_on_the_same_state_dir_refuses_to_start(deployment: Deployment) -> None:
    main_pid = deployment.show("MainPID")["MainPID"]
    done = deployment.host.run(
        [
            deployment.quayd,
            "--state-dir",
            str(deployment.state_dir),
            "--config-dir",
            str(deployment.config_dir),
            "--run-dir",
            "/run/quay-second",
        ],
        check=False,
        timeout=30,
    )
    assert done.returncode == 1
    assert f"another quayd (pid {main_pid}) is running on {deployment.state_dir}" in done.stderr


def test_a_changed_unit_replaces_its_container(deployment: Deployment) -> None:
    old = wait_until("web running", lambda: deployment.running_pid("web"))
    deployment.write("web", WEB.replace('VERSION = "1"', 'VERSION = "2"'))
    wait_until("the new web", lambda: deployment.http() == "hello-2")
    new = wait_until("web running", lambda: deployment.running_pid("web"))
    assert new != old
    assert not deployment.alive(old)


def test_an_invalid_file_keeps_the_last_good_version_running(deployment: Deployment) -> None:
    pid = wait_until("web running", lambda: deployment.running_pid("web"))
    deployment.write("web", WEB + '\n[resources]\nmemory = "lots"\n')
    unit = wait_until("web reported invalid", lambda: deployment.units()["web"]["findings"] or None)
    assert any('memory = "lots"' in finding for finding in unit)
    assert any("web.toml" in finding for finding in unit)
    time.sleep(1.0)  # a few passes
    assert deployment.running_pid("web") == pid
    assert deployment.http() == "hello-2"
    assert "1 invalid" in deployment.show("StatusText")["StatusText"]
    deployment.write("web", WEB.replace('VERSION = "1"', 'VERSION = "2"'))
    wait_until("findings cleared", lambda: deployment.units()["web"]["findings"] == [])
    assert deployment.running_pid("web") == pid  # same unit as before: untouched


def test_a_killed_container_comes_back_with_backoff(deployment: Deployment) -> None:
    pid = wait_until("worker running", lambda: deployment.running_pid("worker"))
    deployment.host.run(["kill", "-KILL", str(pid)])
    seen = wait_until(
        "worker restarted",
        lambda: (p := deployment.running_pid("worker")) and p != pid and p,
    )
    assert seen != pid
    assert deployment.units()["worker"]["restarts"] >= 1


def test_kill_9_of_quayd_keeps_every_container(deployment: Deployment) -> None:
    before = {name: running(deployment, name) for name in ("web", "worker")}
    main_pid = int(deployment.show("MainPID")["MainPID"])
    deployment.host.run(["kill", "-KILL", str(main_pid)])
    wait_until(
        "systemd restarting quayd",
        lambda: (
            deployment.show("MainPID", "ActiveState")["MainPID"] not in ("0", str(main_pid))
            and deployment.show("ActiveState")["ActiveState"] == "active"
        ),
    )
    wait_until("the new quayd answering", lambda: deployment.status().get("agent"))
    after = {name: deployment.running_pid(name) for name in before}
    assert after == before
    assert all(deployment.alive(pid) for pid in before.values())
    assert deployment.http() == "hello-2"


def test_a_hung_loop_is_caught_by_the_watchdog(deployment: Deployment) -> None:
    pids = {name: deployment.running_pid(name) for name in ("web", "worker")}
    restarts = int(deployment.show("NRestarts")["NRestarts"])
    deployment.host.write_file(str(deployment.hang_file), "")
    deployment.host.run(["touch", str(deployment.config_dir / "web.toml")])  # wake a pass
    wait_until(
        "the watchdog restarting quayd",
        lambda: int(deployment.show("NRestarts")["NRestarts"]) > restarts,
        timeout=20,
    )
    wait_until("the new quayd answering", lambda: deployment.status().get("agent"), timeout=20)
    assert {name: deployment.running_pid(name) for name in pids} == pids
    assert "watchdog" in deployment.journal().lower()


LATER = "sleep 4; exec /bin/sd_notify 'READY=1' /bin/sd_notify 'STATUS=accepting' /bin/sleep 1000"
DB = f"""
[container]
image = "{NOTIFY_IMAGE}"
command = ["/bin/sd_notify", "STATUS=warming up", "/bin/sh", "-c", "{LATER}"]
[ready]
mode = "notify"
timeout = "20s"
"""
APP = f"""
[container]
image = "{IMAGE}"
command = ["sleep", "1000"]
[depends]
requires = ["db"]
"""


def test_notify_readiness_gates_a_dependent_and_status_text_shows(
    deployment: Deployment,
) -> None:
    deployment.write("db", DB)
    deployment.write("app", APP)
    # One snapshot, taken within the 4 s db waits before READY=1 (a status call takes about
    # 1.5 s in a guest under TCG: three of them could straddle it).
    seen = wait_until(
        "db starting",
        lambda: (u := deployment.units()).get("db", {}).get("status_text") and "app" in u and u,
    )
    assert seen["db"]["status_text"] == "warming up"
    assert seen["db"]["state"] == "starting"
    assert seen["app"]["state"] == "waiting"
    app_pid = wait_until("app running", lambda: deployment.running_pid("app"))
    units = deployment.units()
    assert units["db"]["status_text"] == "accepting"
    assert units["db"]["ready"] is True
    # app started only after db's READY=1, which came 4 s after db started
    assert units["app"]["started_at"] >= units["db"]["started_at"] + 3.9
    assert deployment.alive(app_pid)
    deployment.delete("app")
    deployment.delete("db")
    wait_until("db and app gone", lambda: not {"db", "app"} & set(deployment.units()))


# `sleep` as PID 1 ignores SIGTERM, so each stop waits the whole stop_timeout: with the default
# 10 s, a deletion that came during a restart's stop waited two of them (CI timed out at 30 s).
FLAKY = f"""
[container]
image = "{IMAGE}"
command = ["sh", "-c", "touch /tmp/ok; sleep 2; rm /tmp/ok; exec sleep 1000"]
stop_timeout = "2s"
[health]
command = ["test", "-f", "/tmp/ok"]
interval = "300ms"
timeout = "2s"
retries = 2
on_unhealthy = "restart"
[restart]
backoff = "500ms"
"""


def test_an_unhealthy_container_is_really_restarted(deployment: Deployment) -> None:
    deployment.write("flaky", FLAKY)
    first = running(deployment, "flaky")
    second = wait_until(
        "flaky restarted after failing its checks",
        lambda: (pid := deployment.running_pid("flaky")) and pid != first and pid,
    )
    assert not deployment.alive(first)
    assert deployment.alive(second)
    assert deployment.units()["flaky"]["restarts"] >= 1
    deployment.delete("flaky")
    wait_until("flaky gone", lambda: "flaky" not in deployment.units())


# One file every 10 ms, each written to a dot file and renamed (as Ansible writes them), from one
# process inside the host: from here, each write would be a command of its own (over ssh in the
# VM), far slower than the burst this is about.
BURST = """
import os, sys, time
directory, action = sys.argv[1], sys.argv[2]
started = time.monotonic()
for index in range(30):
    path = os.path.join(directory, f"burst{index:02d}.toml")
    if action == "write":
        temporary = os.path.join(directory, f".burst{index:02d}.tmp")
        with open(temporary, "w") as handle:
            handle.write("[container]\\nimagee = 'x'\\n")
        os.rename(temporary, path)
    else:
        os.unlink(path)
    time.sleep(0.01)
print(time.monotonic() - started)
"""


def test_a_burst_of_thirty_files_is_coalesced_into_few_passes(deployment: Deployment) -> None:
    # Invalid files: they start nothing, so every pass here comes from file events alone.
    before = deployment.status()["agent"]["passes"]
    written = deployment.host.python(BURST, str(deployment.config_dir), "write")
    # A pass waits until the directory is quiet, but never longer than COALESCE_MAX_SECONDS: so
    # a burst that lasts longer (0.35 s on this machine, about a second in a guest under TCG)
    # may take a pass per window, plus one for the first file (a lone rename runs at once), one
    # for what came in during the last pass, and one woken by a timer of the host's other units
    # (CI saw 5 passes for a 0.47 s burst in the guest). One pass per file would be 30.
    seconds = float(written.stdout.split()[-1])
    limit = math.ceil(seconds / COALESCE_MAX_SECONDS) + 4
    wait_until(
        "30 invalid units",
        lambda: sum(1 for u in deployment.units().values() if u["state"] == "invalid") == 30,
    )
    time.sleep(0.5)
    passes = deployment.status()["agent"]["passes"] - before
    assert 1 <= passes <= limit, (passes, seconds)
    deployment.host.python(BURST, str(deployment.config_dir), "delete")
    wait_until(
        "the burst gone", lambda: not any(name.startswith("burst") for name in deployment.units())
    )


def test_a_failing_pull_waits_with_backoff_and_blocks_no_other_unit(
    deployment: Deployment,
) -> None:
    web = running(deployment, "web")
    # Nothing listens there (the host's own namespace): the pull fails at once.
    deployment.write("ghost", '[container]\nimage = "127.0.0.1:5999/nothing:1"\n')
    ghost = wait_until(
        "ghost waiting for a retry",
        lambda: (u := deployment.units().get("ghost")) and u["state"] == "waiting" and u,
    )
    assert ghost["next_attempt"] is not None
    assert "127.0.0.1:5999" in ghost["detail"]
    deployment.write("other", WORKER.replace('requires = ["web"]', "requires = []"))
    wait_until("another unit starting meanwhile", lambda: deployment.running_pid("other"))
    assert deployment.running_pid("web") == web
    deployment.delete("ghost")
    deployment.delete("other")
    wait_until("gone", lambda: not {"ghost", "other"} & set(deployment.units()))


def test_a_deleted_unit_is_stopped_and_removed(deployment: Deployment) -> None:
    pid = wait_until("worker running", lambda: deployment.running_pid("worker"))
    deployment.delete("worker")
    wait_until("worker gone", lambda: "worker" not in deployment.units())
    assert not deployment.alive(pid)
    scope = deployment.host.systemctl("show", "quay-worker.scope", "-p", "ActiveState").stdout
    assert "ActiveState=active" not in scope


def test_reload_runs_a_pass_and_returns_to_active(deployment: Deployment) -> None:
    pid = running(deployment, "web")
    before = deployment.status()["agent"]["passes"]
    deployment.host.systemctl("reload", "quayd")
    wait_until(
        "a pass after SIGHUP, active again",
        lambda: (
            deployment.status()["agent"]["passes"] > before
            and deployment.show("ActiveState")["ActiveState"] == "active"
        ),
    )
    assert deployment.running_pid("web") == pid


def test_stopping_quayd_leaves_containers_running(deployment: Deployment) -> None:
    pid = wait_until("web running", lambda: deployment.running_pid("web"))
    deployment.host.systemctl("stop", "quayd")
    assert deployment.show("ActiveState")["ActiveState"] == "inactive"
    assert deployment.alive(pid)
    assert deployment.http() == "hello-2"
    deployment.host.systemctl("start", "quayd")
    assert deployment.running_pid("web") == pid


def test_a_stop_in_flight_is_finished_under_the_watchdog(deployment: Deployment) -> None:
    """quayd stopped while a container's stop waits its stop_timeout (longer than this test
    service's WatchdogSec=3s): the agent finishes it and exits cleanly, not by SIGABRT."""
    deployment.write(
        "stubborn",
        f'[container]\nimage = "{IMAGE}"\ncommand = ["sleep", "1000"]\nstop_timeout = "5s"\n',
    )
    pid = running(deployment, "stubborn")
    deployment.delete("stubborn")  # sleep, PID 1, ignores SIGTERM: the stop waits 5 s

    def stopping() -> bool:
        return '"kind": "stop", "unit": "stubborn"' in deployment.journal()

    wait_until("the stop action begun", stopping)
    deployment.host.systemctl("stop", "quayd")
    shown = deployment.show("ActiveState", "Result")
    assert shown == {"ActiveState": "inactive", "Result": "success"}, shown
    assert not deployment.alive(pid)
    deployment.host.systemctl("start", "quayd")
