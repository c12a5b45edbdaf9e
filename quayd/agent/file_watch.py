"""The config directory's watcher: inotify events (through watchdog), as the agent's loop wants
them: one call per event of a file that may be a unit's, with its path, whether its write is
complete, and where a rename came from (:class:`quayd.agent.file_changes.FileChanges`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

OnEvent = Callable[[str, bool, "str | None"], None]
"""(path, complete, source): source is where a rename came from, else None."""

COMPLETE_EVENTS = frozenset({"moved", "deleted", "closed", "attrib"})
"""A rename into place, a deletion, a close after writing; a change of mode or owner (no
content written). A creation is complete when the file comes with content (moved in)."""


def classify(event: FileSystemEvent) -> tuple[str, bool, str | None] | None:
    """(path, complete, source) for an event that may change what the directory holds, else
    None: opens and closes without a write, a directory's own "modified" (it comes with each
    change inside, which says more), and writes of dot files (temp files: only their rename
    into place counts)."""
    if event.event_type in ("opened", "closed_no_write"):
        return None
    if event.is_directory and event.event_type == "modified":
        return None
    moved = event.event_type == "moved"
    path = os.fsdecode(event.dest_path if moved else event.src_path)
    if not moved and Path(path).name.startswith("."):
        return None
    source = os.fsdecode(event.src_path) if moved else None
    complete = event.event_type in COMPLETE_EVENTS or (
        event.event_type == "created" and _has_content(path)
    )
    return path, complete, source


def watch(directory: Path, loop: asyncio.AbstractEventLoop, on_event: OnEvent) -> Any:
    """Start watching ``directory`` (made if missing) and everything below it; ``on_event``
    runs on ``loop``. Returns the observer (``stop()`` it)."""

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            found = classify(event)
            if found is not None:
                loop.call_soon_threadsafe(on_event, *found)

    observer = Observer()
    directory.mkdir(parents=True, exist_ok=True)
    observer.schedule(Handler(), str(directory), recursive=True)
    observer.daemon = True
    observer.start()
    return observer


def _has_content(path: str) -> bool:
    """A file that appears with content was moved in from elsewhere (a write into a new file
    starts empty): it is complete. inotify reports such a move as a creation."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False
