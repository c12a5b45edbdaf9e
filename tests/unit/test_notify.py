"""The sd_notify receiver: parsing, and a real NotifySocket fed from this process.

Datagrams are sent with ``socket.sendmsg`` (explicit ``SCM_CREDENTIALS`` and ``SCM_RIGHTS`` where
a test needs them), and by the static C helper the container tests use (tests/support/sd_notify.c,
compiled here when gcc is available).
"""

from __future__ import annotations

import os
import selectors
import socket
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from quayd.isolation import spec
from quayd.isolation.notify import (
    MAX_DATAGRAM,
    SOCKET_NAME,
    NotifyMessage,
    NotifySocket,
    NotifySocketError,
    parse_notify,
)

# --- parse_notify --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"READY=1", {"READY": "1"}),
        (b"READY=1\nSTATUS=warming up", {"READY": "1", "STATUS": "warming up"}),
        (b"WATCHDOG=1\n", {"WATCHDOG": "1"}),
        (b"STOPPING=1", {"STOPPING": "1"}),
        (b"RELOADING=1\nMONOTONIC_USEC=123", {"RELOADING": "1", "MONOTONIC_USEC": "123"}),
        (b"MAINPID=42", {"MAINPID": "42"}),
        (b"ERRNO=2", {"ERRNO": "2"}),
        (b"EXTEND_TIMEOUT_USEC=5000000", {"EXTEND_TIMEOUT_USEC": "5000000"}),
        (b"X_CUSTOM=anything goes", {"X_CUSTOM": "anything goes"}),  # unknown keys kept
        (b"STATUS=a=b=c", {"STATUS": "a=b=c"}),  # only the first '=' separates
        (b"STATUS=", {"STATUS": ""}),
        (b"STATUS=  spaced  ", {"STATUS": "  spaced  "}),  # values verbatim
        (b"STATUS=first\nSTATUS=second", {"STATUS": "first"}),  # first wins, as in systemd
        (b"\n\nREADY=1\n\n", {"READY": "1"}),  # empty lines ignored
        (b"garbage\nREADY=1", {"READY": "1"}),  # a line without '=' ignored
        (b"=value\nREADY=1", {"READY": "1"}),  # an empty key ignored
        (b"READY=1\r\nWATCHDOG=1", {"READY": "1\r", "WATCHDOG": "1"}),  # \r is not a separator
        (b"STATUS=caf\xc3\xa9", {"STATUS": "café"}),
        (b"STATUS=bad \xff byte", {"STATUS": "bad \ufffd byte"}),
        (b"READY=1\0WATCHDOG=1", {}),  # a NUL byte makes the whole message malformed
        (b"", {}),
        (b"\n", {}),
    ],
)
def test_parse_notify(data: bytes, expected: dict[str, str]) -> None:
    assert parse_notify(data) == expected


def test_message_properties() -> None:
    fields = {
        "READY": "1", "WATCHDOG": "1", "STOPPING": "1", "RELOADING": "1", "STATUS": "ok",
        "MAINPID": "7", "ERRNO": "13", "EXTEND_TIMEOUT_USEC": "100",
    }  # fmt: skip
    message = NotifyMessage(fields=fields, pid=1, uid=0, gid=0, size=0)
    assert message.ready
    assert message.watchdog
    assert message.stopping
    assert message.reloading
    assert message.status == "ok"
    assert (message.main_pid, message.errno, message.extend_timeout_usec) == (7, 13, 100)

    other = NotifyMessage(
        fields={"READY": "0", "MAINPID": "x"}, pid=None, uid=None, gid=None, size=0
    )
    assert not other.ready
    assert not other.watchdog
    assert not other.stopping
    assert not other.reloading
    assert other.status is None
    assert other.main_pid is None
    assert other.errno is None
    assert other.extend_timeout_usec is None


# --- NotifySocket --------------------------------------------------------------------------------


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(tmp_path / "notify") as sock:
        yield sock


def send(
    path: Path,
    data: bytes,
    *,
    ancillary: list[tuple[int, int, bytes]] | None = None,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendmsg([data], ancillary or [], 0, os.fspath(path))


def test_socket_file_modes_and_name(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with NotifySocket(tmp_path / "deep" / "notify") as sock:
            assert sock.path == tmp_path / "deep" / "notify" / SOCKET_NAME
            assert SOCKET_NAME == spec.NOTIFY_SOCKET_NAME
            info = sock.path.lstat()
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o777
            assert stat.S_IMODE(sock.directory.stat().st_mode) == 0o755
    finally:
        os.umask(old)


def test_receive_with_credentials(notify: NotifySocket) -> None:
    assert notify.receive() == []
    send(notify.path, b"READY=1\nSTATUS=warming up")
    [message] = notify.receive()
    assert message.ready
    assert message.status == "warming up"
    assert (message.pid, message.uid, message.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert message.size == len(b"READY=1\nSTATUS=warming up")
    assert message.problems == ()


@pytest.mark.skipif(os.geteuid() != 0, reason="claiming another uid/gid needs root")
def test_receive_explicit_credentials(notify: NotifySocket) -> None:
    # What the kernel reports is what the sender may claim: root may claim uid/gid 1000.
    ucred = struct.pack("iII", os.getpid(), 1000, 1000)
    send(notify.path, b"WATCHDOG=1", ancillary=[(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, ucred)])
    [message] = notify.receive()
    assert message.watchdog
    assert (message.pid, message.uid, message.gid) == (os.getpid(), 1000, 1000)


def test_several_queued_messages_come_in_order(notify: NotifySocket) -> None:
    for text in (b"STATUS=one", b"STATUS=two", b"READY=1", b"WATCHDOG=1"):
        send(notify.path, text)
    messages = notify.receive()
    assert [m.fields for m in messages] == [
        {"STATUS": "one"}, {"STATUS": "two"}, {"READY": "1"}, {"WATCHDOG": "1"},
    ]  # fmt: skip
    assert notify.receive() == []


def test_oversize_is_ignored_and_the_next_message_is_read(notify: NotifySocket) -> None:
    send(notify.path, b"STATUS=" + b"x" * (MAX_DATAGRAM - len(b"STATUS=")))  # exactly the cap
    send(notify.path, b"READY=1\nSTATUS=" + b"y" * 10_000)
    send(notify.path, b"WATCHDOG=1")
    at_cap, oversize, after = notify.receive()
    assert at_cap.size == MAX_DATAGRAM
    assert at_cap.status == "x" * (MAX_DATAGRAM - 7)
    assert at_cap.problems == ()
    assert oversize.fields == {}
    assert not oversize.ready
    assert oversize.size == MAX_DATAGRAM + 1
    assert oversize.problems == (f"message larger than {MAX_DATAGRAM} bytes: ignored",)
    assert oversize.pid == os.getpid()
    assert after.watchdog


def test_nul_byte_is_reported(notify: NotifySocket) -> None:
    send(notify.path, b"READY=1\0")
    [message] = notify.receive()
    assert message.fields == {}
    assert message.problems == ("message contains a NUL byte: ignored",)


def test_passed_fds_are_closed(notify: NotifySocket) -> None:
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    try:
        rights = struct.pack("ii", write_end, other_write)
        send(
            notify.path,
            b"FDSTORE=1\nFDNAME=state",
            ancillary=[(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)],
        )
        os.close(write_end)
        os.close(other_write)
        [message] = notify.receive()
        # The received copies were the last write ends: closed, so the readers see EOF.
        assert os.read(read_end, 1) == b""
        assert os.read(other_read, 1) == b""
        assert message.fields == {"FDSTORE": "1", "FDNAME": "state"}
        assert message.problems == (
            "closed 2 file descriptors sent with the message: "
            "quay does not keep them (FDSTORE is not supported)",
        )
        assert message.pid == os.getpid()  # credentials come along with rights
    finally:
        os.close(read_end)
        os.close(other_read)


def test_fileno_works_with_selectors(notify: NotifySocket) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(notify, selectors.EVENT_READ)
        assert selector.select(timeout=0) == []
        send(notify.path, b"READY=1")
        assert len(selector.select(timeout=1)) == 1
        assert notify.receive()[0].ready
        assert selector.select(timeout=0) == []


def test_close_removes_the_socket_file_and_is_idempotent(tmp_path: Path) -> None:
    sock = NotifySocket(tmp_path / "notify")
    assert sock.path.exists()
    sock.close()
    sock.close()
    assert sock.closed
    assert not sock.path.exists()
    assert (tmp_path / "notify").is_dir()  # the directory is the caller's
    with pytest.raises(ValueError, match="closed"):
        sock.receive()
    with pytest.raises(ValueError, match="closed"):
        sock.fileno()


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    # quayd restarting: the old socket file is still there, nobody reads it.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    (tmp_path / "notify").mkdir()
    stale.bind(os.fspath(tmp_path / "notify" / SOCKET_NAME))
    stale.close()
    with pytest.raises(ConnectionRefusedError):
        send(tmp_path / "notify" / SOCKET_NAME, b"READY=1")
    with NotifySocket(tmp_path / "notify") as sock:
        send(sock.path, b"READY=1")
        assert sock.receive()[0].ready


def test_a_non_socket_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notify").mkdir()
    (tmp_path / "notify" / SOCKET_NAME).write_text("mine")
    with pytest.raises(NotifySocketError, match="not a socket"):
        NotifySocket(tmp_path / "notify")
    assert (tmp_path / "notify" / SOCKET_NAME).read_text() == "mine"


def test_a_path_too_long_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotifySocketError, match="longer than 107 bytes"):
        NotifySocket(tmp_path / ("d" * 120))


# --- the C helper --------------------------------------------------------------------------------


def test_helper_sends_to_a_path_and_execs(sd_notify: Path, notify: NotifySocket) -> None:
    done = subprocess.run(
        [sd_notify, "READY=1\nSTATUS=warming up", sd_notify, "WATCHDOG=1"],
        env={"NOTIFY_SOCKET": os.fspath(notify.path)},
        check=True,
    )
    assert done.returncode == 0
    first, second = notify.receive()
    assert first.fields == {"READY": "1", "STATUS": "warming up"}
    assert second.fields == {"WATCHDOG": "1"}
    assert first.pid == second.pid  # one process: it sent, then exec'd itself and sent again


def test_helper_sends_to_an_abstract_socket(sd_notify: Path) -> None:
    name = f"quay-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        subprocess.run([sd_notify, "READY=1"], env={"NOTIFY_SOCKET": "@" + name}, check=True)
        receiver.settimeout(5)
        assert receiver.recv(100) == b"READY=1"


def test_helper_refuses_without_notify_socket(sd_notify: Path) -> None:
    done = subprocess.run(
        [sd_notify, "READY=1"], env={}, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "usage" in done.stderr
