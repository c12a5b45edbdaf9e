"""quayctl's agent views as text (status table, colour, show, events, wait) and its log reader.

Pure functions of a payload and ``now``; the log follower runs on a temporary file.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from quayd.cli import completion, control, logs, quayctl
from quayd.cli.status import (
    config_lines,
    exit_code,
    format_age,
    format_event,
    format_header,
    format_show,
    format_table,
    image_cell,
    paint,
    table_row,
    use_colour,
    wait_outcome,
)
from quayd.units.settings import Settings

NOW = 1_790_010_000.0
HEADER = "quayd 0.1.0 (pid 123), up 2h03m, /etc/quay.d: "
DIGEST = "sha256:f4bc048d" + "0" * 56


def unit(name: str, state: str, **fields: Any) -> dict[str, Any]:
    live = state in ("starting", "running", "stopping")
    return {
        "name": name,
        "state": state,
        "ready": state == "running",
        "detail": "",
        "pid": 4242 if live else None,
        "started_at": NOW - 312 if live else None,
        "restarts": 0,
        "next_attempt": None,
        "image": "localhost/busybox:1.36",
        "findings": [],
        "status_text": None,
        "health": None,
        "ip": None,
        "ports": [],
        "digest": None,
        "last_exit": None,
        "held": False,
        **fields,
    }


def payload(*units: dict[str, Any]) -> dict[str, Any]:
    agent = {"pid": 123, "version": "0.1.0", "started_at": NOW - 7380, "config_dir": "/etc/quay.d"}
    return {"agent": agent, "units": list(units)}


def exited(code: int | None, ago: float, **fields: Any) -> dict[str, Any]:
    return {
        "at": NOW - ago,
        "code": code,
        "signal": None,
        "oom": False,
        "description": f"exited {code}",
        **fields,
    }


# --- status --------------------------------------------------------------------------------------


TABLE_UNITS = (
    unit("web", "running", health="healthy", digest=DIGEST, ip="10.88.0.2", ports=["8080:80"]),
    unit("job", "exited", restarts=2, last_exit=exited(3, 125), detail="exited 3; not restarted"),
    unit("db", "stopped", held=True, detail="stopped by an operator; " + "x" * 100),
)


def test_the_table_has_every_column_and_fits_100() -> None:
    """Too narrow for DETAIL beside the other columns: it goes below each row, cut to fit."""
    assert format_table(payload(*TABLE_UNITS), NOW) == (
        HEADER + "3 units: 1 running, 1 stopped, 1 exited, 0 invalid\n"
        "NAME  STATE    HEALTH   IMAGE                            IP         PORTS    RESTARTS  "
        "UPTIME\n"
        "db    stopped  -        localhost/busybox:1.36           -          -        0         -\n"
        "    stopped by an operator; " + "x" * 71 + "…\n"
        "job   exited   -        localhost/busybox:1.36           -          -        2         "
        "exited 3, 2m ago\n"
        "    exited 3; not restarted\n"
        "web   running  healthy  localhost/busybox:1.36@f4bc048d  10.88.0.2  8080:80  0         "
        "5m12s\n"
    )


def test_a_wide_terminal_gets_detail_beside() -> None:
    lines = format_table(payload(*TABLE_UNITS), NOW, width=140).splitlines()
    assert lines[1].split()[-1] == "DETAIL"
    assert lines[2].endswith("  -                 stopped by an operator; " + "x" * 10 + "…")
    assert len(lines[2]) == 140
    assert lines[3].endswith("  exited 3, 2m ago  exited 3; not restarted")
    long = "x" * 150
    row = format_table(payload(unit("web", "waiting", detail=long)), NOW, width=300)
    assert row.splitlines()[2].endswith(long)


@pytest.mark.parametrize(
    ("fields", "cell"),
    [
        ({"state": "running"}, "5m12s"),
        ({"state": "exited", "last_exit": exited(3, 125)}, "exited 3, 2m ago"),
        ({"state": "exited", "last_exit": exited(0, 4000)}, "exited 0, 1h ago"),
        (
            {"state": "backoff", "last_exit": exited(None, 5, signal="SIGKILL")},
            "killed SIGKILL, 5s ago",
        ),
        ({"state": "backoff", "last_exit": exited(None, 90000, oom=True)}, "oom, 1d ago"),
        ({"state": "backoff", "last_exit": exited(None, 1)}, "ended, 1s ago"),
        ({"state": "pulling"}, "-"),
    ],
)
def test_uptime_or_last_exit(fields: dict[str, Any], cell: str) -> None:
    assert table_row(unit("web", **fields), NOW)[7] == cell


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({}, "localhost/busybox:1.36"),
        ({"digest": DIGEST}, "localhost/busybox:1.36@f4bc048d"),
        ({"image": None, "digest": None}, "-"),
    ],
)
def test_image_cell(fields: dict[str, Any], text: str) -> None:
    assert image_cell(unit("web", "running", **fields)) == text


def test_colour_on_a_terminal_only() -> None:
    units = payload(
        unit("a", "running", health="unhealthy"),
        unit("b", "backoff"),
        unit("c", "starting"),
        unit("d", "stopped"),
        unit("e", "paused"),  # unknown: as it is
    )
    plain = format_table(units, NOW)
    assert "\x1b" not in plain
    coloured = format_table(units, NOW, colour=True)
    rows = coloured.splitlines()[2:]
    assert rows[0].startswith("a     \x1b[32mrunning \x1b[0m  \x1b[31munhealthy\x1b[0m  ")
    assert "\x1b[31mbackoff " in rows[1]
    assert "\x1b[33mstarting" in rows[2]
    assert "\x1b[2mstopped " in rows[3]
    assert "\x1b" not in rows[4]
    # Without the codes, the coloured table is the plain one: the alignment is the same.
    assert (
        coloured.replace("\x1b[0m", "")
        .replace("\x1b[32m", "")
        .replace("\x1b[31m", "")
        .replace("\x1b[33m", "")
        .replace("\x1b[2m", "")
        == plain
    )
    assert paint("x", "running", False) == "x"


@pytest.mark.parametrize(
    ("isatty", "environ", "on"),
    [
        (True, {}, True),
        (False, {}, False),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),  # no-color.org: set and not empty
    ],
)
def test_when_to_colour(isatty: bool, environ: dict[str, str], on: bool) -> None:
    assert use_colour(isatty, environ) is on


@pytest.mark.parametrize(
    ("states", "code"),
    [
        (["running", "stopped"], 0),  # stopped by an operator: as wanted
        (["exited", "stopped"], 0),
        (["running", "backoff"], 3),
    ],
)
def test_held_units_count_as_fine(states: list[str], code: int) -> None:
    assert exit_code(unit(f"u{i}", s) for i, s in enumerate(states)) == code


def test_stopped_is_counted_in_the_header() -> None:
    assert format_header(payload(unit("a", "stopped"), unit("b", "stopping")), NOW) == (
        HEADER + "2 units: 0 running, 1 stopping, 1 stopped, 0 invalid"
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59, "59s"), (60, "1m"), (7300, "2h"), (200000, "2d")]
)
def test_ages(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


# --- show ----------------------------------------------------------------------------------------


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


SHOWN = {
    **unit(
        "web",
        "running",
        health="healthy",
        digest=DIGEST,
        ip="10.88.0.2",
        ports=["8080:80"],
        status_text="serving",
    ),
    "unit": {
        "container": {"image": "busybox:1.36", "command": ["httpd", "-f"]},
        "restart": {"policy": "always"},
        "mounts": [{"type": "volume", "source": "data", "target": "/www"}],
    },
    "container": {
        "id": "web",
        "pid": 157,
        "scope": "quay-web.scope",
        "started_at": NOW - 312,
        "ready_at": NOW - 311.3,
    },
    "limits": {"memory": 64 * 1024 * 1024, "cpus": 0.5, "pids": None},
    "usage": {"memory_bytes": 1843200, "cpu_seconds": 0.42, "pids": 1},
    "health": {
        "state": "healthy",
        "failures": 0,
        "history": [{"at": NOW - 20, "passed": False}, {"at": NOW - 10, "passed": True}],
    },
    "exits": [exited(1, 400, description="exited 1")],
}


def test_show_a_running_unit() -> None:
    assert format_show(SHOWN, NOW) == (
        "web: running, ready\n"
        "status     serving\n"
        f"image      localhost/busybox:1.36@{DIGEST}\n"
        "container  web\n"
        "pid        157\n"
        "scope      quay-web.scope\n"
        f"started    {clock(NOW - 312)} (up 5m12s), ready after 0.7s\n"
        "ip         10.88.0.2\n"
        "ports      8080:80\n"
        "memory     1.8 MiB (limit 64.0 MiB)\n"
        "cpu        0.42s used (limit 0.5 cpus)\n"
        "pids       1 (limit unlimited)\n"
        "health     healthy (0 failures in a row)\n"
        f"checks     {clock(NOW - 20)} FAILED, {clock(NOW - 10)} ok\n"
        "exits\n"
        f"  {clock(NOW - 400)} (6m ago)  exited 1: exited 1\n"
        "config\n"
        '  container.image = "busybox:1.36"\n'
        '  container.command = ["httpd", "-f"]\n'
        '  restart.policy = "always"\n'
        '  mounts[0].type = "volume"\n'
        '  mounts[0].source = "data"\n'
        '  mounts[0].target = "/www"\n'
    )


def test_show_a_unit_in_backoff_held_or_invalid() -> None:
    backoff = {
        **unit("job", "backoff", next_attempt=NOW + 8, detail="exited 1"),
        "unit": None,
        "container": None,
        "limits": {"memory": None, "cpus": None, "pids": None},
        "usage": None,
        "exits": [],
    }
    text = format_show(backoff, NOW)
    assert text.splitlines()[:4] == [
        "job: backoff",
        "detail     exited 1",
        f"next       attempt at {clock(NOW + 8)} (in 8s)",
        "image      localhost/busybox:1.36",
    ]
    assert "container  none\n" in text
    assert "memory     - (limit unlimited)\n" in text
    assert "config" not in text
    held = format_show({**backoff, "state": "stopped", "held": True}, NOW)
    assert held.startswith("job: stopped (held by an operator until quayctl start)\n")
    invalid = format_show({**backoff, "state": "invalid", "findings": ["job.toml:3: bad"]}, NOW)
    assert invalid.endswith("findings\n  job.toml:3: bad\n")


def test_config_lines_are_toml_ish() -> None:
    assert config_lines({"a": {"b": 1, "c": [1, 2]}, "d": "x\ny", "e": True}) == [
        "a.b = 1",
        "a.c = [1, 2]",
        'd = "x\\ny"',
        "e = true",
    ]


# --- events --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {"seq": 1, "at": NOW, "unit": "web", "kind": "exited", "message": "exited 1"},
            f"{clock(NOW)} web exited: exited 1",
        ),
        ({"seq": 2, "at": NOW, "unit": "web", "kind": "started"}, f"{clock(NOW)} web started"),
        ({"unit": "x", "kind": "held", "message": "\x1b[2J"}, "? x held: \\x1b[2J"),
    ],
)
def test_event_lines(event: dict[str, Any], line: str) -> None:
    assert format_event(event) == line


# --- wait ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "code", "text"),
    [
        ([unit("a", "running"), unit("b", "exited", last_exit=exited(0, 1))], 0, ""),
        (
            [unit("a", "running"), unit("b", "starting", detail="waiting for port 80")],
            None,
            "not ready: b (starting: waiting for port 80)",
        ),
        ([unit("a", "running", ready=False)], None, "not ready: a (running: not ready)"),
        (
            [unit("a", "starting"), unit("b", "backoff", detail="exited 1")],
            1,
            "failed: b (backoff: exited 1)",
        ),
        ([unit("a", "invalid")], 1, "failed: a (invalid)"),
        ([unit("a", "stopped")], 1, "failed: a (stopped)"),
        ([unit("a", "exited", last_exit=exited(2, 1))], 1, "failed: a (exited)"),
        ([unit("a", "exited", last_exit=exited(None, 1, oom=True))], 1, "failed: a (exited)"),
        ([unit("a", "waiting")], None, "not ready: a (waiting)"),
    ],
)
def test_wait_outcomes(units: list[dict[str, Any]], code: int | None, text: str) -> None:
    assert wait_outcome(units, NOW) == (code, text)


# --- exec, the lean dispatch, settings -----------------------------------------------------------


@pytest.mark.parametrize(("code", "status"), [(0, 0), (3, 3), (-9, 137), (None, 1), (300, 1)])
def test_exec_exit_status(code: Any, status: int) -> None:
    assert control.exit_status(code) == status


def test_every_agent_command_takes_the_lean_path() -> None:
    lean = quayctl.build_agent_parser(remote=True)
    commands = next(a for a in lean._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == set(quayctl.AGENT_COMMANDS)
    assert set(control.CONTROL_COMMANDS) <= set(quayctl.AGENT_COMMANDS)
    assert Path(Settings().state_dir) == quayctl.DEFAULT_STATE_DIR


@pytest.mark.parametrize("command", [*quayctl.AGENT_COMMANDS, "completion"])
def test_every_command_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        quayctl.main([command, "--help"])
    assert leaving.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n\n  quayctl " in out or "examples:\n\n  until quayctl" in out


def test_exec_and_run_refuse_what_they_cannot_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert quayctl.main(["--run-dir", "/nonexistent", "exec", "-it", "web"]) == 2
    assert "no command" in capsys.readouterr().err
    assert quayctl.main(["--run-dir", "/nonexistent", "exec", "web"]) == 2
    assert quayctl.main(["--run-dir", "/nonexistent", "run", "-t", "busybox", "sh"]) == 125
    assert "-t needs a terminal" in capsys.readouterr().err


def test_the_state_dir_comes_from_the_settings_file(tmp_path: Path) -> None:
    settings = tmp_path / "quayd.toml"
    settings.write_text(f'state_dir = "{tmp_path}/state"\n')
    args = argparse.Namespace(config=settings, state_dir=None)
    assert quayctl.setting_dir(args, "state_dir", quayctl.DEFAULT_STATE_DIR) == tmp_path / "state"
    args = argparse.Namespace(config=settings, state_dir=Path("/x"))
    assert quayctl.setting_dir(args, "state_dir", quayctl.DEFAULT_STATE_DIR) == Path("/x")


# --- logs ----------------------------------------------------------------------------------------


def logs_args(**fields: Any) -> argparse.Namespace:
    defaults = {"name": "web", "lines": None, "since": None, "follow": False, "file": False}
    return argparse.Namespace(**{**defaults, **fields})


JOURNALCTL_WEB = [
    "journalctl",
    "_SYSTEMD_UNIT=quay-web.scope",  # what the container wrote
    "+",
    "SYSLOG_IDENTIFIER=quay-web",  # or what the agent relayed for it (run without -t)
    "_UID=0",
]


@pytest.mark.parametrize(
    ("fields", "argv"),
    [
        ({}, []),
        ({"lines": 5, "since": "-1h", "follow": True}, ["-n", "5", "--since", "-1h", "-f"]),
    ],
)
def test_journalctl_follows_the_scope(fields: dict[str, Any], argv: list[str]) -> None:
    base = [*JOURNALCTL_WEB, "-o", "cat", "--no-pager"]
    assert logs.journalctl_argv(logs_args(**fields)) == base + argv


def test_logs_run_journalctl_where_journald_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket  # noqa: PLC0415

    path = tmp_path / "stdout"
    with socket.socket(socket.AF_UNIX) as journal:
        journal.bind(str(path))
        monkeypatch.setattr(logs, "JOURNAL_STDOUT_SOCKET", path)
        called: list[list[str]] = []

        def execvp(file: str, argv: list[str]) -> None:
            called.append(argv)
            raise SystemExit(0)

        monkeypatch.setattr(os, "execvp", execvp)
        with pytest.raises(SystemExit):
            logs.run(logs_args(lines=3))
    assert called == [[*JOURNALCTL_WEB, "-o", "cat", "--no-pager", "-n", "3"]]
    assert not logs.journald_running(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("content", "lines", "tail"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),  # a last line still being written counts
        (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"", 3, b""),
        (b"x" * 200000 + b"\n" + b"y\n" * 3, 2, b"y\ny\n"),
    ],
)
def test_tail_offset(content: bytes, lines: int, tail: bytes) -> None:
    file = io.BytesIO(content)
    assert content[logs.tail_offset(file, len(content), lines) :] == tail


def test_the_follower_survives_collapse_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "web.log"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    out = io.BytesIO()
    with logs.Follower(path, path.open("rb"), out) as follower:
        follower.print_tail(2)
        assert out.getvalue() == b"line 998\nline 999\n"
        with path.open("ab") as writer:
            writer.write(b"new 1\n")
        follower.step()
        assert out.getvalue().endswith(b"line 999\nnew 1\n")
        # The front dropped (as FALLOC_FL_COLLAPSE_RANGE does), and a line appended.
        data = path.read_bytes()
        path.write_bytes(data[4096:] + b"new 2\n")  # same inode: rewritten in place
        follower.step()
        assert out.getvalue().endswith(b"line 999\nnew 1\nnew 2\n")
        # Emptied, then written again, longer than before: from the start.
        with path.open("r+b") as cut:
            cut.truncate(0)
        follower.step()
        with path.open("ab") as writer:
            writer.write(b"after truncation\n")
        follower.step()
        assert out.getvalue().endswith(b"new 2\nafter truncation\n")
        with path.open("r+b") as cut:
            cut.truncate(0)
            cut.write(b"x" * 9000 + b"\n")  # longer than before, unseen in between
        follower.step()
        assert out.getvalue().endswith(b"after truncation\n" + b"x" * 9000 + b"\n")
        # Replaced by a new file: read from its start.
        path.unlink()
        follower.step()
        path.write_bytes(b"fresh\n")
        follower.step()
        assert out.getvalue().endswith(b"x\nfresh\n")


# --- completion ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_completion_scripts_parse(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert quayctl.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    done = subprocess.run(
        ["bash", "-n"], input=script, capture_output=True, text=True, check=False, timeout=10
    )
    assert (done.returncode, done.stderr) == (0, "")
    for command in ("status", "show", "logs", "wait", "exec", "image", "completion"):
        assert f"        {command}) opts=" in script
    assert "complete -F _quayctl quayctl" in script
