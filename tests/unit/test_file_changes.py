"""FileChanges: the events of one file are one change, due once its write is complete; a burst
is several files. Event sequences as inotify reports them through watchdog (see the agent's
handler: 'opened' and 'closed_no_write' never reach it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)

from quayd.agent.file_changes import FileChanges
from quayd.agent.file_watch import classify

QUIET = 0.25  # times in these tests are binary fractions: exact sums
LONGEST = 2.0
WEB = "/etc/quay.d/web.toml"
DB = "/etc/quay.d/db.toml"


def changes() -> FileChanges:
    return FileChanges(quiet=QUIET, longest=LONGEST)


def test_nothing_pending_is_never_due() -> None:
    assert changes().due(100.0) is None


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([(WEB, True, None)], id="renamed into place"),
        pytest.param([(WEB, False, None), (WEB, True, None)], id="truncated, written, closed"),
        pytest.param(
            [(WEB, False, None), (WEB, False, None), (WEB, True, None)], id="two chunks, closed"
        ),
        pytest.param([(WEB, True, None)], id="deleted"),
        pytest.param(
            [
                ("/etc/quay.d/sedX1", False, None),
                ("/etc/quay.d/sedX1", True, None),
                (WEB, True, "/etc/quay.d/sedX1"),
            ],
            id="sed -i: a temp file renamed over it",
        ),
    ],
)
def test_one_file_whose_write_is_complete_is_due_at_once(
    events: list[tuple[str, bool, str | None]],
) -> None:
    tracker = changes()
    for path, complete, source in events:
        tracker.note(path, complete=complete, now=10.0, source=source)
    assert tracker.due(10.0) == 0.0


def test_a_write_in_progress_waits_for_its_close_or_for_quiet() -> None:
    tracker = changes()
    tracker.note(WEB, complete=False, now=10.0)
    assert tracker.due(10.0) == pytest.approx(QUIET)
    assert tracker.writing() == {WEB}
    tracker.note(WEB, complete=True, now=10.125)  # closed
    assert tracker.due(10.125) == 0.0
    assert tracker.writing() == frozenset()


def test_a_writer_that_keeps_the_file_open_is_read_once_quiet_then_again_at_its_close() -> None:
    tracker = changes()
    tracker.note(WEB, complete=False, now=10.0)  # the first chunk
    assert tracker.due(10.0 + QUIET) == 0.0  # read, perhaps half-written
    tracker.taken()
    assert tracker.due(10.5) is None
    tracker.note(WEB, complete=False, now=10.75)  # the second chunk, later
    tracker.note(WEB, complete=True, now=10.75)  # closed
    assert tracker.due(10.75) == 0.0  # read again, complete


def test_a_burst_of_files_waits_until_quiet() -> None:
    tracker = changes()
    tracker.note(WEB, complete=True, now=10.0)
    assert tracker.due(10.0) == 0.0  # the first file of a burst comes alone
    tracker.taken()
    tracker.note(DB, complete=True, now=10.125)  # another file within QUIET: a burst
    assert tracker.due(10.125) == pytest.approx(QUIET)
    assert tracker.due(10.125 + QUIET) == 0.0


def test_a_burst_that_never_quietens_is_due_after_the_longest_wait() -> None:
    tracker = changes()
    tracker.note("/etc/quay.d/b0.toml", complete=True, now=10.0)
    tracker.taken()
    now = 10.0
    for index in range(1, 60):  # one file every 125 ms for 7.5 s
        now = 10.0 + index * 0.125
        tracker.note(f"/etc/quay.d/b{index}.toml", complete=True, now=now)
        delay = tracker.due(now)
        assert delay is not None
        if delay == 0.0:
            tracker.taken()
            break
    assert now == pytest.approx(10.125 + LONGEST)  # the window began at the second file


def test_a_second_edit_of_one_file_after_a_pass_is_due_at_once() -> None:
    """Not a burst: the same file again (an editor saving twice)."""
    tracker = changes()
    tracker.note(WEB, complete=False, now=10.0)
    tracker.note(WEB, complete=True, now=10.0)
    tracker.taken()
    tracker.note(WEB, complete=False, now=10.125)
    tracker.note(WEB, complete=True, now=10.1875)
    assert tracker.due(10.1875) == 0.0


def test_a_file_quiet_for_longer_than_the_window_does_not_make_a_burst() -> None:
    tracker = changes()
    tracker.note(WEB, complete=True, now=10.0)
    tracker.taken()
    tracker.note(DB, complete=True, now=10.0 + QUIET)
    assert tracker.due(10.0 + QUIET) == 0.0


def test_events_during_a_pass_are_a_change_of_their_own() -> None:
    tracker = changes()
    tracker.note(WEB, complete=False, now=10.0)
    tracker.taken()  # the pass reads web mid-write
    tracker.note(WEB, complete=True, now=10.0625)  # its close comes while the pass reads
    assert tracker.due(10.0625) == 0.0


def test_a_rename_forgets_its_source() -> None:
    tracker = changes()
    tracker.note("/etc/quay.d/tmp1", complete=False, now=10.0)
    tracker.note(WEB, complete=True, now=10.0625, source="/etc/quay.d/tmp1")
    assert tracker.writing() == frozenset()
    assert tracker.due(10.0625) == 0.0


# --- which watchdog events are changes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "found"),
    [
        (FileOpenedEvent(WEB), None),
        (FileClosedNoWriteEvent(WEB), None),
        (DirModifiedEvent("/etc/quay.d"), None),
        (FileModifiedEvent("/etc/quay.d/.web.toml.swp"), None),  # a temp file being written
        (FileModifiedEvent(WEB), (WEB, False, None)),
        (FileClosedEvent(WEB), (WEB, True, None)),
        (FileDeletedEvent(WEB), (WEB, True, None)),
        (
            FileCreatedEvent("/etc/quay.d/nowhere/new.toml"),
            ("/etc/quay.d/nowhere/new.toml", False, None),
        ),
        (FileMovedEvent("/etc/quay.d/.web.tmp", WEB), (WEB, True, "/etc/quay.d/.web.tmp")),
        (FileMovedEvent(WEB, "/etc/quay.d/.web.old"), ("/etc/quay.d/.web.old", True, WEB)),
    ],
)
def test_which_events_are_changes(
    event: FileSystemEvent, found: tuple[str, bool, str | None] | None
) -> None:
    assert classify(event) == found


def test_a_file_created_with_content_was_moved_in_and_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text("[container]\n")
    assert classify(FileCreatedEvent(str(path))) == (str(path), True, None)
