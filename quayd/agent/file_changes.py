"""When a change of the config directory is due for a pass: coalescing by file, not by time.

Pure: the agent's file watcher turns each event into :meth:`FileChanges.note` (a path, whether
its write is complete, the time) and its loop asks :meth:`FileChanges.due` how long to wait.

* Several events of **one** file (created, modified, closed) are one change. Once that file's
  write is complete (closed after writing, renamed into place, deleted, or created with its
  content) and no other file changed within :data:`QUIET_SECONDS`, the change is due at once:
  a file written in place costs no more latency than one renamed into place.
* While a file is being written (modified, not yet closed) the change waits until the file is
  quiet for ``quiet`` seconds (a writer that keeps it open never closes it), at most
  ``longest`` after it began. If the pass then reads it half-written, its close is a change of
  its own and the next pass reads it again.
* Events of **several** files within ``quiet`` of each other are a burst (Ansible writing 30
  files): the change waits until the directory is quiet, at most ``longest`` after it began.
* A rename carries its source's events to its destination: a temp file written and renamed over
  the unit (``sed -i``) is one file, not a burst of two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

QUIET_SECONDS = 0.03
LONGEST_SECONDS = 0.3
FORGET_WRITING_SECONDS = 3600.0
"""A file modified and never closed (a writer that died, an mmap) is no longer taken for being
written after this long, so the set stays small."""


@dataclass
class FileChanges:
    """The change pending since the last pass: which files, since when, burst or not."""

    quiet: float = QUIET_SECONDS
    longest: float = LONGEST_SECONDS
    _recent: dict[str, float] = field(default_factory=dict)
    """Path -> its last event, for events within ``quiet`` (whether a pass took them or not)."""
    _writing: dict[str, float] = field(default_factory=dict)
    """Path -> when a write of it began that no close has ended yet."""
    _pending: set[str] = field(default_factory=set)
    _first: float | None = None
    _last: float | None = None
    _burst: bool = False

    def note(self, path: str, *, complete: bool, now: float, source: str | None = None) -> None:
        """One event of ``path``: ``complete`` for a close after writing, a rename into place
        (``source`` is where it came from), a deletion or a creation with content; else a
        write in progress (a modification, a creation of an empty file)."""
        self._recent = {p: at for p, at in self._recent.items() if now - at < self.quiet}
        self._writing = {
            p: at for p, at in self._writing.items() if now - at < FORGET_WRITING_SECONDS
        }
        if source is not None:
            self._recent.pop(source, None)
            self._writing.pop(source, None)
            self._pending.discard(source)
        if any(other != path for other in self._recent):
            self._burst = True
        self._recent[path] = now
        if complete:
            self._writing.pop(path, None)
        else:
            self._writing.setdefault(path, now)
        self._pending.add(path)
        if self._first is None:
            self._first = now
        self._last = now

    def due(self, now: float) -> float | None:
        """Seconds until a pass should read the pending change (0: now); None: none pending."""
        if self._first is None or self._last is None:
            return None
        if now - self._first >= self.longest:
            return 0.0
        if not self._burst and not any(path in self._writing for path in self._pending):
            return 0.0  # one file, its write complete
        wait = self.quiet - (now - self._last)
        return max(0.0, min(wait, self.longest - (now - self._first)))

    def taken(self) -> None:
        """A pass is about to read the directory: what is pending now is in it. Events that
        come while it reads are a change of their own (another pass reads them)."""
        self._pending.clear()
        self._first = self._last = None
        self._burst = False

    def writing(self) -> frozenset[str]:
        """The files being written (modified, not yet closed)."""
        return frozenset(self._writing)
