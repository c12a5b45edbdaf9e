"""The ``/etc/hosts`` and ``/etc/resolv.conf`` each container sees.

Containers find each other by name through a hosts file per container that quay keeps current:
its own name and aliases, then every other container on quay's network. quay bind-mounts it
read-only at ``/etc/hosts``; a bind mount pins the inode it was made with, so the file is updated
in place (``write_in_place``), never replaced by a rename, and changes reach running containers
without a restart. glibc and musl read ``/etc/hosts`` afresh on every lookup.

``hosts_file`` and ``resolv_conf`` are pure: they build the text from plain values, so the
reconciler can compare and tests can check them without files. ``write_in_place`` is the I/O.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from quayd.net.errors import NetworkError

HOSTS_HEADER = (
    "# Managed by quay: rewritten whenever the containers on its network change;"
    " changes made here are overwritten.\n"
)

# What Docker writes, so that software expecting these names finds them.
_LOCALHOST_LINES = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)

_NO_ADDRESS = "127.0.1.1"
"""Where a container without an address of its own finds its name (Debian's convention)."""

_RESOLV_KEPT = frozenset({"search", "domain", "options", "sortlist"})


@dataclass(frozen=True)
class HostEntry:
    """A container as the hosts file names it: its unit name, aliases and addresses.

    Names go into a whitespace-separated file, so a name with whitespace or ``#`` (which starts
    a comment) is refused with ``ValueError`` rather than written as a broken line.
    """

    name: str
    aliases: tuple[str, ...] = ()
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None

    def __post_init__(self) -> None:
        for name in (self.name, *self.aliases):
            if not name or "#" in name or any(c.isspace() for c in name):
                raise ValueError(f"{name!r} cannot be a name in a hosts file")

    def names(self) -> str:
        """The name then the aliases, each once, separated by spaces."""
        return " ".join(dict.fromkeys((self.name, *self.aliases)))


# --- /etc/hosts --------------------------------------------------------------------------------


def hosts_file(own: HostEntry, peers: Sequence[HostEntry]) -> str:
    """The hosts file of the container ``own``, naming ``peers`` too.

    Its own lines come before the peers', so its own name wins should a peer use it as an alias
    (resolvers return the first match). Peers are sorted by name, and peers without any address
    (not on quay's network) or with ``own``'s name are left out. The same input gives the same
    text, byte for byte, so an unchanged network causes no write.
    """
    sections = [HOSTS_HEADER, _LOCALHOST_LINES, _own_lines(own)]
    others = sorted(
        (peer for peer in peers if peer.name != own.name and _address_lines(peer)),
        key=_sort_key,
    )
    if others:
        sections.append("# other containers on quay's network\n")
        sections += [_address_lines(peer) for peer in others]
    return "".join(sections)


def _own_lines(own: HostEntry) -> str:
    return _address_lines(own) or f"{_NO_ADDRESS}\t{own.names()}\n"


def _address_lines(entry: HostEntry) -> str:
    """One line per address of ``entry`` (IPv4 first); empty when it has none."""
    return "".join(
        f"{address}\t{entry.names()}\n"
        for address in (entry.ipv4, entry.ipv6)
        if address is not None
    )


def _sort_key(entry: HostEntry) -> tuple[str, tuple[str, ...], str, str]:
    # The name alone decides in practice (unit names are unique); the rest keeps it total.
    return (entry.name, entry.aliases, str(entry.ipv4), str(entry.ipv6))


# --- /etc/resolv.conf --------------------------------------------------------------------------


def resolv_conf(host_resolv: str, *, upstream_resolv: str | None = None) -> str:
    """A container's resolv.conf: the host's, without the nameservers a container cannot reach.

    Loopback nameservers (127.0.0.0/8, ``::1``) are the host's own namespace; in a container's
    namespace they are the container itself. IPv6 link-local ones (``fe80::1%eth0``) name a host
    interface the container does not have. Both are removed.

    When every nameserver of the host is on loopback, it points at a local stub such as
    systemd-resolved's 127.0.0.53; as Docker does, the servers the stub forwards to are used
    instead: the caller passes ``/run/systemd/resolve/resolv.conf``'s text as
    ``upstream_resolv`` when that file exists. ``search``, ``domain``, ``options`` and
    ``sortlist`` lines are kept, in order. When no nameserver is left, the file has none and a
    comment says why: quay does not invent public DNS servers the operator did not choose.
    """
    source, origin = host_resolv, "the host's resolv.conf"
    if upstream_resolv is not None and _only_loopback(host_resolv):
        source, origin = upstream_resolv, "systemd-resolved's upstream servers"
    kept, removed = _filter(source)
    lines = [
        f"# Generated by quay from {origin}; changes made here are overwritten.\n",
        *(f"# removed nameserver {server}: {why}\n" for server, why in removed),
    ]
    if not any(line.startswith("nameserver") for line in kept):
        lines.append(
            "# No nameserver: none of the host's is reachable from a container, and quay does"
            " not invent one. Give the host a nameserver that is not on loopback (or give"
            " systemd-resolved upstream servers).\n"
        )
    lines += kept
    return "".join(lines)


def _directives(text: str) -> list[list[str]]:
    """The lines of a resolv.conf split into words, without comments and blank lines."""
    return [
        words
        for line in text.splitlines()
        if (words := line.split()) and not words[0].startswith(("#", ";"))
    ]


def _only_loopback(text: str) -> bool:
    servers = [words[1] for words in _directives(text) if words[0] == "nameserver"]
    return bool(servers) and all(_unreachable(server) == "loopback" for server in servers)


def _filter(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The lines a container keeps, and the nameservers removed with the reason."""
    kept: list[str] = []
    removed: list[tuple[str, str]] = []
    for words in _directives(text):
        keyword = words[0]
        if keyword == "nameserver" and len(words) > 1:
            why = _unreachable(words[1])
            if why is None:
                kept.append(f"nameserver {words[1]}\n")
            else:
                removed.append((words[1], f"{why}, unreachable from a container"))
        elif keyword in _RESOLV_KEPT:
            kept.append(" ".join(words) + "\n")
    return kept, removed


def _unreachable(server: str) -> str | None:
    """Why a container cannot reach nameserver ``server`` ("loopback", …), or None if it can.

    A value that is no address is kept: the resolver ignores it, as it would on the host.
    """
    try:
        address = ip_address(server.partition("%")[0])
    except ValueError:
        return None
    if address.is_loopback:
        return "loopback"
    if isinstance(address, IPv6Address) and address.is_link_local:
        return "link-local on a host interface"
    return None


# --- writing in place --------------------------------------------------------------------------


def write_in_place(path: Path, content: str) -> bool:
    """Make ``path`` hold ``content``, keeping its inode; return whether anything changed.

    A missing file is created with mode 0644. An existing one is rewritten in place only when
    its content differs, so an unchanged network costs one read and no write. Symlinks are
    refused (the file lives in quay's own state). No fsync: quay rewrites these files from
    its state whenever it starts, so a power cut loses nothing. Raises ``NetworkError``.
    """
    try:
        return _write_in_place(path, content.encode("utf-8"))
    except OSError as error:
        raise NetworkError(
            f"cannot update {path} ({error.strerror or error}); check quay's state directory"
        ) from error


def create_empty(path: Path) -> bool:
    """Create ``path`` empty (mode 0644) unless it exists; whether it was created. Raises
    ``NetworkError``."""
    try:
        _create(path, b"")
    except FileExistsError:
        return False
    except OSError as error:
        raise NetworkError(
            f"cannot create {path} ({error.strerror or error}); check quay's state directory"
        ) from error
    return True


def _write_in_place(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        _create(path, data)
        return True
    try:
        old = _read_all(fd)
        if old == data:
            return False
        _overwrite(fd, data, len(old))
        return True
    finally:
        os.close(fd)


def _create(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask
        _pwrite_all(fd, data)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _overwrite(fd: int, data: bytes, old_length: int) -> None:
    """Overwrite the file behind ``fd`` with ``data`` without truncating it first.

    O_TRUNC (or truncating first) would let a reader see an empty file: every name lookup in
    the container fails in that window. Instead the whole content goes in with one pwrite at
    offset 0, and only then is the file cut to its new length. A reader between the two sees
    the new content followed by what is past its end: were that the old file's tail, a torn
    line such as ``::3\tdb`` would be a valid, wrong entry. So when the file shrinks, the
    pwrite carries newlines up to the old length, and that window shows blank lines, which
    resolvers skip. A reader racing the pwrite itself may still see a mix of old and new bytes
    for that one lookup; the next lookup reads the file again.
    """
    padding = b"\n" * max(0, old_length - len(data))
    _pwrite_all(fd, data + padding)
    os.ftruncate(fd, len(data))


def _pwrite_all(fd: int, data: bytes) -> None:
    # One pwrite writes it all on a local filesystem; the loop covers a short write.
    offset = 0
    while offset < len(data):
        offset += os.pwrite(fd, data[offset:], offset)
