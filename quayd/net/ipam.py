"""Addresses per unit: a pure allocator and its lease file.

Every unit on quay's bridge gets one IPv4 address from ``network.subnet`` and, when
``network.subnet6`` is set, one IPv6 address derived from it. The core (``allocate``,
``release``) is pure: it takes the current ``Leases`` and returns new ones, so the reconciler can
plan with it and tests can drive it with plain data. ``LeaseFile`` is the only I/O: it keeps the
leases in ``STATE/net/leases.json`` so that addresses survive agent restarts, as containers do.

Allocation is round-robin, like CNI's host-local plugin: the leases remember the last address
handed out (the cursor) and the search for a free one starts after it. A just-released address
is therefore not reused at once; neighbours' ARP caches and conntrack entries that still point
at it would otherwise reach the new owner.

In a subnet, host offset 0 is the network address, 1 the gateway (the bridge's address) and the
last one the broadcast address; none of them is ever leased. The IPv6 address is the IPv6
subnet's network address plus the same host offset as the IPv4 address (``10.89.0.7`` →
``fd89::7``), so it is stable and can be guessed from the IPv4 one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from itertools import chain
from pathlib import Path
from typing import Any, overload

from quayd.atomicfile import replace_file
from quayd.net.errors import LeaseFileError

LEASE_FILE_VERSION = 1

_FIRST_HOST_OFFSET = 2
"""Offset 0 is the network address, 1 the gateway: the first address a unit can get is .2."""


@overload
def gateway(subnet: IPv4Network) -> IPv4Address: ...
@overload
def gateway(subnet: IPv6Network) -> IPv6Address: ...
def gateway(subnet: IPv4Network | IPv6Network) -> IPv4Address | IPv6Address:
    """The bridge's address in ``subnet``: its first host address, as Docker and CNI use."""
    return subnet.network_address + 1


@dataclass(frozen=True)
class Lease:
    """The addresses of one unit. ``ipv6`` is None when no IPv6 subnet is configured."""

    unit: str
    ipv4: IPv4Address
    ipv6: IPv6Address | None = None


@dataclass(frozen=True)
class Leases:
    """All leases, by unit, and the allocation cursor (the last IPv4 address handed out).

    The leases are kept sorted by unit so that two equal lease sets compare and serialise
    equally. No two leases share a unit or an address: the constructor refuses that
    (``ValueError``), so no code path can ever build such a state.
    """

    leases: tuple[Lease, ...] = ()
    cursor: IPv4Address | None = None

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.leases, key=lambda lease: lease.unit))
        _check_unique(ordered)
        object.__setattr__(self, "leases", ordered)

    def get(self, unit: str) -> Lease | None:
        """The lease of ``unit``, if it has one."""
        return self.by_unit().get(unit)

    def by_unit(self) -> dict[str, Lease]:
        """The leases keyed by unit name (a fresh dict: changing it changes nothing here)."""
        return {lease.unit: lease for lease in self.leases}

    def __iter__(self) -> Iterator[Lease]:
        return iter(self.leases)

    def __len__(self) -> int:
        return len(self.leases)


def _check_unique(leases: Sequence[Lease]) -> None:
    seen_units: set[str] = set()
    seen_addresses: dict[IPv4Address | IPv6Address, str] = {}
    for lease in leases:
        if lease.unit in seen_units:
            raise ValueError(f"unit {lease.unit} has two leases")
        seen_units.add(lease.unit)
        for address in (lease.ipv4, lease.ipv6):
            if address is None:
                continue
            if address in seen_addresses:
                other = seen_addresses[address]
                raise ValueError(f"units {other} and {lease.unit} both lease {address}")
            seen_addresses[address] = lease.unit


@dataclass(frozen=True)
class Allocation:
    """The outcome of ``allocate``: the new leases and, per unit that got none, why not.

    A failure concerns one unit alone: every other unit is allocated as usual.
    """

    leases: Leases
    failures: Mapping[str, str] = field(default_factory=dict)


# --- the pure core ---------------------------------------------------------------------------


def allocate(
    current: Leases,
    wanted: Sequence[str],
    subnet: IPv4Network,
    subnet6: IPv6Network | None = None,
) -> Allocation:
    """Give every unit in ``wanted`` an address, keeping the ones it already has.

    Existing leases are kept, including those of units not in ``wanted``: release is explicit
    (``release``), since a unit that is briefly invalid or being replaced keeps its address. A
    lease that no longer fits (``network.subnet`` or ``network.subnet6`` changed, so its IPv4
    address is outside the subnet, is now its network, gateway or broadcast address, or its host
    offset does not exist in the IPv6 subnet) is dropped, and re-allocated if its unit is
    wanted. The IPv6 address of every kept lease is derived afresh, so adding or removing
    ``subnet6`` adds or removes it without moving the IPv4 address.

    Units without a lease are served in sorted order, each with the next free address after the
    cursor (wrapping around at the end of the subnet), so the result depends on the input alone.
    A unit that cannot get an address (the pool is full, or its offset does not exist in the
    IPv6 subnet) is reported in ``failures`` and leaves the leases and the cursor unchanged.
    """
    kept = [
        refitted for lease in current if (refitted := _refit(lease, subnet, subnet6)) is not None
    ]
    cursor = current.cursor
    taken = {lease.ipv4 for lease in kept}
    leased_units = {lease.unit for lease in kept}
    failures: dict[str, str] = {}
    for unit in sorted(set(wanted) - leased_units):
        lease_or_failure = _lease_for(unit, taken, cursor, subnet, subnet6)
        if isinstance(lease_or_failure, str):
            failures[unit] = lease_or_failure
            continue
        kept.append(lease_or_failure)
        taken.add(lease_or_failure.ipv4)
        cursor = lease_or_failure.ipv4
    return Allocation(leases=Leases(tuple(kept), cursor), failures=failures)


def release(current: Leases, units: Iterable[str]) -> Leases:
    """``current`` without the leases of ``units`` (units without one are ignored).

    The cursor stays where it is, so the released addresses are the last to be handed out again.
    """
    gone = set(units)
    return Leases(
        tuple(lease for lease in current if lease.unit not in gone),
        current.cursor,
    )


def _host_offsets(subnet: IPv4Network) -> range:
    """The host offsets a unit can get: not the network, the gateway or the broadcast address."""
    return range(_FIRST_HOST_OFFSET, subnet.num_addresses - 1)


def _offset(address: IPv4Address, subnet: IPv4Network) -> int | None:
    """``address``'s host offset in ``subnet`` if it is a leasable address there, else None."""
    offset = int(address) - int(subnet.network_address)
    return offset if offset in _host_offsets(subnet) else None


def _fits6(offset: int, subnet6: IPv6Network | None) -> bool:
    """Whether the IPv6 subnet (if any) has host ``offset``: it may be smaller than the IPv4 one."""
    return subnet6 is None or offset < subnet6.num_addresses


def _ipv6_for(offset: int, subnet6: IPv6Network | None) -> IPv6Address | None:
    """The IPv6 address with the same host offset, or None when there is no IPv6 subnet."""
    return None if subnet6 is None else subnet6.network_address + offset


def _refit(lease: Lease, subnet: IPv4Network, subnet6: IPv6Network | None) -> Lease | None:
    """``lease`` with its IPv6 address derived for ``subnet6``; None if it no longer fits."""
    offset = _offset(lease.ipv4, subnet)
    if offset is None or not _fits6(offset, subnet6):
        return None
    return Lease(lease.unit, lease.ipv4, _ipv6_for(offset, subnet6))


def _lease_for(
    unit: str,
    taken: set[IPv4Address],
    cursor: IPv4Address | None,
    subnet: IPv4Network,
    subnet6: IPv6Network | None,
) -> Lease | str:
    """A new lease for ``unit``, or the message saying why it cannot have one."""
    address = _next_free(taken, cursor, subnet)
    if address is None:
        count = len(_host_offsets(subnet))
        plural = "" if count == 1 else "es"
        return (
            f"no free address in {subnet} for unit {unit}: {count} address{plural}, all leased;"
            " widen network.subnet in quayd.toml or remove units"
        )
    offset = int(address) - int(subnet.network_address)
    if not _fits6(offset, subnet6):
        return (
            f"no IPv6 address for unit {unit}: its IPv4 address {address} is host {offset} of"
            f" {subnet}, but network.subnet6 {subnet6} has only {_size(subnet6)} addresses;"
            " set network.subnet6 in quayd.toml to a subnet at least as large as network.subnet"
            " (a /64 is usual)"
        )
    return Lease(unit, address, _ipv6_for(offset, subnet6))


def _size(subnet6: IPv6Network | None) -> int:
    return 0 if subnet6 is None else subnet6.num_addresses


def _next_free(
    taken: set[IPv4Address], cursor: IPv4Address | None, subnet: IPv4Network
) -> IPv4Address | None:
    """The first address not in ``taken`` after ``cursor``, wrapping around; None if none is.

    A cursor outside the subnet (it changed) or unset starts the search at the first host.
    """
    offsets = _host_offsets(subnet)
    start = _offset(cursor, subnet) if cursor is not None else None
    # Ranges, not lists: a /8 has 16 million offsets and the first free one is usually near.
    if start is None:
        order: Iterable[int] = offsets
    else:
        order = chain(range(start + 1, offsets.stop), range(offsets.start, start + 1))
    for offset in order:
        address = subnet.network_address + offset
        if address not in taken:
            return address
    return None


# --- persistence -----------------------------------------------------------------------------


class LeaseFile:
    """The leases on disk, as small sorted JSON with a format version, replaced atomically.

    One writer (the agent) is assumed; readers (``quayctl``) see the old or the new file,
    never a part of it, and a power cut leaves one of the two as well.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Leases:
        """The stored leases; none when the file does not exist yet.

        Raises ``LeaseFileError`` naming the file when it cannot be read or makes no sense.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Leases()
        except (OSError, UnicodeDecodeError) as error:
            raise self._unusable(f"cannot be read ({error})") from error
        try:
            return _decode(json.loads(text))
        except (ValueError, TypeError, KeyError) as error:
            raise self._unusable(f"is not a valid lease file ({error})") from error

    def save(self, leases: Leases) -> None:
        """Replace the file with ``leases``: temp file, fsync, rename, fsync the directory.

        Creates the parent directory if needed. Raises ``LeaseFileError`` when it cannot write.
        """
        data = json.dumps(_encode(leases), indent=2, sort_keys=True) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(self.path, data.encode("utf-8"))
        except OSError as error:
            raise LeaseFileError(
                f"cannot write the lease file {self.path} ({error}); check that its directory"
                " is writable and its disk not full"
            ) from error

    def _unusable(self, problem: str) -> LeaseFileError:
        return LeaseFileError(
            f"the lease file {self.path} {problem}; fix it, or remove it so that quay starts"
            " afresh (units then get new addresses when they next start)"
        )


def _encode(leases: Leases) -> dict[str, Any]:
    return {
        "version": LEASE_FILE_VERSION,
        "cursor": None if leases.cursor is None else str(leases.cursor),
        "leases": {
            lease.unit: {
                "ipv4": str(lease.ipv4),
                "ipv6": None if lease.ipv6 is None else str(lease.ipv6),
            }
            for lease in leases
        },
    }


def _decode(document: Any) -> Leases:
    """``Leases`` from the parsed JSON; ``ValueError``/``TypeError``/``KeyError`` if malformed."""
    if not isinstance(document, dict):
        raise TypeError("not a JSON object")
    version = document.get("version")
    if version != LEASE_FILE_VERSION:
        raise ValueError(f"format version {version!r}, this quay reads {LEASE_FILE_VERSION}")
    entries = document["leases"]
    if not isinstance(entries, dict):
        raise TypeError("'leases' is not an object")
    cursor = document.get("cursor")
    return Leases(
        tuple(_decode_lease(unit, entry) for unit, entry in entries.items()),
        None if cursor is None else IPv4Address(_text(cursor)),
    )


def _decode_lease(unit: str, entry: Any) -> Lease:
    if not isinstance(entry, dict):
        raise TypeError(f"the lease of {unit} is not an object")
    ipv6 = entry.get("ipv6")
    return Lease(
        unit,
        IPv4Address(_text(entry["ipv4"])),
        None if ipv6 is None else IPv6Address(_text(ipv6)),
    )


def _text(value: Any) -> str:
    # ipaddress accepts integers too; a lease file holds addresses as text only.
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not an address string")
    return value
