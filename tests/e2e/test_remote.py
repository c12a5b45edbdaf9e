"""quayctl --host ssh://… from one systemd test host to another's agent (docs/remote.md).

Two namespace hosts, each with its own quayd, joined by a veth pair made for the test
(192.0.2.1/30 near, 192.0.2.2/30 far: inside the hosts' own network namespaces only). The far
host runs Debian's sshd by hand (its own config, host key and port, listening on 192.0.2.2
alone, in its own namespace), with the test's key; the near host's quayctl reaches it with the
system's ssh, configured by ``QUAY_SSH_COMMAND="ssh -F FILE"`` (the test's key, known_hosts and
BatchMode: nothing of the machine's ~/.ssh is read or written).

From the near host: status, show, exec, logs -f (interrupted: nothing lingers over there), exec
-it and run -it through a pty (size and resizes, the exit status), plan of a local directory by
the far agent, named connections, and a fleet status with one host down (exit status 4); last,
the far agent stopped: a clear error naming the host. Namespace hosts only: the VM host has no
network namespace of this machine to join.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import (
    IMAGE,
    QUAYCTL,
    RUN_DIR,
    WEB_BASE,
    Deployment,
    NamespaceHost,
    deployed,
    running,
    wait_until,
)
from tests.support.interrupt import interrupt
from tests.support.systemd_host import CONTAINER_TEST_MARKS
from tests.support.terminal import SHELL_SESSION, drive

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

NEAR_ADDRESS = "192.0.2.1"
FAR_ADDRESS = "192.0.2.2"
SSH_PORT = 2222
CLOSED_PORT = 2223  # nothing listens there: a host that is down
FAR = f"ssh://root@{FAR_ADDRESS}:{SSH_PORT}"
DOWN = f"ssh://root@{FAR_ADDRESS}:{CLOSED_PORT}"
TICKER = f"""
[container]
image = "{IMAGE}"
command = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done"]
stop_timeout = "1s"
"""
QUIET = f"""
[container]
image = "{IMAGE}"
command = ["sh", "-c", "echo quiet-once; exec sleep 100000"]
stop_timeout = "1s"
"""
"""Writes one line, then nothing: a ``journalctl -f`` following it is never told by a failed
write that its reader went away (the guard's case)."""
SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PrintMotd no
PrintLastLog no
"""
SSH_CONFIG = """\
Host *
  IdentityFile {dir}/id
  IdentitiesOnly yes
  UserKnownHostsFile {dir}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
"""


@dataclass
class Pair:
    near: Deployment
    far: Deployment
    env: dict[str, str]
    """What quayctl on the near host needs: the ssh command, the far quayctl."""

    def ctl(self, *argv: str, host: str = FAR) -> list[str]:
        """quayctl on the near host against ``host``, as a command line for ``env``."""
        variables = [f"{k}={v}" for k, v in self.env.items()]
        return ["env", *variables, str(QUAYCTL), "--host", host, "--run-dir", RUN_DIR, *argv]

    def run(
        self, *argv: str, host: str = FAR, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.near.host.run(self.ctl(*argv, host=host), check=False, timeout=timeout)


def _pid(deployment: Deployment) -> int:
    assert isinstance(deployment.host, NamespaceHost)
    return deployment.host.inner.pid


def _in_netns(pid: int, *argv: str) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], check=True, capture_output=True)


@contextlib.contextmanager
def linked(near: Deployment, far: Deployment) -> Iterator[None]:
    """A veth pair between the two hosts' network namespaces, addressed inside them only."""
    near_pid, far_pid = _pid(near), _pid(far)
    name = f"qr{secrets.token_hex(3)}"
    _in_netns(
        near_pid,
        "ip",
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        name,
        "netns",
        str(far_pid),
    )
    try:
        for pid, address in ((near_pid, NEAR_ADDRESS), (far_pid, FAR_ADDRESS)):
            _in_netns(pid, "ip", "addr", "add", f"{address}/30", "dev", name)
            _in_netns(pid, "ip", "link", "set", name, "up")
        yield
    finally:
        subprocess.run(
            ["nsenter", "-t", str(near_pid), "-n", "ip", "link", "del", name],
            check=False,
            capture_output=True,
        )


@contextlib.contextmanager
def sshd(far: Deployment, keys: Path) -> Iterator[None]:
    """Debian's sshd in the far host (a transient unit of its systemd), on 192.0.2.2 alone."""
    (keys / "sshd_config").write_text(
        SSHD_CONFIG.format(port=SSH_PORT, address=FAR_ADDRESS, dir=keys)
    )
    far.host.run(["mkdir", "-p", "/run/sshd"])  # privilege separation, in the host's own /run
    far.host.run(["/usr/sbin/sshd", "-t", "-f", str(keys / "sshd_config")])
    unit = "quay-test-sshd"
    far.host.run(
        [
            "systemd-run",
            f"--unit={unit}",
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-f",
            str(keys / "sshd_config"),
        ]
    )
    try:
        wait_until(
            "sshd listening",
            lambda: f"{FAR_ADDRESS}:{SSH_PORT}" in far.host.run(["ss", "-ltnH"]).stdout,
        )
        yield
    finally:
        far.host.systemctl("stop", unit, check=False)


def _keys(directory: Path) -> None:
    """The host key, the client's key, authorized_keys, known_hosts and the ssh config."""
    for name in ("host_key", "id"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)], check=True
        )
    (directory / "authorized_keys").write_text((directory / "id.pub").read_text())
    host_key = (directory / "host_key.pub").read_text().split()
    (directory / "known_hosts").write_text(
        f"[{FAR_ADDRESS}]:{SSH_PORT} {host_key[0]} {host_key[1]}\n"
    )
    (directory / "ssh_config").write_text(SSH_CONFIG.format(dir=directory))


@pytest.fixture(scope="module")
def pair(sd_notify: Path) -> Iterator[Pair]:
    with (
        deployed(sd_notify, {"web": WEB_BASE}) as near,
        deployed(sd_notify, {"web": WEB_BASE, "ticker": TICKER, "quiet": QUIET}) as far,
    ):
        keys = Path(far.host.staging) / "ssh"
        keys.mkdir(mode=0o700)
        _keys(keys)
        for deployment, names in ((near, ["web"]), (far, ["web", "ticker", "quiet"])):
            for name in names:
                running(deployment, name)
        with linked(near, far), sshd(far, keys):
            env = {
                "QUAY_SSH_COMMAND": f"ssh -F {keys}/ssh_config",
                "QUAY_REMOTE_QUAYCTL": str(QUAYCTL),
            }
            yield Pair(near, far, env)


def test_status_is_the_far_agents(pair: Pair) -> None:
    done = pair.run("status")
    assert done.returncode == 0, done.stderr
    assert f"{pair.far.config_dir}: 3 units" in done.stdout
    assert "ticker" in done.stdout
    listed = pair.run("status", "--json")
    assert json.loads(listed.stdout)["agent"]["pid"] == pair.far.main_pid()
    assert pair.run("ping").stdout == f"quayd {pair.far.main_pid()} is up\n"


def test_show_and_exec_run_in_the_far_unit(pair: Pair) -> None:
    shown = pair.run("show", "ticker", "--json")
    assert json.loads(shown.stdout)["name"] == "ticker"
    done = pair.run("exec", "web", "--", "sh", "-c", "hostname; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "web\n", "err\n")
    missing = pair.run("show", "nope")
    assert missing.returncode == 1
    assert "nope" in missing.stderr


def test_events_are_the_far_agents(pair: Pair) -> None:
    done = pair.run("events", "--json")
    assert done.returncode == 0, done.stderr
    units = {json.loads(line)["unit"] for line in done.stdout.splitlines()}
    assert "ticker" in units


def test_events_follow_through_the_relay_and_end_when_interrupted(pair: Pair) -> None:
    # events -f runs here, its stream through the far dial-stdio; Ctrl-C ends it (status 0,
    # as locally) and the relay ends by itself: the agent saw the client hang up.
    result = pair.near.host.call(
        interrupt, argv=pair.ctl("events", "-f"), expect="ticker", timeout=30
    )
    assert result["signalled"], result
    assert result["status"] == 0, result
    assert "ticker" in result["stdout"]
    wait_until(
        "the far dial-stdio gone",
        lambda: not _lingering(pair.far, "dial-stdio") or None,
        timeout=10,
    )
    assert not _lingering(pair.near, "ssh -F")


def _lingering(deployment: Deployment, needle: str) -> list[str]:
    listed = deployment.host.run(["ps", "-eo", "pid,args"]).stdout.splitlines()
    return [line for line in listed if needle in line and "ps -eo" not in line]


def test_logs_follow_interrupted_leaves_nothing_on_the_far_host(pair: Pair) -> None:
    result = pair.near.host.call(
        interrupt, argv=pair.ctl("logs", "-f", "quiet"), expect="quiet-once", timeout=30
    )
    assert result["signalled"], result
    assert result["status"] == 130, result  # SIGINT's, as a shell says
    assert result["stdout"] == "quiet-once\n"
    wait_until(
        "the far journalctl gone",
        lambda: not _lingering(pair.far, "quay-quiet") or None,
        timeout=10,
    )
    assert not _lingering(pair.far, "dial-stdio")
    assert not _lingering(pair.near, "ssh -F")


def test_run_interrupted_without_a_terminal_ends_over_there(pair: Pair) -> None:
    # No terminal: ssh dies of the Ctrl-C, and nothing would tell the far quayctl run, which
    # waits on its container; the far guard sees its stdout lose its reader and stops it,
    # which stops the container (its SIGTERM forwarded), which --rm then removes.
    argv = pair.ctl(
        "run", "--rm", "--name", "interrupted", IMAGE, "sh", "-c", "echo up; sleep 100000"
    )
    result = pair.near.host.call(interrupt, argv=argv, expect="up", timeout=30)
    assert result["signalled"], result
    assert result["status"] == 130, result
    wait_until(
        "the far quayctl run gone",
        lambda: not _lingering(pair.far, "--name interrupted") or None,
        timeout=20,
    )
    wait_until(
        "the unit removed", lambda: "interrupted" not in pair.far.units() or None, timeout=30
    )


def test_run_it_through_ssh_gets_the_terminal_and_its_size(pair: Pair) -> None:
    session = pair.near.host.call(
        drive,
        argv=["/usr/bin/env", *pair.ctl("run", "--rm", "-it", IMAGE, "sh")[1:]],
        size=[24, 80],
        steps=SHELL_SESSION,
        timeout=60,
    )
    assert session["failed_step"] is None, session["output"]
    assert session["status"] == 3, session["output"]
    started = [
        e for e in pair.far.events() if e["kind"] == "started" and e["unit"].startswith("run-")
    ]
    assert started  # it ran on the far host
    assert not [e for e in pair.near.events() if e["unit"].startswith("run-")]


def test_exec_it_through_ssh(pair: Pair) -> None:
    session = pair.near.host.call(
        drive,
        argv=["/usr/bin/env", *pair.ctl("exec", "-it", "web", "sh")[1:]],
        size=[24, 80],
        steps=[
            {"expect": "# ", "send": "hostname; stty size\n"},
            {"expect": "24 80", "send": "exit 5\n"},
        ],
        timeout=30,
    )
    assert session["failed_step"] is None, session["output"]
    assert session["status"] == 5, session["output"]


def test_plan_of_a_local_directory_by_the_far_agent(pair: Pair) -> None:
    staging = Path(pair.near.host.staging) / "staging-quay.d"
    staging.mkdir()
    (staging / "web.toml").write_text(WEB_BASE + '[resources]\nmemory = "96M"\n')
    (staging / "bad.toml").write_text(WEB_BASE + '[resources]\nmemory = "lots"\n')
    done = pair.run("plan", str(staging))
    assert done.returncode == 0, done.stderr
    planned = done.stdout.splitlines()
    assert any(line.startswith("replace web: ") and "96M" in line for line in planned), planned
    # The far agent's units: ticker is not in DIR, so it would go.
    assert any(line.startswith(("stop ticker", "remove ticker")) for line in planned), planned
    assert f"{staging}/bad.toml:" in done.stderr  # the findings name the caller's files
    assert "quayctl-plan-" not in done.stdout + done.stderr
    leftover = pair.far.host.run(["sh", "-c", "ls -d /tmp/quayctl-plan-* 2>/dev/null || true"])
    assert leftover.stdout == ""


def test_named_connections(pair: Pair) -> None:
    config = Path(pair.near.host.staging) / "config"
    env = [f"XDG_CONFIG_HOME={config}"]
    add = pair.near.host.run(
        ["env", *env, str(QUAYCTL), "connection", "add", "far", FAR, "--quayctl", str(QUAYCTL)]
    )
    assert add.returncode == 0
    bad = pair.near.host.run(
        ["env", *env, str(QUAYCTL), "connection", "add", "x", "ftp://h"], check=False
    )
    assert bad.returncode == 1
    assert "not a host URL" in bad.stderr
    listed = pair.near.host.run(["env", *env, str(QUAYCTL), "connection", "ls"]).stdout
    assert f"far   {FAR}" in listed
    ssh = f"QUAY_SSH_COMMAND={pair.env['QUAY_SSH_COMMAND']}"
    by_name = pair.near.host.run(
        ["env", *env, ssh, str(QUAYCTL), "--host", "far", "ping"], check=False
    )
    assert by_name.stdout == f"quayd {pair.far.main_pid()} is up\n", by_name.stderr
    pair.near.host.run(["env", *env, str(QUAYCTL), "connection", "default", "far"])
    by_default = pair.near.host.run(["env", *env, ssh, str(QUAYCTL), "ping"], check=False)
    assert by_default.stdout == f"quayd {pair.far.main_pid()} is up\n", by_default.stderr
    here = pair.near.host.run(
        ["env", *env, str(QUAYCTL), "--host", "local", "--run-dir", RUN_DIR, "ping"]
    )
    assert here.stdout == f"quayd {pair.near.main_pid()} is up\n"


def test_fleet_status_with_one_host_down(pair: Pair) -> None:
    argv = pair.ctl("--host", "local", "--host", DOWN, "status")
    done = pair.near.host.run(argv, check=False, timeout=60)
    assert done.returncode == 4, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["HOST", "NAME", "STATE"]
    rows = [line.split()[:3] for line in lines[1:] if not line.startswith(" ")]
    assert rows == [
        [FAR, "quiet", "running"],
        [FAR, "ticker", "running"],
        [FAR, "web", "running"],
        ["local", "web", "running"],
        [DOWN, "-", "unreachable"],
    ]
    assert f"{DOWN}: cannot reach {DOWN} over ssh (ssh exited 255)" in done.stderr
    assert "Connection refused" in done.stderr
    healthy = pair.near.host.run(pair.ctl("--host", "local", "status"), check=False)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


def test_a_far_agent_that_is_down_is_named(pair: Pair) -> None:
    pair.far.host.systemctl("stop", "quayd")
    try:
        done = pair.run("status")
        assert done.returncode == 4
        assert f"on {FAR}: quayctl system dial-stdio: quayd is not running on " in done.stderr
        assert f"{RUN_DIR}/quayd.sock" in done.stderr
    finally:
        pair.far.host.systemctl("start", "quayd")
