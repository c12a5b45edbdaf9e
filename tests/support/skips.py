"""The one list of reasons a test may skip, and the pytest plugin that holds CI to it.

A skipped test proves nothing, so a skip is only acceptable for a reason that is about the
machine, not about the project's own install: ``./dev test`` installs every package the suite
needs on a fresh Debian 12, so a missing package is never a reason. What remains is hardware the
project cannot install, listed in :data:`ALLOWED`.

Every skip reason in the suite starts with its cause (``"no /dev/kvm: …"``,
``"/lib/systemd/systemd is missing …"``); :func:`allowed` matches that start. As a plugin
(``tests/conftest.py`` loads it) this module prints every run's skips grouped by reason, and
under ``CI=true`` (or ``QUAY_STRICT_SKIPS=1``) a skip for any other reason fails the run.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

import pytest

ALLOWED: dict[str, str] = {}
"""Reason prefix → why it is acceptable. Keep it short: each entry is a hole in the proof.

Empty: even the VM test host needs no hardware, since a machine without usable KVM boots the
guest under TCG (slower, tested here: this machine's /dev/kvm is kvm_pvm, which cannot run
Debian's kernel). An entry would read like ``"no /dev/kvm": "why that cannot be tested"``."""


def allowed(reason: str) -> bool:
    return any(reason.startswith(prefix) for prefix in ALLOWED)


def strict() -> bool:
    """Whether a skip outside :data:`ALLOWED` fails the run: in CI (``CI=true``), or when asked
    (``QUAY_STRICT_SKIPS=1``, to try CI's rule locally)."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("QUAY_STRICT_SKIPS") == "1"


def summary(reasons: Iterable[str]) -> list[str]:
    """Lines for the terminal: each distinct reason with its count, unexpected ones marked."""
    counts = Counter(reasons)
    lines = []
    for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        mark = "allowed   " if allowed(reason) else "UNEXPECTED"
        lines.append(f"{mark} {count:4d}  {reason}")
    return lines


# --- the plugin ----------------------------------------------------------------------------------

_reasons: list[str] = []


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _reasons.append(_reason(report))


def _unexpected() -> int:
    return sum(not allowed(reason) for reason in _reasons)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected() and strict() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _reasons:
        terminalreporter.write_line("skips: none")
        return
    terminalreporter.section("skips by reason (the allowed ones: tests/support/skips.py)")
    for line in summary(_reasons):
        terminalreporter.write_line(line)
    if _unexpected() and strict():
        terminalreporter.write_line(
            f"FAILED: {_unexpected()} skip(s) for a reason tests/support/skips.py does not allow "
            "(CI=true allows no other): install or fix what they need",
            red=True,
            bold=True,
        )
