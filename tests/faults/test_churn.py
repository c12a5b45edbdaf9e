"""Churn and soak's quick variant (tests/faults/churn.py): 20 units, 100 creates, edits and
deletes over 30 s in the namespace systemd host, then exact convergence, nothing leaked, and
quayd's RSS and file descriptors where they were. ``QUAY_CHURN_UNITS``, ``QUAY_CHURN_CHANGES``
and ``QUAY_CHURN_SECONDS`` set the sizes (the report's run: ``python -m tests.faults churn``,
100 units, 1,000 changes, 300 s)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.churn import churn
from tests.support.agent import Deployment, deployed
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

UNITS = int(os.environ.get("QUAY_CHURN_UNITS", "20"))
CHANGES = int(os.environ.get("QUAY_CHURN_CHANGES", "100"))
SECONDS = float(os.environ.get("QUAY_CHURN_SECONDS", "30"))
SEED = int(os.environ.get("QUAY_FAULT_SEED", "19"))

RSS_NOISE_KIB = 8 * 1024
"""What quayd's RSS may differ by without a leak: the allocator keeps freed arenas a while."""
FDS_NOISE = 4
"""Descriptors that may be open at either reading (a request, a probe's pidfd in flight)."""


@pytest.fixture(scope="module")
def deployment(sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify) as deployment:
        yield deployment


def test_churn_converges_exactly_and_quayd_does_not_grow(deployment: Deployment) -> None:
    report = churn(deployment, units=UNITS, changes=CHANGES, seconds=SECONDS, seed=SEED)
    report.write_summary("churn")
    print(report.describe())
    assert report.findings == []
    assert sum(report.changes.get(k, 0) for k in ("creates", "edits", "deletes")) == CHANGES
    rss_before, rss_after = report.rss_kib
    assert rss_after - rss_before <= max(RSS_NOISE_KIB, rss_before * 15 // 100), report.describe()
    fds_before, fds_after = report.fds
    assert fds_after - fds_before <= FDS_NOISE, report.describe()
