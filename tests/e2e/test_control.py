"""The control API against the real agent (the packaged service in each test host).

Calls go through quayctl's own client, from inside the host (the socket is in the host's
private /run): status fields, show with the cgroup's usage, stop/start holds that survive an
agent restart, restart without backoff, exec, events, plan and reload.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import HOSTS, IMAGE, WEB_BASE, Deployment, deployed, running, wait_until
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

# The health check passes only as the container's own process (podman's capabilities,
# no_new_privs, the seccomp filter), not with the runtime's exec defaults: a health check is an
# exec too, and test_show checks that every one passed.
CHECK = (
    "grep -qx 'CapEff:.00000000800405fb' /proc/self/status"
    " && grep -qx 'NoNewPrivs:.1' /proc/self/status && grep -qx 'Seccomp:.2' /proc/self/status"
    " && wget -q -O /dev/null http://127.0.0.1/"
)
WEB = (
    WEB_BASE
    + f"""[health]
command = ["sh", "-c", "{CHECK}"]
interval = "300ms"
[resources]
memory = "64M"
pids = 32
[restart]
backoff = "1m"
[network]
ports = ["8080:80"]
"""
)


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, {"web": WEB}, host=request.param) as deployment:
        running(deployment, "web")
        yield deployment


def test_status_carries_health_address_ports_and_digest(deployment: Deployment) -> None:
    web = wait_until(
        "web healthy", lambda: (u := deployment.units()["web"])["health"] == "healthy" and u
    )
    assert web["ip"].startswith("10.89.0.")
    assert web["ports"] == ["8080:80"]
    assert web["digest"].startswith("sha256:")
    assert web["held"] is False
    assert web["last_exit"] is None


def test_show_has_the_config_limits_usage_and_health_history(deployment: Deployment) -> None:
    shown = deployment.api("GET", "/v1/units/web")
    assert shown["unit"]["resources"]["memory"] == "64M"
    assert shown["limits"] == {"memory": 64 * 1024 * 1024, "cpus": None, "pids": 32}
    assert shown["container"]["scope"] == "quay-web.scope"
    assert shown["container"]["pid"] == deployment.running_pid("web")
    usage = shown["usage"]
    assert 0 < usage["memory_bytes"] < 64 * 1024 * 1024
    assert usage["pids"] >= 1
    assert usage["cpu_seconds"] >= 0
    assert shown["health"]["history"]
    assert all(check["passed"] for check in shown["health"]["history"])
    missing = deployment.api("GET", "/v1/units/nope")
    assert missing["error"]["code"] == "not-found"


def test_exec_runs_in_the_container_and_returns_its_code(deployment: Deployment) -> None:
    done = deployment.api("POST", "/v1/units/web/exec", {"argv": ["sh", "-c", "hostname; exit 3"]})
    assert done == {"code": 3, "stdout": "web\n", "stderr": ""}
    status = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"
    seen = deployment.api("POST", "/v1/units/web/exec", {"argv": ["sh", "-c", status]})
    # The container's privileges, not the runtime's exec defaults.
    fields = seen["stdout"].split()
    assert fields == ["CapEff:", "00000000800405fb", "NoNewPrivs:", "1", "Seccomp:", "2"]
    bad = deployment.api("POST", "/v1/units/web/exec", {"argv": "ls"})
    assert bad["error"]["code"] == "bad-request"


def test_stop_holds_across_an_agent_restart_and_start_releases(deployment: Deployment) -> None:
    pid = running(deployment, "web")
    held = deployment.api("POST", "/v1/units/web/stop")
    assert held["held"] is True
    wait_until("web stopped", lambda: deployment.unit_state("web") == "stopped")
    assert not deployment.alive(pid)
    deployment.host.systemctl("restart", "quayd")
    wait_until("the new agent", lambda: deployment.status().get("agent"))
    assert deployment.unit_state("web") == "stopped"
    assert deployment.units()["web"]["held"] is True
    deployment.api("POST", "/v1/units/web/start")
    assert running(deployment, "web") != pid
    assert deployment.units()["web"]["held"] is False


def test_restart_replaces_the_container_at_once(deployment: Deployment) -> None:
    pid = running(deployment, "web")
    assert deployment.api("POST", "/v1/units/web/restart") == {
        "unit": "web",
        "message": "web is restarting",
    }
    new = wait_until(
        "a new web", lambda: (p := deployment.running_pid("web")) and p != pid and p, timeout=15
    )

    def old_process() -> str:
        shown = deployment.host.run(
            ["sh", "-c", f"grep -E '^(Name|State|PPid):' /proc/{pid}/status 2>/dev/null"],
            check=False,
        )
        return shown.stdout

    # The old process must not run any more. Two clean-clone runs of the whole suite found it
    # still listed, 5 s after the new one ran (never reproduced alone): this says whether it
    # is a zombie (ended, not reaped: see the closing note) or still running (a failure).
    def ended() -> str | None:
        shown = old_process()
        if not shown:
            return "gone"
        return shown if "State:\tZ" in shown else None

    try:
        wait_until("the old web ended", ended, timeout=5)
    except AssertionError as error:
        journal = deployment.host.run(["journalctl", "-u", "quayd", "-o", "cat"], check=False)
        web_lines = [line for line in journal.stdout.splitlines() if '"web"' in line][-15:]
        raise AssertionError(
            f"the old web still runs:\n{old_process()}\nquayd on web:\n" + "\n".join(web_lines)
        ) from error
    assert deployment.alive(new)


def test_events_tell_what_happened(deployment: Deployment) -> None:
    events = deployment.events()
    # The log is the agent's memory: it starts with the agent restarted by the hold test.
    kinds = [event["kind"] for event in events]
    for kind in ("stopped", "released", "starting", "started", "ready", "stopping", "exited"):
        assert kind in kinds, (kind, kinds)
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(seqs)


def test_plan_and_reload(deployment: Deployment) -> None:
    planned = deployment.api("GET", "/v1/plan")
    assert planned["actions"] == []
    before = deployment.status()["agent"]["passes"]
    reloaded = deployment.api("POST", "/v1/reload")
    assert reloaded["passes"] > before


def test_a_flushed_ruleset_is_restored_by_the_resync(deployment: Deployment) -> None:
    def table() -> str:
        done = deployment.host.run(["nft", "list", "table", "inet", "quay"], check=False)
        return done.stdout if done.returncode == 0 else ""

    assert "dport 8080" in table()
    deployment.host.run(["nft", "delete", "table", "inet", "quay"])
    assert table() == ""
    deployment.host.systemctl("reload", "quayd")  # runs the resync now instead of within 30 s
    wait_until("the table back", lambda: "dport 8080" in table())


def test_plan_of_a_staging_directory_is_a_dry_run(deployment: Deployment) -> None:
    pid = running(deployment, "web")
    staging = deployment.host.scratch / "staging"
    deployment.host.write_file(
        str(staging / "web.toml"), WEB.replace('memory = "64M"', 'memory = "128M"')
    )
    deployment.host.write_file(str(staging / "extra.toml"), f'[container]\nimage = "{IMAGE}"\n')
    done = deployment.host.run(
        [deployment.quayctl, "--run-dir", "/run/quay", "plan", str(staging)], check=False
    )
    assert done.returncode == 0, done.stderr
    assert "replace web: replacing the container: resources.memory 64M → 128M" in done.stdout
    assert "start extra: new unit: starting" in done.stdout
    assert deployment.running_pid("web") == pid  # nothing was done
    assert "extra" not in deployment.units()
    bad = deployment.host.run(
        [deployment.quayctl, "--run-dir", "/run/quay", "plan", "/nonexistent"], check=False
    )
    assert bad.returncode == 1
    assert "/nonexistent" in bad.stderr


# Last: it restarts the agent (the event log starts afresh).
def test_a_restart_accepted_just_before_an_agent_crash_is_carried_out_after_it(
    deployment: Deployment,
) -> None:
    """The agent persists a restart (restarts.json) before it carries it out. Here the agent is
    frozen where a crash could come (the request on disk, the container not yet stopped), the
    request is put there as the API writes it, and the agent is killed: the next one restarts
    the container, then forgets the request."""
    pid = running(deployment, "web")
    started_at = deployment.units()["web"]["started_at"]
    main_pid = int(deployment.show("MainPID")["MainPID"])
    deployment.host.run(["kill", "-STOP", str(main_pid)])
    requests = str(deployment.state_dir / "restarts.json")
    deployment.host.write_file(
        requests, json.dumps({"version": 1, "restarts": {"web": started_at}})
    )
    deployment.host.run(["kill", "-KILL", str(main_pid)])
    wait_until(
        "systemd restarting quayd",
        lambda: deployment.show("MainPID")["MainPID"] not in ("0", str(main_pid)),
    )
    new = wait_until(
        "web restarted by the new agent",
        lambda: (p := deployment.running_pid("web")) and p != pid and p,
        timeout=30,
    )
    wait_until(
        "the request forgotten once carried out",
        lambda: (
            "web" not in json.loads(deployment.host.read_file(requests) or "{}").get("restarts", {})
        ),
    )
    assert deployment.alive(new)
    assert "restarted by an operator" in deployment.journal()
