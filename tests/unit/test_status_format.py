"""``quayctl status`` as text: the header, the table, findings, exit codes; and its lean dispatch.

Everything here is a pure function of a payload (as the agent sends it) and ``now``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from quayd.agent import api
from quayd.cli import client, quayctl
from quayd.cli.status import (
    EXIT_NOT_RUNNING,
    EXIT_OK,
    STATES,
    exit_code,
    format_duration,
    format_finding,
    format_header,
    format_plan,
    format_show,
    format_table,
    select,
    unit_is_fine,
)
from quayd.units.settings import DEFAULT_SETTINGS_FILE, Settings

NOW = 1_790_010_000.0
HEADER = "quayd 0.1.0 (pid 123), up 2h03m, /etc/quay.d: "


def unit(name: str, state: str, **fields: Any) -> dict[str, Any]:
    """A unit as the agent reports it: running, ready and quiet unless told otherwise."""
    return {
        "name": name,
        "state": state,
        "ready": state == "running",
        "detail": "",
        "pid": 4242 if state in ("starting", "running", "stopping") else None,
        "started_at": NOW - 312 if state in ("starting", "running", "stopping") else None,
        "restarts": 0,
        "next_attempt": None,
        "image": "registry.example/web:1",
        "findings": [],
        "status_text": None,
        **fields,
    }


def payload(*units: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent": {
            "pid": 123,
            "version": "0.1.0",
            "started_at": NOW - 7380,
            "config_dir": "/etc/quay.d",
            "passes": 42,
            "last_pass_at": NOW - 2,
        },
        "units": list(units),
    }


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.9, "0s"),
        (-5, "0s"),  # a clock step back never prints a negative span
        (59, "59s"),
        (60, "1m00s"),
        (312, "5m12s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7380, "2h03m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (90000, "1d01h"),
        (40 * 86400, "40d00h"),
    ],
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- the header ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "header"),
    [
        ([], HEADER + "0 units: 0 running, 0 invalid"),
        (
            [unit("a", "running")],
            HEADER + "1 unit: 1 running, 0 invalid",
        ),
        (
            [
                unit("a", "running"),
                unit("b", "backoff"),
                unit("c", "running"),
                unit("d", "starting"),
            ],
            HEADER + "4 units: 2 running, 1 starting, 1 backoff, 0 invalid",
        ),
        (
            [unit("a", "invalid"), unit("b", "exited"), unit("c", "pulling")],
            HEADER + "3 units: 0 running, 1 pulling, 1 exited, 1 invalid",
        ),
        (
            # A state from a newer agent is counted under its own name.
            [unit("a", "paused"), unit("b", "removing")],
            HEADER + "2 units: 0 running, 1 removing, 1 paused, 0 invalid",
        ),
    ],
)
def test_header_counts(units: list[dict[str, Any]], header: str) -> None:
    assert format_header(payload(*units), NOW) == header


# --- the table -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finding", "text"),
    [
        ("web.toml:3: bad", "web.toml:3: bad"),
        ("two\nlines", "two\\nlines"),
        (
            {
                "file": "/etc/quay.d/web.toml",
                "line": 14,
                "column": None,
                "key": "resources.memory",
                "value": '"lots"',
                "message": "not a size",
                "accepted": 'a size such as "512K"',
                "severity": "error",
            },
            '/etc/quay.d/web.toml:14: resources.memory = "lots": not a size; '
            'accepted: a size such as "512K"',
        ),
        (
            {"file": "/etc/quay.d/x", "message": "ignored", "severity": "warning"},
            "/etc/quay.d/x: warning: ignored",
        ),
        ({"file": "f", "line": 1, "column": 7, "message": "m"}, "f:1:7: m"),
        ({"file": "f", "key": "k", "message": "m"}, "f: k: m"),
    ],
)
def test_findings_are_one_line_each(finding: Any, text: str) -> None:
    assert format_finding(finding) == text


@pytest.mark.parametrize(
    ("fields", "fine"),
    [
        ({"state": "running"}, True),
        ({"state": "running", "ready": False}, False),
        ({"state": "exited"}, True),
        *(({"state": s}, False) for s in STATES if s not in ("running", "exited")),
        ({"state": "paused"}, False),  # unknown to this quayctl: not known to be fine
    ],
)
def test_which_units_are_fine(fields: dict[str, Any], fine: bool) -> None:
    assert unit_is_fine(unit("web", **fields)) is fine


@pytest.mark.parametrize(
    ("states", "code"),
    [
        ([], EXIT_OK),
        (["running"], EXIT_OK),
        (["running", "exited"], EXIT_OK),
        (["running", "backoff"], EXIT_NOT_RUNNING),
        (["exited", "invalid"], EXIT_NOT_RUNNING),
        (["starting"], EXIT_NOT_RUNNING),
    ],
)
def test_exit_codes(states: list[str], code: int) -> None:
    assert exit_code([unit(f"u{i}", s) for i, s in enumerate(states)]) == code


@pytest.mark.parametrize(
    ("names", "chosen", "unknown"),
    [
        ([], ["web", "db", "cache"], []),
        (["db"], ["db"], []),
        (["cache", "web", "cache"], ["cache", "web"], []),
        (["db", "nope", "gone"], ["db"], ["nope", "gone"]),
    ],
)
def test_select_named_units(names: list[str], chosen: list[str], unknown: list[str]) -> None:
    whole = payload(unit("web", "running"), unit("db", "backoff"), unit("cache", "running"))
    selected, missing = select(whole, names)
    assert [u["name"] for u in selected["units"]] == chosen
    assert selected["agent"] == whole["agent"]
    assert missing == unknown


# --- the lean dispatch ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["status"], "status"),
        (["status", "web", "--json"], "status"),
        (["--run-dir", "/run/x", "status"], "status"),
        (["--run-dir=/run/x", "ping"], "ping"),
        (["--config", "f", "--config-dir", "d", "--state-dir", "s", "status"], "status"),
        (["validate", "status"], "validate"),
        (["--config-dir", "status", "validate"], "validate"),  # "status" is the option's value
        (["--run", "/x", "status"], None),  # abbreviated: the full parser knows it
        (["-h", "status"], None),
        (["--version"], None),
        ([], None),
    ],
)
def test_the_command_is_found_before_parsing(argv: list[str], command: str | None) -> None:
    assert quayctl.command_of(argv) == command


def _global_options(parser: argparse.ArgumentParser) -> list[tuple[Any, ...]]:
    group = next(g for g in parser._action_groups if g.title == "global options")
    return [
        (tuple(a.option_strings), a.dest, a.metavar, a.type)
        for a in group._group_actions
        if a.dest != "version"
    ]


def test_the_lean_parser_has_the_global_options_of_the_full_one() -> None:
    assert _global_options(quayctl.build_agent_parser()) == _global_options(quayctl.build_parser())
    assert quayctl.DEFAULT_SETTINGS_FILE == DEFAULT_SETTINGS_FILE
    assert Path(Settings().run_dir) == quayctl.DEFAULT_RUN_DIR
    assert client.SOCKET_NAME == api.SOCKET_NAME


# --- quayctl plan --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "text"),
    [
        ([], "nothing to do\n"),
        (
            [
                {
                    "kind": "stop",
                    "why": "replace",
                    "unit": "web",
                    "reason": "unit changed: replacing the container",
                },
                {"kind": "stop", "why": "failure", "unit": "db", "reason": "not ready in 5s"},
                {"kind": "start", "unit": "job", "reason": "new unit"},
                {"kind": "remove", "unit": "old"},
            ],
            "replace web: unit changed: replacing the container\n"
            "stop db: not ready in 5s\n"
            "start job: new unit\n"
            "remove old\n",
        ),
        ([{"kind": "pull", "unit": "x", "reason": "\x1b[2J"}], "pull x: \\x1b[2J\n"),
    ],
)
def test_plan_lines(actions: list[dict[str, Any]], text: str) -> None:
    assert format_plan(actions) == text


# --- a unit whose file is invalid, its last good version running ---------------------------------

FINDING = '/etc/quay.d/web.toml:4: container.imagee: unknown key; did you mean "image"?'


def _invalid_running() -> dict[str, Any]:
    return unit(
        "web",
        "running",
        findings=[FINDING],
        detail="the file has 1 error(s); using its last good version",
    )


def test_an_invalid_file_is_listed_and_counted_as_invalid_beside_its_running_container() -> None:
    text = format_table(payload(_invalid_running(), unit("db", "running")), NOW, width=200)
    header, _columns, db, web, finding = text.splitlines()
    assert db.split()[:2] == ["db", "running"]
    assert header == HEADER + "2 units: 1 running, 1 invalid"
    assert web.split()[:2] == ["web", "invalid"]
    assert "invalid (running)" in web
    assert "5m12s" in web  # the last good version's uptime, as it runs
    assert finding.strip() == FINDING  # file, line and key


def test_an_invalid_file_makes_status_exit_non_zero_even_while_its_last_good_runs() -> None:
    assert not unit_is_fine(_invalid_running())
    assert exit_code([_invalid_running(), unit("db", "running")]) == EXIT_NOT_RUNNING
    assert exit_code([unit("db", "running")]) == EXIT_OK


def test_show_lists_an_invalid_file_beside_its_running_state() -> None:
    reply = {**_invalid_running(), "unit": None, "container": None, "exits": []}
    text = format_show(reply, NOW)
    assert text.startswith("web: invalid (running), ready\n")
    assert text.endswith(f"findings\n  {FINDING}\n")
