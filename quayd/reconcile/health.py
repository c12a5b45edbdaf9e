"""A unit's health check, resolved against its image's HEALTHCHECK (pure), and its verdicts.

Keys the unit leaves unset come from the image's HEALTHCHECK, then Docker's defaults
(``HEALTH_DEFAULTS``); the command comes from the unit, else the image (``NONE`` in the image:
no check). Judging follows Docker: a check runs every ``interval`` (the first one ``interval``
after the start), a run longer than ``timeout`` fails, failures during ``start_period`` do not
count, ``retries`` consecutive counted failures make the container unhealthy, one pass makes it
healthy again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from quayd.units.model import HEALTH_DEFAULTS, Unit

_DEFAULT_SECONDS = {
    key: value.total_seconds()
    for key, value in HEALTH_DEFAULTS.items()
    if isinstance(value, timedelta)
}
_DEFAULT_RETRIES = int(str(HEALTH_DEFAULTS["retries"]))


@dataclass(frozen=True)
class ImageHealthcheck:
    """The image's HEALTHCHECK as the executor read it (``images.model.Healthcheck``)."""

    test: tuple[str, ...]
    interval: float | None = None
    timeout: float | None = None
    start_period: float | None = None
    retries: int | None = None


@dataclass(frozen=True)
class HealthSpec:
    argv: tuple[str, ...]
    interval: float
    timeout: float
    start_period: float
    retries: int


def health_spec(unit: Unit, image: ImageHealthcheck | None) -> HealthSpec | None:
    """The check to run for ``unit``, or None when neither the unit nor the image has one."""
    argv = _argv(unit, image)
    if not argv:
        return None
    health = unit.health

    def seconds(key: str, own: float | None, from_image: float | None) -> float:
        if own is not None:
            return own
        if from_image is not None:
            return from_image
        return _DEFAULT_SECONDS[key]

    retries = health.retries or (image.retries if image and image.retries else None)
    return HealthSpec(
        argv=argv,
        interval=seconds(
            "interval",
            _total(health.interval),
            image.interval if image else None,
        ),
        timeout=seconds("timeout", _total(health.timeout), image.timeout if image else None),
        start_period=seconds(
            "start_period", _total(health.start_period), image.start_period if image else None
        ),
        retries=retries or _DEFAULT_RETRIES,
    )


def _total(value: object) -> float | None:
    total = getattr(value, "total_seconds", None)
    return None if total is None else float(total())


def _argv(unit: Unit, image: ImageHealthcheck | None) -> tuple[str, ...]:
    if unit.health.command:
        return tuple(unit.health.command)
    if image is None or not image.test:
        return ()
    kind, *rest = image.test
    if kind == "CMD":
        return tuple(rest)
    if kind == "CMD-SHELL" and rest:
        return ("/bin/sh", "-c", rest[0])
    return ()  # "NONE", or a form Docker does not define


@dataclass(frozen=True)
class HealthState:
    """Consecutive counted failures, and the verdict so far."""

    failures: int = 0
    healthy: bool = False
    unhealthy: bool = False
    passed_once: bool = False


def judge(state: HealthState, *, passed: bool, spec: HealthSpec, since_start: float) -> HealthState:
    """The state after one check run ``since_start`` seconds after the container started."""
    if passed:
        return HealthState(failures=0, healthy=True, unhealthy=False, passed_once=True)
    if since_start < spec.start_period:
        return state  # failures while starting up do not count (Docker's start_period)
    failures = state.failures + 1
    return HealthState(
        failures=failures,
        healthy=False,
        unhealthy=failures >= spec.retries,
        passed_once=state.passed_once,
    )
