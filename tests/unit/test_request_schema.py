"""request_schema: each handler's parameters, checked before it runs."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from quayd.agent.api import ROUTES
from quayd.agent.request_schema import PARAMS, problem
from quayd.cli.run import request_body


def test_every_route_has_its_parameters_listed() -> None:
    assert {route.handler for route in ROUTES} == set(PARAMS)
    for route in ROUTES:
        if "{name}" in route.path:
            assert "name" in PARAMS[route.handler], route


def test_what_quayctl_run_sends_is_taken() -> None:
    args = argparse.Namespace(
        argv=["--", "sh", "-c", "true"],
        image="localhost/busybox:1.36",
        publish=["8080:80"],
        tty=True,
        rm=None,
        detach=False,
        interactive=True,
        name="job",
        env=["A=1"],
        volume=["data:/data"],
        network="none",
        memory="64M",
        user="1000",
        workdir="/tmp",
        entrypoint="/bin/sh",
    )
    body = request_body(args, {})
    assert problem("run", {**body, "console_size": [24, 80]}) is None


@pytest.mark.parametrize(
    ("handler", "params"),
    [
        ("exec", {"name": "web", "argv": ["sh", "-c", "exit 3"], "timeout": 60.0}),
        ("exec", {"name": "web", "argv": ["true"], "timeout": 5}),
        ("exec", {"name": "web", "timeout": None}),  # null: left out
        ("events", {"since": 0, "follow": True}),
        ("kill", {"name": "web", "signal": "SIGINT"}),
        ("image_pull", {"reference": "busybox", "platform": "linux/arm64", "state_dir": "/s"}),
        ("plan_dir", {"config_dir": "/etc/quay.d"}),
        ("reload", {}),
        ("test-only", {"anything": object()}),  # a handler not listed takes anything
    ],
)
def test_good_parameters_pass(handler: str, params: dict[str, Any]) -> None:
    assert problem(handler, params) is None


@pytest.mark.parametrize(
    ("handler", "params", "message"),
    [
        (
            "reload",
            {"force": True},
            "unknown parameter 'force' for reload (it takes no parameters)",
        ),
        ("exec", {"name": "web", "timout": 5}, "unknown parameter 'timout' for exec (it takes"),
        ("exec", {"argv": ["a", 1]}, "argv must be a list of strings"),
        ("exec", {"argv": ["a\0"]}, "argv holds a NUL character"),
        ("exec", {"timeout": 0}, "timeout must be a number of seconds, above 0"),
        ("exec", {"timeout": float("nan")}, "timeout must be"),
        ("exec", {"timeout": float("inf")}, "timeout must be"),
        ("exec", {"timeout": 86401}, "timeout must be"),
        ("exec", {"timeout": "5"}, "timeout must be"),
        ("events", {"since": -1}, "since must be a whole number, 0 or more"),
        ("events", {"since": True}, "since must be a whole number"),
        ("events", {"follow": "yes"}, "follow must be true or false"),
        ("run", {"env": {"A": 1}}, "env must be an object of strings"),
        ("run", {"env": {"A\0": "1"}}, "env holds a NUL"),
        ("run", {"console_size": [24]}, "console_size must be a list of two whole numbers"),
        ("run", {"console_size": [24, 80.5]}, "console_size must be"),
        ("run", {"tty": "true"}, "tty must be true or false"),
        ("plan_dir", {"config_dir": "/etc\0"}, "config_dir holds a NUL character"),
        ("show", {"name": 5}, "name must be a string"),
    ],
)
def test_bad_parameters_are_named(handler: str, params: dict[str, Any], message: str) -> None:
    found = problem(handler, params)
    assert found is not None
    assert found.startswith(message), found
