"""The download rate cap of update pulls, on a fake clock."""

from __future__ import annotations

import pytest

from quayd.images.ratelimit import BURST_SECONDS, RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_bytes_are_paced_to_the_rate_after_a_short_burst() -> None:
    fake = FakeTime()
    limiter = RateLimiter(1000, clock=fake.clock, sleep=fake.sleep)
    limiter.take(250)  # the burst allowance: no wait
    assert fake.slept == []
    for _ in range(8):
        limiter.take(500)
    # 4250 bytes at 1000 B/s, less the 0.25 s burst: 4 s after the start.
    assert fake.now == pytest.approx(100.0 + 4.25 - BURST_SECONDS)


def test_an_idle_pause_does_not_save_up_more_than_the_burst() -> None:
    fake = FakeTime()
    limiter = RateLimiter(1000, clock=fake.clock, sleep=fake.sleep)
    fake.now += 60  # nothing taken for a minute
    limiter.take(1250)
    assert fake.slept == [pytest.approx(1.0)]


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="above 0"):
        RateLimiter(0)
