"""What a process quay starts in a container may do, on both hosts (the namespace systemd host on
this machine's cgroup v1 layout, and the booted cgroup v2 guest): the table of issue 23.

Every process quay starts in a unit's container (its init, the unit's command under it, an
``exec``, a health check) and the one of an ad-hoc ``quayctl run`` has the container's
capability set (podman's 11), ``no_new_privs`` and the seccomp filter; read from each one's own
``/proc/self/status``. Inside, ping (raw and ICMP sockets), ``mknod`` of a block device and
``unshare -U`` are refused. A fork loop to the pids limit, once the exec that ran it ends,
leaves the container at its few own processes (the init reaps every orphan, the exec's process
group goes with it) and the next exec works.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import HOSTS, IMAGE, RUN_DIR, Deployment, deployed, running, wait_until
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

PODMANS_SET = "00000000800405fb"
"""CHOWN DAC_OVERRIDE FOWNER FSETID KILL NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID
SYS_CHROOT: podman's default 11 (tests/integration/test_spec_runtimes.py names them)."""
PIDS = 32

# Each writes its own privileges (and the init's, PID 1) where an exec can read them back.
FIELDS = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/{pid}/status | tr -d '\\t' | tr '\\n' ' '"
COMMAND = (
    f"{FIELDS.format(pid='self')} > /tmp/command; {FIELDS.format(pid=1)} > /tmp/init; "
    "trap 'exit 0' TERM; while :; do sleep 1; done"
)
HEALTH = f"{FIELDS.format(pid='self')} > /tmp/health"
UNIT = f"""[container]
image = "{IMAGE}"
command = ["sh", "-c", "{COMMAND}"]
stop_timeout = "2s"
[health]
command = ["sh", "-c", "{HEALTH}"]
interval = "500ms"
[resources]
pids = {PIDS}
[network]
mode = "bridge"
"""
EXPECTED = f"CapEff:{PODMANS_SET} NoNewPrivs:1 Seccomp:2"


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, {"box": UNIT}, host=request.param) as deployment:
        running(deployment, "box")
        yield deployment


def exec_in(deployment: Deployment, script: str) -> dict[str, object]:
    done: dict[str, object] = deployment.api(
        "POST", "/v1/units/box/exec", {"argv": ["sh", "-c", script]}
    )
    return done


def written(deployment: Deployment, path: str) -> str | None:
    done = exec_in(deployment, f"cat {path} 2>/dev/null")
    text = str(done.get("stdout", "")).strip()
    return text or None


@pytest.mark.parametrize("process", ["init", "command", "health"])
def test_processes_of_the_unit_have_the_containers_privileges(
    deployment: Deployment, process: str
) -> None:
    seen = wait_until(f"the {process}'s fields", lambda: written(deployment, f"/tmp/{process}"))
    assert seen == EXPECTED


def test_the_init_is_pid_1_and_the_command_its_child(deployment: Deployment) -> None:
    done = exec_in(deployment, "cat /proc/1/cmdline | tr '\\0' ' '")
    assert str(done["stdout"]).startswith("/dev/quay-init -- sh -c "), done


def test_an_exec_has_the_containers_privileges(deployment: Deployment) -> None:
    done = exec_in(deployment, FIELDS.format(pid="self"))
    assert (done["code"], str(done["stdout"]).strip()) == (0, EXPECTED)


def test_an_adhoc_run_has_the_containers_privileges(deployment: Deployment) -> None:
    ctl = [deployment.quayctl, "--run-dir", RUN_DIR]
    done = deployment.host.run(
        [*ctl, "run", "--rm", IMAGE, "sh", "-c", FIELDS.format(pid="self")],
        check=False,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip()) == (0, EXPECTED), done.stderr


@pytest.mark.parametrize(
    ("what", "script"),
    [
        ("ping (raw socket)", "ping -c 1 -W 1 127.0.0.1"),
        ("mknod of a block device", "mknod /tmp/loop b 7 0"),
        ("unshare -U", "unshare -U true"),
        ("unshare -Urm and a mount", "unshare -Urm sh -c 'mount -t tmpfs t /mnt'"),
    ],
)
def test_what_the_container_may_not_do(deployment: Deployment, what: str, script: str) -> None:
    done = exec_in(deployment, f"{script}; echo code=$?")
    assert "code=0" not in str(done["stdout"]), (what, done)
    assert "code=" in str(done["stdout"]), (what, done)  # refused, not a failed exec


def pids(deployment: Deployment) -> int:
    shown = deployment.api("GET", "/v1/units/box")
    return int(shown["usage"]["pids"])


def test_a_fork_loop_to_the_pids_limit_leaves_nothing_once_its_exec_ends(
    deployment: Deployment,
) -> None:
    pid = running(deployment, "box")
    # The shell ends when a fork fails ("can't fork"): the count it reached is in /tmp/forks.
    loop = "i=0; while :; do sleep 600 & i=$((i+1)); echo $i > /tmp/forks; done 2>/dev/null"
    done = exec_in(deployment, loop)
    assert done["code"] != 0, done
    forks = int(written(deployment, "/tmp/forks") or 0)
    assert PIDS - 8 <= forks < PIDS, forks  # it reached the limit, less the container's own
    # the init and the command's shell and sleep; a health check may be running too
    wait_until("the pids back near 1", lambda: pids(deployment) <= 5, timeout=20)
    again = exec_in(deployment, "echo again")
    assert (again["code"], again["stdout"]) == (0, "again\n")
    assert deployment.running_pid("box") == pid  # the container itself went on
