"""Files replaced whole, for every part of quayd that persists state.

A reader sees the old content or the new, never a part: the data goes to a temporary file beside
the target, which is renamed over it. ``durable`` (the default) also survives a power cut: the
file is fsynced before the rename and its directory after, so the rename itself is on disk.

Outside the layers (``quayd.units`` … ``quayd.cli``) on purpose: it knows nothing of quay and
every layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``); the temporary file never stays."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(path: Path) -> None:
    """Make the renames and creations in ``path`` durable: they live in the directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
