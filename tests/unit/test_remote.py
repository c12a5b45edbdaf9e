"""quayctl --host's pure parts: URLs, ssh's command line, where a command runs, the
connections file, the fleet table (docs/remote.md)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from quayd.cli import connections, fleet, forward, quayctl, remote, targets
from quayd.cli.remote import HostError, SshTarget, UnixTarget, parse_url

# --- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("ssh://prod1", SshTarget("prod1")),
        ("ssh://root@prod1", SshTarget("prod1", user="root")),
        ("ssh://ops@10.0.0.7:2222", SshTarget("10.0.0.7", user="ops", port=2222)),
        ("ssh://[2001:db8::1]:22", SshTarget("2001:db8::1", port=22)),
        ("ssh://h/", SshTarget("h")),
        ("ssh://h/run/q/quayd.sock", SshTarget("h", socket="/run/q/quayd.sock")),
        ("unix:///run/quay/quayd.sock", UnixTarget("/run/quay/quayd.sock")),
    ],
)
def test_urls_parse(url: str, target: remote.Target) -> None:
    assert parse_url(url) == target


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("prod1", "not a host URL"),
        ("ftp://h", "not a host URL"),
        ("ssh://", "no host"),
        ("ssh://h:99999", "a port is a number from 1 to 65535"),
        ("ssh://h:0", "port 0"),
        ("ssh://h:x", "a port is a number"),
        ("ssh://u:secret@h", "no password in the URL"),
        ("ssh://-oProxyCommand=x", "cannot start with '-'"),
        ("ssh://h?x=1", "no ?query"),
        ("ssh://h b", "no spaces"),
        ("unix://relative", "absolute path"),
    ],
)
def test_bad_urls_say_what_is_accepted(url: str, says: str) -> None:
    with pytest.raises(HostError, match=r".*") as raised:
        parse_url(url)
    assert says in str(raised.value)


def test_a_target_prints_back_as_its_url() -> None:
    for url in ("ssh://root@prod1:2222/run/q/quayd.sock", "ssh://[2001:db8::1]:22", "ssh://h"):
        assert parse_url(url).url == url


# --- ssh's command line --------------------------------------------------------------------------


def test_ssh_argv_passes_port_and_user_as_options_and_quotes_the_far_command() -> None:
    target = SshTarget("prod1", user="ops", port=2222, socket="/srv/my quay/quayd.sock")
    far = remote.dial_command(target, {}, ["--run-dir", "/run/q"], attach=False)
    argv = remote.ssh_argv(target, far, {}, tty=False)
    assert argv[:7] == ["ssh", "-T", "-p", "2222", "-l", "ops", "--"]
    assert argv[7] == "prod1"
    assert shlex.split(argv[8]) == [
        "quayctl",
        "--host",
        "local",  # a default connection over there must not send it on
        "--run-dir",
        "/run/q",
        "system",
        "dial-stdio",
        "--socket",
        "/srv/my quay/quayd.sock",
    ]


def test_the_ssh_command_and_far_quayctl_can_be_replaced() -> None:
    environ = {"QUAY_SSH_COMMAND": "ssh -F '/etc/my ssh/config'", "QUAY_REMOTE_QUAYCTL": "/opt/q"}
    target = SshTarget("h")
    argv = remote.ssh_argv(
        target, remote.dial_command(target, environ, [], attach=True), environ, tty=True
    )
    assert argv[:5] == ["ssh", "-F", "/etc/my ssh/config", "-t", "--"]
    assert shlex.split(argv[6])[0] == "/opt/q"
    assert shlex.split(argv[6])[-1] == "--attach"
    # A connection's quayctl wins over the variable.
    assert remote.far_quayctl(target._replace(quayctl="/srv/q"), environ) == "/srv/q"
    with pytest.raises(HostError, match="QUAY_SSH_COMMAND"):
        remote.ssh_command({"QUAY_SSH_COMMAND": "ssh -F 'unclosed"})


def test_forwarded_commands_keep_their_arguments_whole() -> None:
    destination = remote.Destination("h", SshTarget("h"))
    argv = forward.forwarded_argv(
        destination,
        ["--run-dir", "/run/q"],
        ["exec", "web", "--", "sh", "-c", "echo a; b"],
        {},
        tty=True,
    )
    assert argv[1] == "-t"
    assert shlex.split(argv[-1]) == [
        "quayctl", "--host", "local", "system", "forwarded", "--",
        "--host", "local", "--run-dir", "/run/q", "exec", "web", "--", "sh", "-c", "echo a; b",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "said", "expected"),
    [
        (
            255,
            "ssh: connect to host h port 22: Connection refused",
            "cannot reach h over ssh (ssh exited 255): ssh: connect",
        ),
        (255, "root@h: Permission denied (publickey).", "Permission denied (publickey)"),
        (
            1,
            "quayctl system dial-stdio: quayd is not running on far",
            "on h: quayctl system dial-stdio: quayd is not running on far",
        ),
        (None, "", "h did not answer within 5s over ssh"),
    ],
)
def test_ssh_failures_name_the_host_and_say_what_ssh_said(
    status: int | None, said: str, expected: str
) -> None:
    error: BaseException = TimeoutError() if status is None else ConnectionResetError()
    assert expected in remote.explain_failure("h", error, 5.0, status, said)


# --- where a command runs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        (["status"], "here"),
        (["events", "-f"], "here"),
        (["exec", "web", "--", "ls"], "here"),
        (["exec", "-it", "web", "sh"], "tty"),
        (["exec", "-i", "web", "cat"], "far"),
        (["run", "-d", "img"], "here"),
        (["run", "--rm", "-it", "img", "sh"], "tty"),
        (["run", "img", "echo"], "far"),
        (["attach", "run-1"], "tty"),
        (["logs", "-f", "web"], "far"),
        (["plan"], "here"),
        (["plan", "./staging"], "plan-dir"),
        (["validate"], "far"),
        (["validate", "web.toml"], "here"),
        (["validate", "--as", "web"], "far"),
        (["render", "web"], "far"),
        (["render", "./web.toml"], "here"),
        (["image", "ls"], "far"),
        (["export", "kube", "web"], "far"),
    ],
)
def test_each_command_runs_where_it_can(argv: list[str], where: str) -> None:
    arguments = ["--host", "ssh://h", *argv]
    assert targets.placement(argv[0], arguments) == where


def test_the_leading_options_are_scanned_without_argparse() -> None:
    scanned = targets.scan(
        ["--host", "a", "--run-dir=/r", "--host=b", "--all-connections", "status", "-x"]
    )
    assert scanned == targets.Scanned(["a", "b"], True, ["--run-dir", "/r"], 5)
    assert targets.scan(["-h"]) is None
    assert targets.scan(["--host"]) is None


def test_hosts_resolve_in_order_names_urls_and_local(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    path = connections.config_file(environ)
    connections.save(
        path,
        connections.Connections(
            {"prod": connections.Connection("prod", "ssh://root@prod1", "/opt/q")}, default="prod"
        ),
    )
    chosen = targets.destinations(["local", "prod", "ssh://x"], False, environ)
    assert [d.name for d in chosen] == ["local", "prod", "ssh://x"]
    assert chosen[1].target == SshTarget("prod1", user="root", quayctl="/opt/q")
    # No --host: QUAY_HOST, else the default connection.
    assert targets.destinations([], False, {**environ, "QUAY_HOST": "ssh://y"})[0].name == "ssh://y"
    assert targets.destinations([], False, environ)[0].name == "prod"
    assert [d.name for d in targets.destinations([], True, environ)] == ["prod"]
    with pytest.raises(HostError, match="neither a connection"):
        targets.destinations(["nope"], False, environ)


def test_the_lean_check_finds_the_connections_file_where_the_module_does(tmp_path: Path) -> None:
    for environ in (
        {"XDG_CONFIG_HOME": str(tmp_path / "x")},
        {"HOME": str(tmp_path), "XDG_CONFIG_HOME": "rel"},
    ):
        assert not quayctl.remote_wanted([], dict(environ))
        path = connections.config_file(environ)
        path.parent.mkdir(parents=True)
        path.write_text("")
        assert quayctl.remote_wanted([], dict(environ))
    assert quayctl.remote_wanted(["--host=a", "status"], {"HOME": str(tmp_path / "none")})
    assert quayctl.remote_wanted(["status"], {"QUAY_HOST": "ssh://a", "HOME": "/nonexistent"})


# --- the connections file ------------------------------------------------------------------------


def test_connections_round_trip_atomically_and_privately(tmp_path: Path) -> None:
    path = tmp_path / "quay" / "connections.toml"
    kept = connections.Connections(
        {
            "prod": connections.Connection("prod", "ssh://root@prod1"),
            "lab": connections.Connection("lab", "ssh://ops@lab:2222/run/q.sock", "/opt/q"),
        },
        default="lab",
    )
    connections.save(path, kept)
    assert connections.load(path) == kept
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["connections.toml"]  # no temporary left
    assert connections.load(tmp_path / "missing.toml") == connections.Connections({})


def _connection(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    parser = argparse.ArgumentParser()
    connections.add_connection_commands(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["connection", *args])
    code: int = parsed.handler(parsed)
    return code


def test_the_connection_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _connection(["add", "prod", "ssh://root@prod1"], tmp_path, monkeypatch) == 0
    assert _connection(["add", "lab", "ssh://lab:2222", "--default"], tmp_path, monkeypatch) == 0
    assert _connection(["ls"], tmp_path, monkeypatch) == 0
    assert capsys.readouterr().out == (
        "NAME  URL               DEFAULT\nlab   ssh://lab:2222    *\nprod  ssh://root@prod1\n"
    )
    assert _connection(["default", "prod"], tmp_path, monkeypatch) == 0
    assert _connection(["rm", "prod"], tmp_path, monkeypatch) == 0
    assert connections.load(connections.config_file()) == connections.Connections(
        {"lab": connections.Connection("lab", "ssh://lab:2222")}
    )
    capsys.readouterr()
    for bad, says in (
        (["add", "x", "ftp://h"], "not a host URL"),
        (["add", "local", "ssh://h"], "reserved"),
        (["add", ".x", "ssh://h"], "not a connection name"),
        (["rm", "nope"], "no connection 'nope'"),
        (["default", "nope"], "no connection 'nope'"),
    ):
        assert _connection(bad, tmp_path, monkeypatch) == 1
        assert says in capsys.readouterr().err


def test_a_broken_connections_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "connections.toml"
    path.write_text("[connections.a]\nurl = 3\n")
    with pytest.raises(connections.ConnectionsError, match=r"connections.a has no url"):
        connections.load(path)
    path.write_text("not toml [")
    with pytest.raises(connections.ConnectionsError, match="cannot be read"):
        connections.load(path)


# --- the fleet table -----------------------------------------------------------------------------


def _unit(name: str, state: str = "running") -> dict[str, object]:
    return {
        "name": name, "state": state, "ready": state == "running", "detail": "", "pid": 7,
        "started_at": 100.0, "restarts": 0, "image": "localhost/busybox:1.36", "findings": [],
        "health": None, "ip": None, "ports": [], "digest": None, "last_exit": None, "held": False,
    }  # fmt: skip


def _payload(*units: dict[str, object]) -> dict[str, object]:
    return {
        "agent": {"pid": 1, "version": "0.1.0", "config_dir": "/etc/quay.d"},
        "units": list(units),
    }


def test_the_fleet_table_has_a_host_column_and_a_row_per_failed_host() -> None:
    answers = [
        fleet.HostStatus("b", _payload(_unit("web"), _unit("db", "backoff"))),
        fleet.HostStatus("a", error="cannot reach a over ssh (ssh exited 255): refused"),
        fleet.HostStatus("c", _payload()),
    ]
    table = fleet.format_fleet(answers, [], 160.0)
    assert table.splitlines() == [
        "HOST  NAME  STATE        HEALTH  IMAGE                   IP  PORTS  RESTARTS  UPTIME  "
        "DETAIL",
        "b     db    backoff      -       localhost/busybox:1.36  -   -      0         -",
        "b     web   running      -       localhost/busybox:1.36  -   -      0         1m00s",
        "a     -     unreachable  -       -                       -   -      -         -",
        "    cannot reach a over ssh (ssh exited 255): refused",
        "c     -     no units     -       -                       -   -      -         -",
    ]
    assert fleet.fleet_exit_code(answers, []) == 4
    assert fleet.fleet_exit_code([answers[0]], []) == 3
    assert fleet.fleet_exit_code([answers[0]], ["web"]) == 0
    assert fleet.fleet_json(answers[1:2], []) == {
        "hosts": [{"host": "a", "error": answers[1].error}]
    }
