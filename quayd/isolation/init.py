"""A small init as each container's PID 1: tini (``docker run --init``'s), from Debian's package.

Whatever runs as PID 1 of a pid namespace inherits every orphan in it, and gets no signal it
has no handler for. Most images' commands are not written for that: ``sleep``, a shell, a
server that never calls ``wait()``. Orphans then stay zombies: after a fork loop to the pids
limit the container's pids counter stays at the limit and every later ``exec`` fails with
"can't fork" until a restart; and SIGTERM does nothing, so every stop waits for its
``stop_timeout`` and ends in SIGKILL. With ``[container] init = true`` (the default, as if
Docker's ``--init`` were always given) the container's PID 1 is instead tini, which starts the
command as its child, forwards the signals it gets to it, reaps every orphan, and exits with the
command's status (128 + N when a signal N ended it, as a shell reports it).

The binary is Debian's ``tini-static`` (package ``tini``): statically linked, so it runs in any
image, and bound read-only (``nosuid,nodev``) at :data:`INIT_PATH` on the container's own
``/dev`` tmpfs, so nothing is written into the image's root or a volume. Where it is not
installed (:func:`find_init` gives None) containers run without it and the agent says so once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

INIT_PATH = "/dev/quay-init"
"""Where the init appears in the container (on the runtime's /dev tmpfs, never the image's)."""
CANDIDATES = (Path("/usr/bin/tini-static"), Path("/usr/bin/catatonit"))
"""Static inits, in order of preference (both take ``INIT -- COMMAND ARGS``): Debian's
``tini`` package, then ``catatonit`` (podman's)."""
PACKAGE = "tini"


def find_init(candidates: Sequence[Path] = CANDIDATES) -> Path | None:
    """The first candidate that is an executable regular file, or None."""
    for path in candidates:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o111:
            return path
    return None


def with_init(argv: Sequence[str]) -> list[str]:
    """The container's argv when the init runs it: ``INIT -- ARGV``."""
    return [INIT_PATH, "--", *argv]
