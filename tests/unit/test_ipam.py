"""IPAM: the pure allocator (tables of plain data, one property) and the lease file."""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quayd.net.errors import LeaseFileError
from quayd.net.ipam import (
    Allocation,
    Lease,
    LeaseFile,
    Leases,
    allocate,
    gateway,
    release,
)

NET = IPv4Network("10.89.0.0/24")
NET6 = IPv6Network("fd89::/64")


def v4(text: str) -> IPv4Address:
    return IPv4Address(text)


def addresses(allocation: Allocation) -> dict[str, str]:
    """unit → IPv4 address as text: what the tables compare."""
    return {lease.unit: str(lease.ipv4) for lease in allocation.leases}


def leases(cursor: str | None = None, **by_unit: str) -> Leases:
    """Leases from ``unit="10.89.0.x"`` keywords, IPv4 only."""
    return Leases(
        tuple(Lease(unit, v4(address)) for unit, address in by_unit.items()),
        None if cursor is None else v4(cursor),
    )


# --- gateway -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        (IPv4Network("10.89.0.0/24"), IPv4Address("10.89.0.1")),
        (IPv4Network("192.168.7.8/30"), IPv4Address("192.168.7.9")),
        (IPv6Network("fd89::/64"), IPv6Address("fd89::1")),
        (IPv6Network("fd00:1:2::/120"), IPv6Address("fd00:1:2::1")),
    ],
)
def test_gateway_is_the_first_host(
    subnet: IPv4Network | IPv6Network, expected: IPv4Address | IPv6Address
) -> None:
    assert gateway(subnet) == expected


# --- allocate: tables --------------------------------------------------------------------------

ALLOCATIONS = [
    pytest.param(Leases(), ["web"], NET, {"web": "10.89.0.2"}, id="first allocation gets .2"),
    pytest.param(
        Leases(),
        ["web", "db", "cache"],
        NET,
        {"cache": "10.89.0.2", "db": "10.89.0.3", "web": "10.89.0.4"},
        id="units served in sorted order",
    ),
    pytest.param(
        Leases(),
        ["web", "web", "db"],
        NET,
        {"db": "10.89.0.2", "web": "10.89.0.3"},
        id="a unit wanted twice gets one address",
    ),
    pytest.param(
        leases(cursor="10.89.0.3", web="10.89.0.3"),
        ["web", "db"],
        NET,
        {"web": "10.89.0.3", "db": "10.89.0.4"},
        id="existing lease kept, the new unit after it",
    ),
    pytest.param(
        leases(cursor="10.89.0.5", web="10.89.0.5"),
        ["db"],
        NET,
        {"web": "10.89.0.5", "db": "10.89.0.6"},
        id="leases of units not wanted are kept",
    ),
    pytest.param(
        leases(cursor="10.89.0.9", web="10.89.0.9"),
        ["db"],
        NET,
        {"web": "10.89.0.9", "db": "10.89.0.10"},
        id="round-robin: after the cursor, not the lowest free (.2)",
    ),
    pytest.param(
        leases(cursor="10.89.0.254", web="10.89.0.254"),
        ["db", "mq"],
        NET,
        {"web": "10.89.0.254", "db": "10.89.0.2", "mq": "10.89.0.3"},
        id="wraps around after .254, skipping broadcast, network and gateway",
    ),
    pytest.param(
        leases(cursor="10.89.0.254", a="10.89.0.2", web="10.89.0.254"),
        ["db"],
        NET,
        {"a": "10.89.0.2", "web": "10.89.0.254", "db": "10.89.0.3"},
        id="wrap-around skips leased addresses",
    ),
    pytest.param(
        Leases(),
        ["a", "b"],
        IPv4Network("10.89.0.0/30"),
        {"a": "10.89.0.2"},
        id="/30 has exactly one address",
    ),
    pytest.param(
        Leases(),
        ["a", "b", "c", "d", "e", "f"],
        IPv4Network("10.89.0.8/29"),
        {f"{unit}": f"10.89.0.{n}" for unit, n in zip("abcde", range(10, 15), strict=True)},
        id="/29 has five addresses, .10 to .14",
    ),
    pytest.param(
        leases(cursor="10.89.0.7", web="10.89.0.7", db="10.89.0.3"),
        ["web", "db"],
        IPv4Network("10.90.0.0/24"),
        {"db": "10.90.0.2", "web": "10.90.0.3"},
        id="changed subnet: leases dropped, re-allocated from the start in sorted order",
    ),
    pytest.param(
        leases(cursor="10.89.0.200", web="10.89.0.200", db="10.89.0.3"),
        ["web", "db"],
        IPv4Network("10.89.0.0/25"),
        {"db": "10.89.0.3", "web": "10.89.0.2"},
        id="narrowed subnet: only the lease outside it moves",
    ),
    pytest.param(
        leases(cursor="10.89.0.3", web="10.89.0.3", old="10.89.0.7"),
        ["web"],
        IPv4Network("10.89.0.0/29"),
        {"web": "10.89.0.3"},
        id="narrowed subnet: a lease now on the broadcast address is dropped, not re-allocated",
    ),
]


@pytest.mark.parametrize(("current", "wanted", "subnet", "expected"), ALLOCATIONS)
def test_allocate(
    current: Leases, wanted: list[str], subnet: IPv4Network, expected: dict[str, str]
) -> None:
    allocation = allocate(current, wanted, subnet, None)
    assert addresses(allocation) == expected
    assert set(allocation.failures) == set(wanted) - set(expected)


@pytest.mark.parametrize(("current", "wanted", "subnet", "expected"), ALLOCATIONS)
def test_allocate_is_stable_and_deterministic(
    current: Leases, wanted: list[str], subnet: IPv4Network, expected: dict[str, str]
) -> None:
    first = allocate(current, wanted, subnet, None)
    assert allocate(current, list(reversed(wanted)), subnet, None) == first
    again = allocate(first.leases, wanted, subnet, None)
    assert again.leases == first.leases
    assert again.failures == first.failures


def test_the_cursor_is_the_last_address_handed_out() -> None:
    allocation = allocate(Leases(), ["b", "a"], NET, None)
    assert allocation.leases.cursor == v4("10.89.0.3")
    assert allocate(allocation.leases, ["a", "b"], NET, None).leases.cursor == v4("10.89.0.3")


def test_a_released_address_is_not_reused_at_once() -> None:
    first = allocate(Leases(), ["a", "b", "c"], NET, None).leases
    after_release = release(first, ["b"])
    assert after_release.get("b") is None
    assert after_release.cursor == first.cursor
    assert addresses(allocate(after_release, ["a", "c", "d"], NET, None)) == {
        "a": "10.89.0.2",
        "c": "10.89.0.4",
        "d": "10.89.0.5",
    }


def test_a_released_address_comes_back_after_wrapping_around() -> None:
    small = IPv4Network("10.89.0.0/29")  # .2 to .6
    state = allocate(Leases(), ["a", "b", "c", "d", "e"], small, None).leases
    state = release(state, ["b"])
    allocation = allocate(state, ["x"], small, None)
    assert addresses(allocation)["x"] == "10.89.0.3"
    assert not allocation.failures


def test_release_ignores_units_without_a_lease() -> None:
    state = leases(cursor="10.89.0.2", web="10.89.0.2")
    assert release(state, ["nope"]) == state
    assert release(state, iter(["web", "web"])) == Leases((), v4("10.89.0.2"))


# --- failures ----------------------------------------------------------------------------------


def test_a_full_pool_fails_only_the_units_that_do_not_fit() -> None:
    allocation = allocate(Leases(), ["web", "api", "db"], IPv4Network("10.89.0.0/30"), None)
    assert addresses(allocation) == {"api": "10.89.0.2"}
    assert allocation.failures == {
        "db": "no free address in 10.89.0.0/30 for unit db: 1 address, all leased;"
        " widen network.subnet in quayd.toml or remove units",
        "web": "no free address in 10.89.0.0/30 for unit web: 1 address, all leased;"
        " widen network.subnet in quayd.toml or remove units",
    }


def test_a_failure_leaves_the_leases_and_cursor_as_they_were() -> None:
    full = allocate(Leases(), list("abcde"), IPv4Network("10.89.0.0/29"), None).leases
    allocation = allocate(full, ["f"], IPv4Network("10.89.0.0/29"), None)
    assert allocation.leases == full
    assert "5 addresses, all leased" in allocation.failures["f"]


def test_the_pool_frees_up_after_release() -> None:
    small = IPv4Network("10.89.0.0/30")
    state = allocate(Leases(), ["a"], small, None).leases
    assert allocate(state, ["b"], small, None).failures
    assert addresses(allocate(release(state, ["a"]), ["b"], small, None)) == {"b": "10.89.0.2"}


# --- IPv6 --------------------------------------------------------------------------------------

IPV6_DERIVATIONS = [
    pytest.param("10.89.0.0/24", "fd89::/64", "10.89.0.2", "fd89::2", id="same offset"),
    pytest.param("10.89.0.0/16", "fd89::/64", "10.89.1.2", "fd89::102", id="offset 258"),
    pytest.param("10.89.0.0/24", "fd00:0:0:7::/120", "10.89.0.254", "fd00:0:0:7::fe", id="/120"),
    pytest.param("192.168.4.16/28", "fd89::/64", "192.168.4.20", "fd89::4", id="offset in /28"),
]


@pytest.mark.parametrize(("subnet", "subnet6", "ipv4", "ipv6"), IPV6_DERIVATIONS)
def test_ipv6_is_derived_from_the_ipv4_offset(
    subnet: str, subnet6: str, ipv4: str, ipv6: str
) -> None:
    current = Leases((), v4(ipv4) - 1)
    allocation = allocate(current, ["web"], IPv4Network(subnet), IPv6Network(subnet6))
    assert allocation.leases.get("web") == Lease("web", v4(ipv4), IPv6Address(ipv6))


def test_ipv6_offset_missing_from_a_small_subnet6_fails_that_unit() -> None:
    subnet, subnet6 = IPv4Network("10.89.0.0/16"), IPv6Network("fd89::/120")
    current = leases(cursor="10.89.0.255", web="10.89.0.200")
    allocation = allocate(current, ["web", "db"], subnet, subnet6)
    assert addresses(allocation) == {"web": "10.89.0.200"}
    assert allocation.leases.get("web") == Lease("web", v4("10.89.0.200"), IPv6Address("fd89::c8"))
    assert allocation.leases.cursor == v4("10.89.0.255")
    assert allocation.failures == {
        "db": "no IPv6 address for unit db: its IPv4 address 10.89.1.0 is host 256 of"
        " 10.89.0.0/16, but network.subnet6 fd89::/120 has only 256 addresses; set"
        " network.subnet6 in quayd.toml to a subnet at least as large as network.subnet"
        " (a /64 is usual)"
    }


def test_adding_changing_and_removing_subnet6_keeps_the_ipv4_address() -> None:
    start = allocate(Leases(), ["web"], NET, None).leases
    assert start.get("web") == Lease("web", v4("10.89.0.2"), None)
    with6 = allocate(start, ["web"], NET, NET6).leases
    assert with6.get("web") == Lease("web", v4("10.89.0.2"), IPv6Address("fd89::2"))
    moved6 = allocate(with6, ["web"], NET, IPv6Network("fd90::/64")).leases
    assert moved6.get("web") == Lease("web", v4("10.89.0.2"), IPv6Address("fd90::2"))
    assert allocate(moved6, ["web"], NET, None).leases.get("web") == start.get("web")


def test_a_lease_whose_offset_left_subnet6_is_reallocated() -> None:
    current = leases(cursor="10.89.1.10", web="10.89.1.10")
    allocation = allocate(current, ["web"], IPv4Network("10.89.0.0/16"), IPv6Network("fd::/120"))
    assert allocation.leases.get("web") is None
    assert "no IPv6 address for unit web" in allocation.failures["web"]


# --- Leases invariants -------------------------------------------------------------------------


def test_leases_are_sorted_by_unit_whatever_the_input_order() -> None:
    one = Leases((Lease("b", v4("10.89.0.2")), Lease("a", v4("10.89.0.3"))))
    other = Leases((Lease("a", v4("10.89.0.3")), Lease("b", v4("10.89.0.2"))))
    assert one == other
    assert [lease.unit for lease in one] == ["a", "b"]
    assert len(one) == 2


@pytest.mark.parametrize(
    ("lease_list", "message"),
    [
        ([Lease("a", v4("10.89.0.2")), Lease("a", v4("10.89.0.3"))], "unit a has two leases"),
        (
            [Lease("a", v4("10.89.0.2")), Lease("b", v4("10.89.0.2"))],
            "units a and b both lease 10.89.0.2",
        ),
        (
            [
                Lease("a", v4("10.89.0.2"), IPv6Address("fd::2")),
                Lease("b", v4("10.89.0.3"), IPv6Address("fd::2")),
            ],
            "units a and b both lease fd::2",
        ),
    ],
)
def test_leases_refuse_shared_units_and_addresses(lease_list: list[Lease], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Leases(tuple(lease_list))


# --- the property ------------------------------------------------------------------------------

UNITS = ["a", "b", "c", "d", "e", "f", "g", "h"]
operations = st.lists(
    st.tuples(st.sampled_from(["allocate", "release"]), st.lists(st.sampled_from(UNITS))),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    subnet=st.sampled_from(
        [IPv4Network("10.89.0.0/30"), IPv4Network("10.89.0.8/29"), IPv4Network("10.89.0.16/28")]
    ),
    with6=st.booleans(),
    steps=operations,
)
def test_no_two_units_ever_share_an_address(
    subnet: IPv4Network, with6: bool, steps: list[tuple[str, list[str]]]
) -> None:
    subnet6 = NET6 if with6 else None
    reserved = {subnet.network_address, gateway(subnet), subnet.broadcast_address}
    capacity = subnet.num_addresses - 3
    state = Leases()
    for operation, units in steps:
        if operation == "release":
            state = release(state, units)
            assert not set(units) & {lease.unit for lease in state}
            continue
        allocation = allocate(state, units, subnet, subnet6)
        state = allocation.leases
        ipv4s = [lease.ipv4 for lease in state]
        assert len(set(ipv4s)) == len(ipv4s)
        assert all(address in subnet and address not in reserved for address in ipv4s)
        if subnet6 is not None:
            ipv6s = {lease.ipv6 for lease in state}
            assert len(ipv6s) == len(ipv4s)
            assert gateway(subnet6) not in ipv6s
        for unit in units:
            assert (state.get(unit) is not None) != (unit in allocation.failures)
        if allocation.failures:
            assert len(state) == capacity


# --- the lease file ----------------------------------------------------------------------------


def lease_file(tmp_path: Path) -> LeaseFile:
    return LeaseFile(tmp_path / "net" / "leases.json")


def test_a_missing_lease_file_means_no_leases(tmp_path: Path) -> None:
    assert lease_file(tmp_path).load() == Leases()


@pytest.mark.parametrize(
    "state",
    [
        Leases(),
        leases(cursor="10.89.0.3", web="10.89.0.3", db="10.89.0.2"),
        Leases(
            (Lease("web", v4("10.89.0.2"), IPv6Address("fd89::2")), Lease("db", v4("10.89.0.3"))),
            v4("10.89.0.3"),
        ),
    ],
)
def test_the_lease_file_round_trips(tmp_path: Path, state: Leases) -> None:
    file = lease_file(tmp_path)
    file.save(state)
    assert file.load() == state


def test_the_lease_file_is_small_sorted_versioned_json_with_mode_0644(tmp_path: Path) -> None:
    file = lease_file(tmp_path)
    file.save(allocate(Leases(), ["web", "db"], NET, NET6).leases)
    assert json.loads(file.path.read_text()) == {
        "cursor": "10.89.0.3",
        "leases": {
            "db": {"ipv4": "10.89.0.2", "ipv6": "fd89::2"},
            "web": {"ipv4": "10.89.0.3", "ipv6": "fd89::3"},
        },
        "version": 1,
    }
    text = file.path.read_text()
    assert text.index('"cursor"') < text.index('"leases"') < text.index('"version"')
    assert os.stat(file.path).st_mode & 0o777 == 0o644


def test_save_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    file = lease_file(tmp_path)
    file.save(leases(cursor="10.89.0.2", web="10.89.0.2"))
    first_inode = os.stat(file.path).st_ino
    file.save(leases(cursor="10.89.0.3", db="10.89.0.3"))
    assert os.listdir(file.path.parent) == ["leases.json"]
    assert os.stat(file.path).st_ino != first_inode  # renamed over, not rewritten
    assert file.load() == leases(cursor="10.89.0.3", db="10.89.0.3")


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = lease_file(tmp_path)
    old = leases(cursor="10.89.0.2", web="10.89.0.2")
    file.save(old)

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(LeaseFileError, match=r"cannot write the lease file .*leases\.json"):
        file.save(leases(cursor="10.89.0.3", db="10.89.0.3"))
    monkeypatch.undo()
    assert os.listdir(file.path.parent) == ["leases.json"]
    assert file.load() == old


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not a valid lease file"),
        ("[]", "not a JSON object"),
        ('{"leases": {}}', "format version None"),
        ('{"version": 2, "leases": {}}', "format version 2, this quay reads 1"),
        ('{"version": 1}', "'leases'"),
        ('{"version": 1, "leases": {"web": {"ipv4": "10.89.0.300"}}}', "10.89.0.300"),
        ('{"version": 1, "leases": {"web": {"ipv4": 167837954}}}', "not an address string"),
        ('{"version": 1, "leases": {"web": "10.89.0.2"}}', "lease of web is not an object"),
        (
            '{"version": 1, "leases": {"a": {"ipv4": "10.89.0.2"}, "b": {"ipv4": "10.89.0.2"}}}',
            "units a and b both lease 10.89.0.2",
        ),
    ],
)
def test_a_corrupt_lease_file_names_itself_and_the_way_out(
    tmp_path: Path, content: str, problem: str
) -> None:
    file = lease_file(tmp_path)
    file.path.parent.mkdir()
    file.path.write_text(content)
    with pytest.raises(LeaseFileError) as caught:
        file.load()
    message = str(caught.value)
    assert str(file.path) in message
    assert problem in message
    assert "remove it so that quay starts afresh" in message


def test_an_unreadable_lease_file_names_itself(tmp_path: Path) -> None:
    file = lease_file(tmp_path)
    file.path.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(LeaseFileError, match="cannot be read") as caught:
        file.load()
    assert str(file.path) in str(caught.value)
