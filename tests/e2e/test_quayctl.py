"""Every agent-facing quayctl command against the real agent, in each test host.

The agent is the packaged service; quayctl runs inside the host (its socket is in the host's
private /run) as root, and once as an unprivileged user. Output and exit codes are asserted,
and every ``--json`` answer is validated against the schemas of docs/openapi.yaml.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.agent import (
    HOSTS,
    IMAGE,
    RUN_DIR,
    WEB_BASE,
    Deployment,
    deployed,
    running,
    wait_until,
)
from tests.support.systemd_host import CONTAINER_TEST_MARKS, REPO

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

OPENAPI = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())

UNITS = {
    "web": WEB_BASE
    + """[health]
command = ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
interval = "500ms"
[resources]
memory = "64M"
[network]
ports = ["8080:80"]
""",
    "ticker": f"""
[container]
image = "{IMAGE}"
command = ["sh", "-c", "trap 'exit 0' TERM; while :; do echo tick; sleep 0.3; done"]
[depends]
requires = ["web"]
""",
    "stuck": f"""
[container]
image = "{IMAGE}"
command = ["sleep", "1000"]
[ready]
mode = "tcp"
port = 9
timeout = "10m"
""",
}


def valid(document: Any, schema: str) -> None:
    """``document`` against ``#/components/schemas/<schema>`` of docs/openapi.yaml."""
    root = {**OPENAPI, "$ref": f"#/components/schemas/{schema}"}
    jsonschema.Draft202012Validator(root).validate(document)


def quayctl(deployment: Deployment, *args: str, user: int | None = None) -> Any:
    argv = [deployment.quayctl, "--run-dir", RUN_DIR, *args]
    if user is not None:
        # CAP_DAC_READ_SEARCH alone lets the user read the checkout's quayctl wherever it is
        # (under /root, 0700, in a fresh root); it grants no write, so the socket's mode and
        # the agent's peer-credential check still decide.
        caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        ids = [f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        argv = ["setpriv", *ids, *caps, *argv]
    return deployment.host.run(argv, check=False, timeout=60)


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, UNITS, host=request.param) as deployment:
        running(deployment, "ticker")
        yield deployment


def test_status_shows_state_health_address_and_ports(deployment: Deployment) -> None:
    wait_until("web healthy", lambda: deployment.units()["web"]["health"] == "healthy")
    done = quayctl(deployment, "status")
    assert done.returncode == 3  # "stuck" is not ready
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[2:] if line[:1] != " "}
    assert rows["web"].split()[1:3] == ["running", "healthy"]
    assert "10.89.0." in rows["web"]
    assert "8080:80" in rows["web"]
    assert rows["stuck"].split()[1] == "starting"
    assert quayctl(deployment, "status", "web", "ticker").returncode == 0
    payload = json.loads(quayctl(deployment, "status", "--json").stdout)
    valid(payload, "Status")


def test_wait_succeeds_times_out_and_fails(deployment: Deployment) -> None:
    assert quayctl(deployment, "wait", "web", "ticker").returncode == 0
    late = quayctl(deployment, "wait", "--timeout", "1", "stuck")
    assert late.returncode == 2
    assert "stuck" in late.stderr
    # Ready only on a port it never opens: with mode "started" it would be ready for the few ms
    # between its start and its exit, and a poll landing there (seen once) would say ready.
    deployment.write(
        "crash",
        f'[container]\nimage = "{IMAGE}"\ncommand = ["false"]\n[ready]\nmode = "tcp"\nport = 9\n',
    )
    assert quayctl(deployment, "wait", "--timeout", "30", "crash").returncode == 1
    assert quayctl(deployment, "wait", "nope").returncode == 4
    deployment.delete("crash")


def test_show_says_everything_about_a_unit(deployment: Deployment) -> None:
    done = quayctl(deployment, "show", "web")
    assert done.returncode == 0, done.stderr
    assert "quay-web.scope" in done.stdout
    assert "8080:80" in done.stdout
    reply = json.loads(quayctl(deployment, "show", "web", "--json").stdout)
    valid(reply, "UnitDetail")
    assert reply["usage"]["pids"] >= 1
    assert quayctl(deployment, "show", "nope").returncode == 1


def test_logs_come_from_the_journal(deployment: Deployment) -> None:
    done = quayctl(deployment, "logs", "-n", "3", "ticker")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["tick", "tick", "tick"]


def test_events_are_valid_and_tell_the_story(deployment: Deployment) -> None:
    done = quayctl(deployment, "events", "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    for event in events:
        valid(event, "Event")
    assert {("web", "started"), ("web", "ready"), ("ticker", "started")} <= {
        (e["unit"], e["kind"]) for e in events
    }
    human = quayctl(deployment, "events").stdout
    assert "web" in human
    assert "ready" in human


def test_plan_is_valid_and_idle(deployment: Deployment) -> None:
    done = quayctl(deployment, "plan")
    assert (done.returncode, done.stdout) == (0, "nothing to do\n")
    valid(json.loads(quayctl(deployment, "plan", "--json").stdout), "Plan")


def test_exec_returns_the_commands_status(deployment: Deployment) -> None:
    done = quayctl(deployment, "exec", "web", "--", "hostname")
    assert (done.returncode, done.stdout) == (0, "web\n")
    assert quayctl(deployment, "exec", "web", "--", "sh", "-c", "exit 7").returncode == 7


def test_stop_start_restart_and_reload(deployment: Deployment) -> None:
    pid = running(deployment, "ticker")
    assert quayctl(deployment, "stop", "ticker").returncode == 0
    wait_until("ticker stopped", lambda: deployment.unit_state("ticker") == "stopped")
    assert "stopped" in quayctl(deployment, "status", "ticker").stdout
    assert quayctl(deployment, "start", "ticker").returncode == 0
    again = running(deployment, "ticker")
    assert again != pid
    assert quayctl(deployment, "restart", "ticker").returncode == 0
    wait_until("ticker replaced", lambda: deployment.running_pid("ticker") not in (None, again))
    assert quayctl(deployment, "reload").returncode == 0
    assert quayctl(deployment, "stop", "nope").returncode == 1


def test_a_user_outside_the_group_is_refused(deployment: Deployment) -> None:
    done = quayctl(deployment, "status", user=65534)
    assert done.returncode == 4
    assert "permission denied" in done.stderr.lower()
    assert quayctl(deployment, "restart", "web", user=65534).returncode != 0
