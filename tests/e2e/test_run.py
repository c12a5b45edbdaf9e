"""quayctl run and exec -it against the real agent, driven through a pty in each test host.

``quayctl run --rm -it IMAGE sh`` gets a working shell (sized as the terminal, following its
resizes), exits with the shell's status, and leaves nothing behind: no unit, container, lease
or file in the config directory. ``quayctl exec -it`` gives a shell in a unit's container.
``quayctl run -d -p`` publishes the port while it runs; stop and rm end it. An agent
restart ends ad-hoc containers instead of adopting them.

Without -t, ``quayctl run`` is ``docker run``: the command's stdout and stderr on quayctl's own,
apart, and in ``quayctl logs``; its exit status (0, 3; 127 for a command not found, 126 for one
that cannot be executed, 125 for quay's own refusals); a pipe on stdin with -i; SIGINT to
quayctl forwarded to the container (SIGKILL after --stop-timeout), and --rm removing what ended;
``quayctl attach`` to a unit started with -d -i.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import (
    HOSTS,
    IMAGE,
    RUN_DIR,
    SERVE,
    WEB_BASE,
    Deployment,
    deployed,
    running,
    wait_until,
)
from tests.support.interrupt import interrupt
from tests.support.systemd_host import CONTAINER_TEST_MARKS
from tests.support.terminal import SHELL_SESSION, drive

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

WEB = WEB_BASE


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, {"web": WEB}, host=request.param) as deployment:
        running(deployment, "web")
        yield deployment


def ctl(deployment: Deployment) -> list[str]:
    return [deployment.quayctl, "--run-dir", RUN_DIR]


def leftovers(deployment: Deployment, name: str) -> list[str]:
    """Anything left of unit ``name``: its runtime state, container directory, lease, veth."""
    found = []
    if deployment.host.exists(f"{RUN_DIR}/crun/{name}"):
        found.append("runtime state")
    if deployment.host.exists(str(deployment.state_dir / "containers" / name)):
        found.append("container directory")
    leases = deployment.host.read_file(str(deployment.state_dir / "net" / "leases.json"))
    if leases is not None and f'"{name}"' in leases:
        found.append("lease")
    return found


def test_run_it_gives_a_working_shell_and_leaves_nothing(deployment: Deployment) -> None:
    before = deployment.config_files()
    session = deployment.host.call(
        drive,
        argv=[*ctl(deployment), "run", "--rm", "-it", IMAGE, "sh"],
        size=[24, 80],
        steps=SHELL_SESSION,
        timeout=60,
    )
    assert session["failed_step"] is None, session["output"]
    assert session["status"] == 3, session["output"]
    started = [e for e in deployment.events() if e["kind"] == "started"]
    name = started[-1]["unit"]
    assert name.startswith("run-")
    ended = [e for e in deployment.events() if e["unit"] == name and e["kind"] == "exited"]
    assert ended
    assert ended[-1]["message"] == "exited 3"

    def logged() -> str | None:  # the terminal's output reaches the log too
        logs = deployment.host.run([*ctl(deployment), "logs", name], check=False).stdout
        return logs if "hello-42" in logs else None

    wait_until(f"{name}'s terminal output in its log", logged, timeout=10)
    wait_until(f"{name} gone", lambda: name not in deployment.units(), timeout=20)
    assert deployment.config_files() == before
    wait_until(f"nothing left of {name}", lambda: not leftovers(deployment, name), timeout=10)
    assert deployment.running_pid("web")  # the file's unit is untouched


SELF_STATUS = (
    "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t' | tr '\\n' ' '; echo"
)


def test_exec_it_gives_a_shell_in_a_unit(deployment: Deployment) -> None:
    session = deployment.host.call(
        drive,
        argv=[*ctl(deployment), "exec", "-it", "web", "sh"],
        size=[24, 80],
        steps=[
            {"expect": "# ", "send": "hostname\n"},
            {"expect": "web\r\n", "send": f"{SELF_STATUS}\n"},
            # The container's privileges, not the runtime's exec defaults.
            {"expect": "CapEff:00000000800405fb NoNewPrivs:1 Seccomp:2 ", "send": "exit 5\n"},
        ],
        timeout=30,
    )
    assert session["failed_step"] is None, session["output"]
    assert session["status"] == 5, session["output"]


def test_run_without_a_terminal_publishes_its_port(deployment: Deployment) -> None:
    host = deployment.host
    command = ctl(deployment)
    done = host.run(
        [*command, "run", "-d", "-p", "9090:80", "--name", "web2", IMAGE, "sh", "-c", SERVE],
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "web2\n", "")
    running(deployment, "web2")
    assert deployment.units()["web2"]["ports"] == ["9090:80"]

    def served() -> str:
        fetched = host.run(
            ["busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:9090/"], check=False
        )
        return fetched.stdout.strip()

    assert wait_until("web2 served on 9090", served, timeout=10) == "hello"
    taken = host.run([*command, "run", "--name", "web2", IMAGE, "true"], check=False)
    assert taken.returncode == 125  # quay's own refusal, as docker's
    assert "exists already" in taken.stderr
    clash = host.run([*command, "run", "-p", "9090:80", IMAGE, "true"], check=False)
    assert clash.returncode == 125
    assert "published by web2" in clash.stderr
    not_adhoc = host.run([*command, "rm", "web"], check=False)
    assert not_adhoc.returncode == 1
    assert "delete the file" in not_adhoc.stderr

    assert host.run([*command, "stop", "web2"], check=False).returncode == 0
    wait_until("web2 stopped", lambda: deployment.unit_state("web2") == "stopped")
    holds = deployment.host.read_file(str(deployment.state_dir / "holds.json"))
    assert holds is not None
    assert "web2" not in json.loads(holds)["held"]  # ad-hoc: never written
    assert host.run([*command, "rm", "web2"], check=False).returncode == 0
    wait_until("web2 gone", lambda: "web2" not in deployment.units(), timeout=20)
    wait_until("nothing left of web2", lambda: not leftovers(deployment, "web2"), timeout=10)
    assert served() == ""
    assert "web2.toml" not in deployment.config_files()


def test_an_agent_restart_ends_ad_hoc_containers(deployment: Deployment) -> None:
    host = deployment.host
    done = host.run(
        [*ctl(deployment), "run", "-d", "--name", "sleeper", IMAGE, "sleep", "600"], check=False
    )
    assert done.returncode == 0, done.stderr
    pid = running(deployment, "sleeper")
    host.systemctl("restart", "quayd")
    wait_until("the new agent", lambda: deployment.status().get("agent"))
    wait_until("sleeper ended", lambda: not deployment.alive(pid), timeout=15)
    wait_until("sleeper gone", lambda: "sleeper" not in deployment.units(), timeout=15)
    wait_until("nothing left of sleeper", lambda: not leftovers(deployment, "sleeper"))
    assert deployment.running_pid("web")


# --- run without a terminal: docker run --------------------------------------------------------


def gone(deployment: Deployment, name: str) -> None:
    wait_until(f"{name} gone", lambda: name not in deployment.units(), timeout=20)
    wait_until(f"nothing left of {name}", lambda: not leftovers(deployment, name), timeout=10)


def test_run_streams_stdout_and_stderr_apart_with_the_exit_code(deployment: Deployment) -> None:
    command = [*ctl(deployment), "run", "--rm", "--name", "apart", IMAGE, "sh", "-c"]
    script = "echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2; exit 3"
    done = deployment.host.run([*command, script], check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out-1\nout-2\n", "err-1\nerr-2\n")
    gone(deployment, "apart")
    done = deployment.host.run([*ctl(deployment), "run", "--rm", IMAGE, "true"], check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_run_loses_no_output_written_before_quayctl_attached(deployment: Deployment) -> None:
    size = 8 * 1024 * 1024  # more than the agent keeps for its client: the container waits
    script = f"head -c {size} /dev/zero; echo err >&2"
    done = deployment.host.run(
        [*ctl(deployment), "run", "--rm", IMAGE, "sh", "-c", script], check=False, timeout=120
    )
    assert (done.returncode, len(done.stdout), done.stderr) == (0, size, "err\n")
    assert done.stdout == "\0" * size


def test_run_output_also_reaches_the_logs(deployment: Deployment) -> None:
    host = deployment.host
    script = "echo to-stdout; echo to-stderr >&2; echo no-newline-at-end"
    done = host.run(
        [*ctl(deployment), "run", "--name", "logged", IMAGE, "sh", "-c", script], check=False
    )
    assert (done.returncode, done.stdout) == (0, "to-stdout\nno-newline-at-end\n"), done.stderr
    assert deployment.unit_state("logged") == "exited"  # no --rm: it stays until quayctl rm

    def logged() -> str | None:
        logs = host.run([*ctl(deployment), "logs", "logged"], check=False).stdout
        return logs if "no-newline-at-end" in logs else None

    logs = wait_until("logged's output in its log", logged, timeout=10)
    assert "to-stdout" in logs
    assert "to-stderr" in logs
    assert host.run([*ctl(deployment), "rm", "logged"], check=False).returncode == 0
    gone(deployment, "logged")


def test_run_a_command_not_found_is_127_and_not_executable_126(deployment: Deployment) -> None:
    host = deployment.host
    missing = host.run([*ctl(deployment), "run", "--rm", IMAGE, "no-such-command"], check=False)
    assert missing.returncode == 127, missing.stderr
    assert "no-such-command" in missing.stderr
    not_executable = host.run([*ctl(deployment), "run", "--rm", IMAGE, "/etc/passwd"], check=False)
    assert not_executable.returncode == 126, not_executable.stderr
    unreachable = host.run(
        [deployment.quayctl, "--run-dir", "/nonexistent", "run", "--rm", IMAGE, "true"],
        check=False,
    )
    assert unreachable.returncode == 125, unreachable.stderr
    assert not [name for name in deployment.units() if name.startswith("run-")]


def test_run_i_passes_a_pipe_on_stdin(deployment: Deployment) -> None:
    host = deployment.host
    done = host.run(
        [*ctl(deployment), "run", "--rm", "-i", IMAGE, "cat"], input="hi\n", check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "hi\n", "")
    big = "x" * 199_999 + "\n"  # more than a pipe holds, both ways
    done = host.run([*ctl(deployment), "run", "--rm", "-i", IMAGE, "cat"], input=big, check=False)
    assert (done.returncode, len(done.stdout), done.stderr) == (0, len(big), "")
    assert done.stdout == big
    without = host.run([*ctl(deployment), "run", "--rm", IMAGE, "cat"], input="hi\n", check=False)
    assert (without.returncode, without.stdout) == (0, "")  # no -i: stdin is /dev/null


def test_ctrl_c_is_forwarded_and_rm_removes_the_container(deployment: Deployment) -> None:
    command = [*ctl(deployment), "run", "--rm", "--name", "trapped", IMAGE, "sh", "-c"]
    script = "trap 'echo got-INT; exit 130' INT; echo started; sleep 600 & wait"
    session = deployment.host.call(interrupt, argv=[*command, script], expect="started", timeout=30)
    assert session["signalled"], session
    assert session["status"] == 130, session
    assert session["stdout"] == "started\ngot-INT\n", session
    assert session["ended_after"] < 15, session  # an API call takes ~1.5 s in a TCG guest
    gone(deployment, "trapped")


def test_ctrl_c_kills_a_process_that_ignores_it(deployment: Deployment) -> None:
    command = [*ctl(deployment), "run", "--rm", "--name", "deaf", "--stop-timeout", "1"]
    # SIGINT ignored (inherited through exec): under the init, a command without a handler
    # would end on it (130), as outside a container.
    argv = [*command, IMAGE, "sh", "-c", "trap '' INT; echo started; exec sleep 600"]
    session = deployment.host.call(interrupt, argv=argv, expect="started", timeout=30)
    assert session["signalled"], session
    assert session["status"] == 137, session  # SIGINT ignored: SIGKILL a second later
    assert 0.9 < session["ended_after"] < 15, session
    gone(deployment, "deaf")


def test_run_d_then_attach(deployment: Deployment) -> None:
    host = deployment.host
    script = "read line; echo got-$line; echo bye >&2; exit 4"
    started = host.run(
        [*ctl(deployment), "run", "-d", "-i", "--rm", "--name", "later", IMAGE, "sh", "-c", script],
        check=False,
    )
    assert (started.returncode, started.stdout) == (0, "later\n"), started.stderr
    attached = host.run([*ctl(deployment), "attach", "later"], input="x\n", check=False)
    assert (attached.returncode, attached.stdout, attached.stderr) == (4, "got-x\n", "bye\n")
    gone(deployment, "later")
    none = host.run([*ctl(deployment), "attach", "later"], check=False)
    assert none.returncode == 125
    assert "no such ad-hoc unit" in none.stderr


def test_run_takes_dockers_options(deployment: Deployment) -> None:
    host = deployment.host
    script = 'echo "$GREETING $FROM_HERE $(id -u):$(id -g) $(pwd)"; cat /data/file; ls /vol'
    source = str(deployment.state_dir / "bind-source")
    host.run(["mkdir", "-p", source])
    host.write_file(f"{source}/file", "bound\n")
    done = host.run(
        [
            *ctl(deployment),
            "run", "--rm",
            "-e", "GREETING=hello", "-e", "FROM_HERE", "-e", "UNSET_HERE",
            "-u", "1234:5678", "-w", "/tmp",
            "-v", f"{source}:/data:ro", "-v", "scratch-vol:/vol",
            "--network", "none", "--memory", "64M",
            "--entrypoint", "sh",
            IMAGE, "-c", script,
        ],
        env={"FROM_HERE": "there"},
        check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "hello there 1234:5678 /tmp\nbound\n",
        "",
    )


def test_attach_to_a_terminal(deployment: Deployment) -> None:
    started = deployment.host.run(
        [*ctl(deployment), "run", "-d", "-it", "--name", "tty-later", IMAGE, "sh"], check=False
    )
    assert (started.returncode, started.stdout) == (0, "tty-later\n"), started.stderr
    session = deployment.host.call(
        drive,
        argv=[*ctl(deployment), "attach", "tty-later"],
        size=[24, 80],
        steps=[
            {"send": "echo hi-$((1+1))\n"},  # typed ahead, before quayctl attached: kept
            {"expect": "hi-2", "send": "exit 6\n"},
        ],
        timeout=60,
    )
    assert session["failed_step"] is None, session["output"]
    assert session["status"] == 6, session["output"]
    gone(deployment, "tty-later")


def test_run_it_forwards_sigterm(deployment: Deployment) -> None:
    script = "trap 'echo got-TERM; exit 7' TERM; echo ready; while :; do sleep 0.2; done"
    session = deployment.host.call(
        drive,
        argv=[
            *ctl(deployment),
            "run",
            "--rm",
            "-it",
            "--name",
            "termed",
            IMAGE,
            "sh",
            "-c",
            script,
        ],
        size=[24, 80],
        steps=[{"expect": "ready", "signal": "SIGTERM"}, {"expect": "got-TERM"}],
        timeout=60,
    )
    assert session["failed_step"] is None, session["output"]
    assert session["status"] == 7, session["output"]
    gone(deployment, "termed")
