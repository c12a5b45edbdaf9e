"""The user a container runs as: ``user`` resolved against the image's /etc/passwd and /etc/group.

Resolution follows runc's ``GetExecUser`` (what Docker and Podman do): a numeric UID needs no
passwd entry (its GID is then 0 unless given); a name must have one; with no explicit group the
primary GID comes from the passwd entry and the supplementary groups are the /etc/group entries
that list the user by name; with an explicit group there are no supplementary groups.

Two hardening rules, each from a real CVE:

- The files are read inside the image only. Every path component is opened relative to a
  directory fd with ``O_NOFOLLOW``, so a symlinked ``/etc`` or ``/etc/passwd`` in the image is
  never followed (CVE-2024-9676: Podman read the host's files through such a link). Such a file
  counts as absent: numeric IDs still work, names fail with a message saying why.
- Numbers are parsed strictly: ASCII digits only, 0 to 2**32-2 (2**32-1 is ``(uid_t)-1``).
  Anything else is refused, never wrapped or truncated (CVE-2024-40635: containerd turned a UID
  overflowing int32 into root).

The parsing and matching are pure functions over text; only :func:`read_image_file` touches the
file system.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from quayd.isolation.errors import UserLookupError

MAX_ID = 2**32 - 2
# /etc/passwd of a large directory-backed system is a few MB; an image's is a few KB.
MAX_FILE_SIZE = 8 << 20
_NUMBER = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


ROOT = ResolvedUser(uid=0, gid=0)


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int | None  # None: the field is not a valid ID (refused if this entry is asked for)
    gid: int | None
    home: str
    line: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int | None
    members: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class ImageFile:
    """One of the image's /etc files: its text, or why there is none to read."""

    path: str
    text: str | None
    missing_because: str = ""


def parse_id(text: str) -> int | None:
    """A UID or GID from strictly decimal text in 0..2**32-2; None for anything else."""
    if not _NUMBER.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    """The entries of an /etc/passwd; comments, blank, NIS (``+``/``-``) and short lines skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) < 4 or not fields[0]:
            continue
        home = fields[5] if len(fields) > 5 and fields[5] else "/"
        entries.append(
            PasswdEntry(fields[0], parse_id(fields[2]), parse_id(fields[3]), home, number)
        )
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """The entries of an /etc/group; comments, blank, NIS and short lines skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) < 3 or not fields[0]:
            continue
        members = tuple(m for m in fields[3].split(",") if m) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], parse_id(fields[2]), members, number))
    return entries


def resolve_user(spec: str, rootfs: Path, *, image: str | None = None) -> ResolvedUser:
    """Resolve ``""``, ``"uid"``, ``"uid:gid"``, ``"name"`` or ``"name:group"`` in ``rootfs``.

    ``image`` (a reference) only makes error messages clearer.
    """
    passwd = read_image_file(rootfs, "etc", "passwd")
    group = read_image_file(rootfs, "etc", "group")
    return resolve_user_in(spec, passwd, group, image=image or str(rootfs))


def resolve_user_in(spec: str, passwd: ImageFile, group: ImageFile, *, image: str) -> ResolvedUser:
    """:func:`resolve_user` over already-read files (pure)."""
    user_arg, sep, group_arg = spec.partition(":")
    if ":" in group_arg or (sep and not group_arg) or (sep and not user_arg):
        raise UserLookupError(
            f"user {spec!r} is not UID, UID:GID, NAME or NAME:GROUP (image {image})"
        )
    users = parse_passwd(passwd.text) if passwd.text is not None else []

    entry: PasswdEntry | None
    if not user_arg:
        uid = 0
        entry = next((e for e in users if e.uid == 0), None)
    elif _looks_numeric(user_arg):
        uid = _checked_id(user_arg, "UID", spec, image)
        entry = next((e for e in users if e.uid == uid), None)
    else:
        if passwd.text is None:
            raise UserLookupError(
                f"user {user_arg!r} cannot be looked up in image {image}: "
                f"{passwd.missing_because}; use a numeric UID instead"
            )
        entry = next((e for e in users if e.name == user_arg), None)
        if entry is None:
            raise UserLookupError(f"user {user_arg!r} is not in {passwd.path} of image {image}")
        if entry.uid is None or entry.gid is None:
            raise UserLookupError(
                f"{passwd.path}:{entry.line} of image {image}: user {user_arg!r} has a UID or "
                f"GID that is not a number from 0 to {MAX_ID}; refused"
            )
        uid = entry.uid

    if entry is not None and entry.gid is None and not group_arg:
        # Never fall back to GID 0 for an entry whose GID is garbage (CVE-2024-40635's lesson).
        raise UserLookupError(
            f"{passwd.path}:{entry.line} of image {image}: user {entry.name!r} has a GID that "
            f"is not a number from 0 to {MAX_ID}; refused (give a numeric group: UID:GID)"
        )
    home = entry.home if entry else "/"
    gid = entry.gid if entry and entry.gid is not None else 0
    if group_arg:
        return ResolvedUser(uid, _resolve_group(group_arg, group, spec, image), (), home)
    supplementary: tuple[int, ...] = ()
    if entry is not None and group.text is not None:
        supplementary = _supplementary(entry.name, gid, parse_group(group.text))
    return ResolvedUser(uid, gid, supplementary, home)


def _resolve_group(group_arg: str, group: ImageFile, spec: str, image: str) -> int:
    groups = parse_group(group.text) if group.text is not None else []
    if _looks_numeric(group_arg):
        return _checked_id(group_arg, "GID", spec, image)
    if group.text is None:
        raise UserLookupError(
            f"group {group_arg!r} cannot be looked up in image {image}: "
            f"{group.missing_because}; use a numeric GID instead"
        )
    found = next((g for g in groups if g.name == group_arg), None)
    if found is None:
        raise UserLookupError(f"group {group_arg!r} is not in {group.path} of image {image}")
    if found.gid is None:
        raise UserLookupError(
            f"{group.path}:{found.line} of image {image}: group {group_arg!r} has a GID that "
            f"is not a number from 0 to {MAX_ID}; refused"
        )
    return found.gid


def _supplementary(name: str, primary: int, groups: Sequence[GroupEntry]) -> tuple[int, ...]:
    gids: list[int] = []
    for entry in groups:
        # A malformed GID in a group the user is merely listed in is skipped, not guessed.
        gid = entry.gid
        if name in entry.members and gid is not None and gid != primary and gid not in gids:
            gids.append(gid)
    return tuple(gids)


def _looks_numeric(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _checked_id(text: str, what: str, spec: str, image: str) -> int:
    value = parse_id(text)
    if value is None:
        raise UserLookupError(
            f"user {spec!r} (image {image}): {what} {text} is outside 0 to {MAX_ID}; refused"
        )
    return value


# --- reading the image's files -------------------------------------------------------------------


def read_image_file(rootfs: Path, *components: str) -> ImageFile:
    """Read ``rootfs/<components...>`` without following any symlink inside the rootfs.

    Each directory is opened relative to its parent's fd with ``O_NOFOLLOW``; the file must be a
    regular file. Anything else (missing, a symlink, a FIFO, too large) gives an ``ImageFile``
    whose ``missing_because`` says why, for the caller's error message.
    """
    shown = "/" + "/".join(components)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(rootfs, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError as error:
        return ImageFile(shown, None, f"its root {rootfs} cannot be opened ({error.strerror})")
    try:
        for index, name in enumerate(components):
            last = index == len(components) - 1
            here = "/" + "/".join(components[: index + 1])
            try:
                next_fd = os.open(
                    name,
                    flags | (os.O_NONBLOCK | os.O_NOCTTY if last else os.O_DIRECTORY),
                    dir_fd=fd,
                )
            except OSError as error:
                return ImageFile(shown, None, _why(here, error))
            os.close(fd)
            fd = next_fd
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ImageFile(shown, None, f"the image's {shown} is not a regular file")
        if info.st_size > MAX_FILE_SIZE:
            return ImageFile(shown, None, f"the image's {shown} is over {MAX_FILE_SIZE} bytes")
        data = os.read(fd, MAX_FILE_SIZE + 1)
        if len(data) > MAX_FILE_SIZE:
            return ImageFile(shown, None, f"the image's {shown} is over {MAX_FILE_SIZE} bytes")
    finally:
        os.close(fd)
    # Names are compared as text; bytes that are not UTF-8 survive as surrogates, never match
    # a UTF-8 name by accident, and never crash the lookup.
    return ImageFile(shown, data.decode("utf-8", errors="surrogateescape"))


def _why(path: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return f"the image's {path} is a symbolic link, which quay does not follow"
    if error.errno == errno.ENOTDIR:
        return f"the image's {path} is not a directory (or is a symbolic link quay does not follow)"
    if error.errno == errno.ENOENT:
        return f"the image has no {path}"
    return f"the image's {path} cannot be read ({error.strerror})"
