"""The pure parts of the agent's pull route: its parameters and the progress throttle."""

from __future__ import annotations

from pathlib import Path

import pytest

from quayd.agent.api import RequestError
from quayd.agent.image_pulls import ProgressThrottle, parse_request
from quayd.images.model import Platform

STATE = Path("/var/lib/quay")


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ({}, "bad-request", "reference: an image reference is required"),
        ({"reference": 3}, "bad-request", "reference: an image reference is required"),
        ({"reference": "no spaces allowed"}, "bad-request", "reference: "),
        ({"reference": "busybox", "platform": 5}, "bad-request", "platform: a string"),
        ({"reference": "busybox", "platform": "linux"}, "bad-request", "platform: not a platform"),
        (
            {"reference": "busybox", "state_dir": "/srv/other"},
            "conflict",
            "this agent's state directory is /var/lib/quay, not /srv/other",
        ),
    ],
)
def test_bad_requests_are_refused_before_the_stream(
    params: dict[str, object], code: str, message: str
) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(params, STATE)
    assert caught.value.code == code
    assert caught.value.message.startswith(message)


def test_a_request_is_normalised() -> None:
    request = parse_request(
        {"reference": "busybox", "platform": "linux/arm64", "state_dir": "/var/lib/quay/"}, STATE
    )
    assert request.reference == "docker.io/library/busybox:latest"
    assert request.platform == Platform.parse("linux/arm64")
    assert parse_request({"reference": "busybox"}, STATE).platform is None


def test_the_throttle_lets_phase_changes_through_and_spaces_the_rest() -> None:
    now = [0.0]
    throttle = ProgressThrottle(every=0.1, clock=lambda: now[0])
    assert throttle.wanted("a", "download")
    assert not throttle.wanted("a", "download")
    assert throttle.wanted("b", "download")  # another layer
    assert throttle.wanted("a", "downloaded")  # a new phase, at once
    now[0] = 0.05
    assert not throttle.wanted("a", "downloaded")
    now[0] = 0.11
    assert throttle.wanted("a", "downloaded")
