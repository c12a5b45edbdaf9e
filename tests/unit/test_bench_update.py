"""bench update: the probe's lines → the gap between the old version's last answer and the new
one's first, and the failed requests between; the summary and the report's table."""

from __future__ import annotations

import pytest

from bench.update import PODMAN, STRATEGIES, gap, parse_probe, report, summary


def test_the_gap_runs_from_the_last_old_answer_to_the_first_new_one() -> None:
    lines = ["10.000 1", "10.010 1", "10.020 -", "10.530 -", "10.540 2", "10.550 2"]
    seen = gap(lines, "1", "2")
    assert seen.last_old == pytest.approx(10.010)
    assert seen.first_new == pytest.approx(10.540)
    assert seen.ms == pytest.approx(530.0)
    assert seen.failed == 2


def test_an_update_with_no_failed_request_still_has_the_gap_between_two_answers() -> None:
    seen = gap(["5.0 1", "5.004 2"], "1", "2")
    assert seen.failed == 0
    assert seen.ms == pytest.approx(4.0)


def test_any_other_answer_in_the_gap_is_a_failure_and_old_answers_after_the_new_do_not_count() -> (
    None
):
    # an error page's first word, a timeout; then the old version once more after the new one
    # (two containers answering the port at once): the gap ends at the first new answer
    lines = ["1.0 1", "1.1 <HTML><HEAD><TITLE>404", "1.2 -", "1.3 2", "1.4 1", "1.5 2"]
    seen = gap(lines, "1", "2")
    assert (seen.last_old, seen.first_new, seen.failed) == (1.0, 1.3, 2)


def test_a_probe_that_never_saw_the_new_version_or_no_old_one_before_it_is_refused() -> None:
    with pytest.raises(ValueError, match="never got version '2'"):
        gap(["1.0 1", "1.1 -", "1.2 -"], "1", "2")
    with pytest.raises(ValueError, match="no version '1' before '2'"):
        gap(["1.0 -", "1.1 2", "1.2 1"], "1", "2")


def test_probe_lines_are_parsed_blank_ones_skipped_and_a_missing_answer_is_a_failure() -> None:
    assert parse_probe(["", "3.5000 7", "  ", "3.6 -", "3.7"]) == [
        (3.5, "7"),
        (3.6, "-"),
        (3.7, "-"),
    ]


def test_the_summary_puts_each_tool_beside_podman_and_the_report_has_a_row_each() -> None:
    def runs(*gaps: float) -> list[dict[str, float]]:
        return [
            {"gap_ms": g, "failed": g / 10, "command_s": 0.1, "new_after_s": g / 1000 + 0.2}
            for g in gaps
        ]

    results = {tool: runs(100.0, 300.0, 200.0) for tool in STRATEGIES}
    results[PODMAN] = runs(400.0, 600.0, 500.0)
    summarised = summary(results)
    assert summarised[STRATEGIES[0]]["p50_ms"] == 200.0
    assert summarised[STRATEGIES[0]]["max_ms"] == 300.0
    assert summarised[STRATEGIES[0]]["failed_p50"] == 20.0
    assert summarised[STRATEGIES[0]]["p50_over_podman"] == pytest.approx(0.4)
    assert summarised[PODMAN]["p50_over_podman"] == 1.0
    about = {
        "date": "2026-12-07 15:00 UTC",
        "commit": "abc1234",
        "host": "a throwaway systemd host in namespaces",
        "cgroup_fs": "tmpfs",
        "cores": 2,
        "platform": "kernel 6.1, Debian 12.11",
        "podman": "podman version 4.3.1",
        "load_before": "1.00 1.00 1.00",
        "load_after": "2.00 1.00 1.00",
        "note": "VM tests ran meanwhile",
        "image_mb": 1.04,
        "payload_mb": 0,
    }
    text = report(summarised, about)
    assert "/sys/fs/cgroup: tmpfs" in text
    assert "2 cores" in text
    assert "VM tests ran meanwhile" in text
    assert "each image 1.0 MB (busybox, /version)" in text
    assert "| quay `download-then-replace` | 3 | 200 | 300 | 20 | 0.40x | 0.10 | 0.40 |" in text
    assert "| `podman auto-update` | 3 | 500 | 600 | 50 | 1.00x | 0.10 | 0.70 |" in text
