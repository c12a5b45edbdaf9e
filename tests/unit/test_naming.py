"""Names and marks of quay's links (quayd.net.naming)."""

from __future__ import annotations

import pytest

from quayd.net.naming import bridge_mac, host_veth_name, unit_alias, unit_of_alias


@pytest.mark.parametrize(
    ("unit", "expected_start"),
    [("web", "qv-web-"), ("a", "qv-a-"), ("worker-with-a-long-name", "qv-worker-")],
)
def test_host_veth_name_is_readable_and_fits_ifnamsiz(unit: str, expected_start: str) -> None:
    name = host_veth_name(unit)
    assert name.startswith(expected_start)
    assert len(name) <= 15
    assert name == host_veth_name(unit)  # predictable


def test_units_sharing_a_prefix_get_distinct_veths() -> None:
    names = {host_veth_name(f"backend-{i}") for i in range(200)}
    assert len(names) == 200


def test_a_63_character_unit_name_still_fits() -> None:
    assert len(host_veth_name("x" * 63)) <= 15


@pytest.mark.parametrize("unit", ["web", "a-b", "x" * 63])
def test_alias_round_trips(unit: str) -> None:
    assert unit_of_alias(unit_alias(unit)) == unit


@pytest.mark.parametrize("alias", [None, "", "quay:bridge", "quay:unit=", "something else"])
def test_other_aliases_name_no_unit(alias: str | None) -> None:
    assert unit_of_alias(alias) is None


def test_bridge_mac_is_stable_unicast_and_locally_administered() -> None:
    mac = bridge_mac("quay0")
    first = int(mac.split(":")[0], 16)
    assert mac == bridge_mac("quay0")
    assert mac != bridge_mac("quay1")
    assert first & 0x02  # locally administered
    assert not first & 0x01  # unicast
    assert len(mac.split(":")) == 6
