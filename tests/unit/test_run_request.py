"""quayctl run's pure parts: the command line → the run request → the ad-hoc unit; the frames."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from quayd.agent import adhoc
from quayd.agent.api import RequestError
from quayd.agent.frames import (
    EXIT,
    STDERR,
    STDOUT,
    FrameError,
    FrameReader,
    LineSplitter,
    decode_exit,
    encode,
    encode_exit,
)
from quayd.cli import control, run
from quayd.units.model import Unit

IMAGE = "localhost/busybox:1.36"


def parse(*words: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quayctl")
    commands = parser.add_subparsers(dest="command", required=True)
    control.add_run_commands(commands)
    return parser.parse_args(list(words))


def body(*words: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    return run.request_body(parse("run", *words), environ or {})


def test_a_plain_run_attaches_and_keeps_the_unit() -> None:
    assert body(IMAGE, "sh", "-c", "exit 3") == {
        "image": IMAGE,
        "ports": [],
        "tty": False,
        "rm": False,
        "attach": True,
        "argv": ["sh", "-c", "exit 3"],
    }


def test_dockers_options_as_docker_spells_them() -> None:
    words = [
        "--rm", "-i", "-d", "--name", "try", "-e", "A=1", "--env", "B", "-e", "C=",
        "-v", "/srv:/data:ro", "--volume", "cache:/cache", "-p", "8080:80",
        "--network", "none", "--memory", "64M", "--user", "1000:1000", "--workdir", "/tmp",
        "--entrypoint", "sh", IMAGE, "-c", "echo hi",
    ]  # fmt: skip
    assert body(*words, environ={"B": "from-here"}) == {
        "image": IMAGE,
        "ports": ["8080:80"],
        "tty": False,
        "rm": True,
        "attach": False,
        "interactive": True,
        "argv": ["-c", "echo hi"],
        "name": "try",
        "env": {"A": "1", "B": "from-here", "C": ""},
        "volumes": ["/srv:/data:ro", "cache:/cache"],
        "network": "none",
        "memory": "64M",
        "user": "1000:1000",
        "workdir": "/tmp",
        "entrypoint": "sh",
    }


def test_short_options_and_the_terminal_default_of_rm() -> None:
    got = body("-it", "-m", "1G", "-u", "nobody", "-w", "/", IMAGE)
    assert (got["tty"], got["interactive"], got["rm"], got["attach"]) == (True, True, True, True)
    assert (got["memory"], got["user"], got["workdir"]) == ("1G", "nobody", "/")
    assert body("-t", "--no-rm", IMAGE)["rm"] is False
    assert body(IMAGE, "--", "ls", "-l")["argv"] == ["ls", "-l"]
    assert body(IMAGE, "ls", "-e", "x")["argv"] == ["ls", "-e", "x"]  # CMD's own options


def test_env_without_a_value_here_is_left_out_as_docker() -> None:
    assert run.environment(["A", "B=2"], {}) == {"B": "2"}
    with pytest.raises(run.UsageError, match="no name"):
        run.environment(["=x"], {})


def test_t_and_d_together_leave_the_terminal_for_attach() -> None:
    got = body("-t", "-d", IMAGE)
    assert (got["tty"], got["attach"], got["rm"]) == (True, False, True)


def test_attach_parses() -> None:
    args = parse("attach", "run-1a2b3c", "--no-stdin")
    assert (args.name, args.no_stdin, args.stop_timeout) == ("run-1a2b3c", True, 10.0)


# --- the request → the unit ----------------------------------------------------------------------


def unit_of(**params: Any) -> Unit:
    return Unit.model_validate(adhoc.unit_document({"image": IMAGE, **params}))


def test_the_unit_of_a_plain_run() -> None:
    unit = unit_of(argv=["sh"])
    assert unit.container.args == ["sh"]
    assert unit.container.command is None
    assert unit.restart.policy == "no"
    assert unit.container.labels == {adhoc.ADHOC_LABEL: "true"}
    assert unit.network.mode == "bridge"
    assert unit.mounts == []


def test_the_unit_of_every_option() -> None:
    unit = unit_of(
        argv=["-c", "echo"],
        entrypoint="sh",
        env={"A": "1"},
        volumes=["/srv:/data:ro", "cache:/cache", "/a:/b:rw"],
        ports=["8080:80"],
        network="host",
        memory="64M",
        user="1000:1000",
        workdir="/tmp",
    )
    assert (unit.container.command, unit.container.args) == (["sh"], ["-c", "echo"])
    assert unit.container.env == {"A": "1"}
    assert [(m.type, m.source, str(m.target), m.read_only) for m in unit.mounts] == [
        ("bind", "/srv", "/data", True),
        ("volume", "cache", "/cache", False),
        ("bind", "/a", "/b", False),
    ]
    assert unit.network.mode == "host"
    assert unit.resources.memory == 64 * 1024 * 1024
    assert (unit.container.user, str(unit.container.workdir)) == ("1000:1000", "/tmp")


def test_an_entrypoint_clears_the_images_cmd_as_docker() -> None:
    unit = unit_of(entrypoint="env")
    assert (unit.container.command, unit.container.args) == (["env"], [])
    assert unit_of(entrypoint="", argv=["ls"]).container.command == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"image": ""}, "image"),
        ({"image": IMAGE, "argv": "sh"}, "argv must be a list"),
        ({"image": IMAGE, "env": {"A": 1}}, "env must be"),
        ({"image": IMAGE, "volumes": ["/only-one-part"]}, "SOURCE:TARGET"),
        ({"image": IMAGE, "volumes": ["a:b:c:d"]}, "SOURCE:TARGET"),
        ({"image": IMAGE, "memory": 64}, "memory must be a string"),
    ],
)
def test_a_bad_request_names_its_field(params: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        adhoc.unit_document(params)
    assert caught.value.code == "bad-request"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (
            "cannot start: crun: executable file `nope` not found in $PATH: "
            "No such file or directory",
            adhoc.NOT_FOUND,
        ),
        ('exec: "nope": executable file not found in $PATH', adhoc.NOT_FOUND),
        ("crun: open executable: Permission denied", adhoc.NOT_EXECUTABLE),
        ("exec /etc/passwd: permission denied", adhoc.NOT_EXECUTABLE),
        ("mount `/srv` to `data`: No such file or directory", None),
        ("image localhost/nope:1 is not in the store", None),
    ],
)
def test_start_failures_tell_126_and_127_apart(message: str, code: str | None) -> None:
    assert adhoc.start_failure_code(message) == code


def test_signal_names() -> None:
    assert adhoc.signal_param({"signal": "INT"}) == "SIGINT"
    assert adhoc.signal_param({"signal": "SIGTERM"}) == "SIGTERM"
    assert adhoc.signal_param({}) == "SIGKILL"
    with pytest.raises(RequestError, match="signal"):
        adhoc.signal_param({"signal": "SIGNOPE"})


# --- frames --------------------------------------------------------------------------------------


def test_frames_come_out_whatever_the_pieces() -> None:
    data = encode(STDOUT, b"out") + encode(STDERR, b"") + encode_exit({"code": 3})
    for size in (1, 3, 7, len(data)):
        reader = FrameReader()
        frames = []
        for at in range(0, len(data), size):
            frames += reader.feed(data[at : at + size])
        assert frames[:2] == [(STDOUT, b"out"), (STDERR, b"")]
        assert frames[2][0] == EXIT
        assert decode_exit(frames[2][1]) == {"code": 3}
        assert reader.pending == 0


def test_frames_header_is_dockers() -> None:
    assert encode(STDERR, b"ab") == b"\x02\x00\x00\x00\x00\x00\x00\x02ab"


def test_not_frames_are_refused() -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(FrameError):
        decode_exit(b"[1]")


def test_lines_are_cut_at_newlines() -> None:
    splitter = LineSplitter(limit=8)
    assert splitter.feed(b"one\ntw") == b"one\n"
    assert splitter.feed(b"o\nthr") == b"two\n"
    assert splitter.feed(b"e" * 9) == b"thr" + b"e" * 9  # past the limit: in pieces
    assert splitter.feed(b"x") == b""
    assert splitter.flush() == b"x"
    assert splitter.flush() == b""
