"""resolve_user on fake image trees: runc's rules, strict numbers, no symlink out of the image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quayd.isolation.errors import UserLookupError
from quayd.isolation.users import (
    MAX_ID,
    ImageFile,
    ResolvedUser,
    parse_group,
    parse_id,
    parse_passwd,
    read_image_file,
    resolve_user,
    resolve_user_in,
)

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment line
app:x:1000:1000:App:/home/app:/bin/sh
nohome:x:1001:1001::
short:x:1002:1002
+nisuser
broken:x:12x:1000::/home/broken:/bin/sh
huge:x:4294967295:1000::/:/bin/sh
neg:x:-1:1000::/:/bin/sh
badgid:x:1003:99999999999::/:/bin/sh

bad-line-without-fields
"""
GROUP = """\
root:x:0:
wheel:x:10:root,app
app:x:1000:
staff:x:50:app,other
audio:x:29:other
dup:x:50:app
brokengrp:x:9x:app
mangled:x:99999999999:app
primary-again:x:1000:app
"""


def make_rootfs(tmp_path: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    if passwd is not None:
        (rootfs / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (rootfs / "etc" / "group").write_text(group)
    return rootfs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("", ResolvedUser(0, 0, (10,), "/root"), id="root-default"),
        pytest.param("root", ResolvedUser(0, 0, (10,), "/root"), id="root-by-name"),
        pytest.param("0", ResolvedUser(0, 0, (10,), "/root"), id="root-by-uid"),
        pytest.param("app", ResolvedUser(1000, 1000, (10, 50), "/home/app"), id="name"),
        pytest.param("1000", ResolvedUser(1000, 1000, (10, 50), "/home/app"), id="uid-known"),
        pytest.param("app:staff", ResolvedUser(1000, 50, (), "/home/app"), id="name:group"),
        pytest.param("app:29", ResolvedUser(1000, 29, (), "/home/app"), id="name:gid"),
        pytest.param("1000:50", ResolvedUser(1000, 50, (), "/home/app"), id="uid:gid"),
        pytest.param("4242", ResolvedUser(4242, 0, (), "/"), id="uid-unknown"),
        pytest.param("4242:4242", ResolvedUser(4242, 4242, (), "/"), id="uid:gid-unknown"),
        pytest.param("4242:wheel", ResolvedUser(4242, 10, (), "/"), id="uid-unknown:group"),
        pytest.param("nohome", ResolvedUser(1001, 1001, (), "/"), id="empty-home"),
        pytest.param("short", ResolvedUser(1002, 1002, (), "/"), id="short-line"),
        pytest.param("daemon", ResolvedUser(1, 1, (), "/usr/sbin"), id="no-groups"),
        pytest.param("00001000", ResolvedUser(1000, 1000, (10, 50), "/home/app"), id="zeros"),
        pytest.param(f"{MAX_ID}:{MAX_ID}", ResolvedUser(MAX_ID, MAX_ID, (), "/"), id="largest-ids"),
    ],
)
def test_resolve_user(tmp_path: Path, spec: str, expected: ResolvedUser) -> None:
    assert resolve_user(spec, make_rootfs(tmp_path)) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ghost", "user 'ghost' is not in /etc/passwd of image img"),
        ("app:ghosts", "group 'ghosts' is not in /etc/group of image img"),
        ("broken", r"/etc/passwd:8 of image img: user 'broken' has a UID or GID"),
        ("huge", "user 'huge' has a UID or GID"),
        ("app:brokengrp", r"/etc/group:7 of image img: group 'brokengrp' has a GID"),
        ("app:mangled", "group 'mangled' has a GID"),
        ("1003", r"/etc/passwd:11 of image img: user 'badgid' has a GID .* refused"),
        ("badgid", "user 'badgid' has a UID or GID"),
        ("4294967295", "outside 0 to 4294967294"),
        ("1000:4294967295", "outside 0 to 4294967294"),
        ("99999999999999999999", "outside"),
        ("1:2:3", "is not UID, UID:GID"),
        (":1000", "is not UID, UID:GID"),
        ("1000:", "is not UID, UID:GID"),
        ("-1", "user '-1' is not in"),  # not a number: a name, and there is none
        ("+1000", "user '\\+1000' is not in"),
    ],
)
def test_resolve_user_refusals(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(UserLookupError, match=message):
        resolve_user(spec, make_rootfs(tmp_path), image="img")


def test_malformed_entries_never_match_numerically(tmp_path: Path) -> None:
    # "neg" has UID -1 and "huge" 2**32-1: neither can be reached by number, nor become root.
    rootfs = make_rootfs(tmp_path)
    assert resolve_user("0", rootfs).home == "/root"
    assert resolve_user("1000", rootfs).uid == 1000
    # An entry with a garbage GID is usable only with an explicit group.
    assert resolve_user("1003:7", rootfs) == ResolvedUser(1003, 7, (), "/")


def test_numeric_ids_work_without_etc_files(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path, passwd=None, group=None)
    assert resolve_user("", rootfs) == ResolvedUser(0, 0, (), "/")
    assert resolve_user("1000", rootfs) == ResolvedUser(1000, 0, (), "/")
    assert resolve_user("1000:1000", rootfs) == ResolvedUser(1000, 1000, (), "/")


def test_names_fail_clearly_without_etc_files(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path, passwd=None, group=None)
    with pytest.raises(UserLookupError, match=r"user 'app' cannot be looked up in image busybox"):
        resolve_user("app", rootfs, image="busybox")
    with pytest.raises(UserLookupError, match="the image has no /etc/passwd; use a numeric UID"):
        resolve_user("app", rootfs, image="busybox")
    with pytest.raises(UserLookupError, match="the image has no /etc/group; use a numeric GID"):
        resolve_user("1000:staff", rootfs, image="busybox")


def test_missing_etc_directory(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    assert resolve_user("7:7", rootfs) == ResolvedUser(7, 7)
    with pytest.raises(UserLookupError, match="the image has no /etc"):
        resolve_user("app", rootfs)


def test_error_names_rootfs_when_image_unknown(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path)
    with pytest.raises(UserLookupError, match=f"of image {rootfs}"):
        resolve_user("ghost", rootfs)


# --- CVE-2024-9676: never read the host's files through a symlink ---------------------------------


def test_symlinked_passwd_to_host_is_not_followed(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path, passwd=None, group=None)
    os.symlink("/etc/passwd", rootfs / "etc" / "passwd")
    os.symlink("/etc/group", rootfs / "etc" / "group")
    # "daemon" exists in the host's /etc/passwd; it must not be found.
    with pytest.raises(UserLookupError, match="/etc/passwd is a symbolic link"):
        resolve_user("daemon", rootfs, image="evil")
    # Numeric IDs still work, without anything from the host's files.
    assert resolve_user("1", rootfs) == ResolvedUser(1, 0, (), "/")
    assert resolve_user("", rootfs) == ResolvedUser(0, 0, (), "/")


def test_relative_symlink_escaping_the_rootfs_is_not_followed(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path, passwd=None)
    os.symlink("../../../../../../../../etc/passwd", rootfs / "etc" / "passwd")
    with pytest.raises(UserLookupError, match="symbolic link"):
        resolve_user("root", rootfs)


def test_symlink_inside_the_image_is_not_followed_either(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path, passwd=None)
    (rootfs / "etc" / "real-passwd").write_text(PASSWD)
    os.symlink("real-passwd", rootfs / "etc" / "passwd")
    with pytest.raises(UserLookupError, match="symbolic link"):
        resolve_user("app", rootfs)


def test_symlinked_etc_directory_is_not_followed(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    os.symlink("/etc", rootfs / "etc")
    with pytest.raises(UserLookupError, match=r"the image's /etc is"):
        resolve_user("daemon", rootfs, image="evil")
    assert resolve_user("1", rootfs) == ResolvedUser(1, 0, (), "/")


def test_fifo_passwd_does_not_block(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path, passwd=None)
    os.mkfifo(rootfs / "etc" / "passwd")
    with pytest.raises(UserLookupError, match="not a regular file"):
        resolve_user("app", rootfs)


def test_directory_passwd(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path, passwd=None)
    (rootfs / "etc" / "passwd").mkdir()
    with pytest.raises(UserLookupError, match="not a regular file"):
        resolve_user("app", rootfs)


def test_read_image_file(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path)
    found = read_image_file(rootfs, "etc", "passwd")
    assert found == ImageFile("/etc/passwd", PASSWD)
    missing = read_image_file(rootfs, "etc", "shadow")
    assert missing.text is None
    assert missing.missing_because == "the image has no /etc/shadow"
    absent_root = read_image_file(tmp_path / "nope", "etc", "passwd")
    assert absent_root.text is None
    assert "cannot be opened" in absent_root.missing_because


def test_read_image_file_does_not_leak_fds(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path)
    os.symlink("/etc", rootfs / "link")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        read_image_file(rootfs, "etc", "passwd")
        read_image_file(rootfs, "link", "passwd")
        read_image_file(rootfs, "etc", "missing")
    assert len(os.listdir("/proc/self/fd")) == before


def test_non_utf8_passwd_does_not_crash(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path, passwd=None, group=None)
    (rootfs / "etc" / "passwd").write_bytes(b"caf\xe9:x:5:5::/:/bin/sh\napp:x:7:7::/h:/bin/sh\n")
    assert resolve_user("app", rootfs) == ResolvedUser(7, 7, (), "/h")
    with pytest.raises(UserLookupError):
        resolve_user("café", rootfs)


# --- pure parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1000", 1000),
        ("0001000", 1000),
        (str(MAX_ID), MAX_ID),
        (str(MAX_ID + 1), None),
        ("4294967296", None),
        ("99999999999", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1 ", None),
        ("1e3", None),
        ("0x10", None),
        ("", None),
        ("١٢", None),  # Arabic-Indic digits: int() takes them, we do not
        ("1_000", None),
    ],
)
def test_parse_id_is_strict(text: str, expected: int | None) -> None:
    assert parse_id(text) == expected


def test_parse_passwd_and_group() -> None:
    users = {u.name: u for u in parse_passwd(PASSWD)}
    assert set(users) == {
        "root", "daemon", "app", "nohome", "short", "broken", "huge", "neg", "badgid",
    }  # fmt: skip
    assert users["broken"].uid is None
    assert users["huge"].uid is None
    assert users["neg"].uid is None
    assert users["app"].line == 4
    groups = {g.name: g for g in parse_group(GROUP)}
    assert groups["wheel"].members == ("root", "app")
    assert groups["root"].members == ()
    assert groups["brokengrp"].gid is None


def test_resolve_user_in_is_pure() -> None:
    passwd = ImageFile("/etc/passwd", "u:x:5:6::/home/u:/bin/sh\n")
    group = ImageFile("/etc/group", "g:x:7:u\n")
    assert resolve_user_in("u", passwd, group, image="i") == ResolvedUser(5, 6, (7,), "/home/u")
    none = ImageFile("/etc/group", None, "the image has no /etc/group")
    assert resolve_user_in("u", passwd, none, image="i") == ResolvedUser(5, 6, (), "/home/u")
