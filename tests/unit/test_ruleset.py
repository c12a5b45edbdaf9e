"""quayd.net.ruleset.render_ruleset and unreachable_ports: the rules each input must produce.

Whether nft prints the rendered text back unchanged is checked against the real nft in
tests/integration/test_ruleset.py; here the cases are plain data and the asserts name the lines
that matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from quayd.net.errors import RulesetError
from quayd.net.ruleset import BridgeNet, Endpoint, render_ruleset, unreachable_ports
from quayd.units.values import PortMapping

NET = BridgeNet("quay0", IPv4Network("10.89.0.0/24"))
NET6 = BridgeNet("quay0", IPv4Network("10.89.0.0/24"), IPv6Network("fd00:89::/64"))


def endpoint(unit: str, last: int, *ports: PortMapping, v6: bool = False) -> Endpoint:
    ipv6 = IPv6Address(f"fd00:89::{last:x}") if v6 else None
    return Endpoint(unit, IPv4Address(f"10.89.0.{last}"), ipv6, tuple(ports))


def rules(text: str) -> list[str]:
    """The rule lines of a rendered table, without their indentation."""
    return [line.strip() for line in text.splitlines() if line.startswith("\t\t")]


@dataclass(frozen=True)
class Case:
    name: str
    net: BridgeNet
    endpoints: tuple[Endpoint, ...]
    present: tuple[str, ...]
    absent: tuple[str, ...] = ()


WEB_TCP = 'dnat ip to 10.89.0.2:80 comment "unit web"'

CASES = [
    Case(
        "no endpoints: only the masquerade rules and the jumps",
        NET,
        (),
        present=(
            'ip saddr 10.89.0.0/24 oifname != "quay0" masquerade comment "outbound"',
            'ip saddr 127.0.0.0/8 oifname "quay0" masquerade comment "localhost to a container"',
            'ct status dnat ip saddr 10.89.0.0/24 oifname "quay0" masquerade comment "hairpin"',
            "type nat hook prerouting priority dstnat; policy accept;",
            "type nat hook output priority -100; policy accept;",
            "type nat hook postrouting priority srcnat; policy accept;",
            "fib daddr type local jump published",
        ),
        absent=("dnat ip to", "ip6"),
    ),
    Case(
        "tcp and udp on every host address",
        NET,
        (endpoint("web", 2, PortMapping(8080, 80), PortMapping(5353, 53, "udp")),),
        present=(
            f"meta nfproto ipv4 tcp dport 8080 {WEB_TCP}",
            'meta nfproto ipv4 udp dport 5353 dnat ip to 10.89.0.2:53 comment "unit web"',
        ),
        absent=("meta nfproto ipv6",),
    ),
    Case(
        "an IPv4 host address",
        NET6,
        (endpoint("web", 2, PortMapping(8080, 80, host_ip="192.0.2.10"), v6=True),),
        present=(f"ip daddr 192.0.2.10 tcp dport 8080 {WEB_TCP}",),
        absent=("meta nfproto", "dnat ip6 to"),
    ),
    Case(
        "an IPv6 host address, in nft's spelling",
        NET6,
        (endpoint("web", 2, PortMapping(8080, 80, host_ip="2001:db8:0::1"), v6=True),),
        present=(
            'ip6 daddr 2001:db8::1 tcp dport 8080 dnat ip6 to [fd00:89::2]:80 comment "unit web"',
        ),
        absent=("dnat ip to",),
    ),
    Case(
        "an IPv4-mapped host address is printed like inet_ntop does",
        NET6,
        (endpoint("web", 2, PortMapping(8080, 80, host_ip="::ffff:192.0.2.1"), v6=True),),
        present=(
            "ip6 daddr ::ffff:192.0.2.1 tcp dport 8080 dnat ip6 to [fd00:89::2]:80"
            ' comment "unit web"',
        ),
    ),
    Case(
        "every host address with IPv6: one rule per family",
        NET6,
        (endpoint("web", 2, PortMapping(8080, 80), v6=True),),
        present=(
            f"meta nfproto ipv4 tcp dport 8080 {WEB_TCP}",
            'meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00:89::2]:80 comment "unit web"',
        ),
    ),
    Case(
        "subnet6 masquerades IPv6 too",
        NET6,
        (),
        present=(
            'ip6 saddr fd00:89::/64 oifname != "quay0" masquerade comment "outbound"',
            'ct status dnat ip6 saddr fd00:89::/64 oifname "quay0" masquerade comment "hairpin"',
        ),
    ),
    Case(
        "an IPv6 host address without an IPv6 container address is left out",
        NET,
        (endpoint("web", 2, PortMapping(8080, 80, host_ip="2001:db8::7"), PortMapping(9090, 90)),),
        present=('meta nfproto ipv4 tcp dport 9090 dnat ip to 10.89.0.2:90 comment "unit web"',),
        absent=("8080", "ip6"),
    ),
    Case(
        "another bridge name",
        BridgeNet("br-apps", IPv4Network("172.30.0.0/16")),
        (),
        present=('ip saddr 172.30.0.0/16 oifname != "br-apps" masquerade comment "outbound"',),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_rules(case: Case) -> None:
    text = render_ruleset(case.net, case.endpoints)
    lines = rules(text)
    for line in case.present:
        assert line in lines
    for fragment in case.absent:
        assert not any(fragment in line for line in lines), fragment


def test_layout_is_nfts_listing() -> None:
    text = render_ruleset(NET, [endpoint("web", 2, PortMapping(8080, 80))])
    assert text.startswith('table inet quay {\n\tcomment "managed by quayd')
    assert "\tchain published {\n\t\tmeta nfproto ipv4" in text
    assert "\t}\n\n\tchain prerouting {\n" in text
    assert text.endswith("\t}\n}\n")
    chains = [line.strip() for line in text.splitlines() if line.startswith("\tchain ")]
    assert chains == [
        "chain published {",
        "chain prerouting {",
        "chain output {",
        "chain postrouting {",
    ]


def test_same_inputs_in_any_order_give_the_same_text() -> None:
    web = endpoint("web", 2, PortMapping(8080, 80), PortMapping(53, 53, "udp"), v6=True)
    db = endpoint("db", 3, PortMapping(5432, 5432, host_ip="127.0.0.1"))
    shuffled = endpoint("web", 2, PortMapping(53, 53, "udp"), PortMapping(8080, 80), v6=True)
    first = render_ruleset(NET6, [web, db])
    assert render_ruleset(NET6, [db, shuffled]) == first
    assert render_ruleset(NET6, [web, db]) == first


def test_endpoints_by_unit_and_mappings_sorted() -> None:
    web = endpoint("web", 2, PortMapping(9000, 90), PortMapping(8000, 80), PortMapping(8000, 80))
    api = endpoint("api", 3, PortMapping(7000, 70))
    dnat = [line for line in rules(render_ruleset(NET, [web, api])) if "dnat ip to" in line]
    assert [line.split(" dport ")[1].split()[0] for line in dnat] == ["7000", "8000", "9000"]
    assert dnat[0].endswith('"unit api"')


@pytest.mark.parametrize(
    ("net", "mapping", "v6", "message"),
    [
        (
            NET,
            PortMapping(8080, 80, host_ip="2001:db8::7"),
            False,
            "web: port [2001:db8::7]:8080:80 needs an IPv6 address, but network.subnet6 is not set",
        ),
        (
            NET6,
            PortMapping(53, 53, "udp", host_ip="2001:db8::1"),
            False,
            "web: port [2001:db8::1]:53:53/udp needs an IPv6 address, but the container has none",
        ),
        (NET6, PortMapping(8080, 80, host_ip="2001:db8::7"), True, None),
        (
            NET6,
            PortMapping(8080, 80, host_ip="::1"),
            True,
            "web: port [::1]:8080:80 cannot be published on ::1 (IPv6 has no route_localnet);"
            " use 127.0.0.1",
        ),
        (NET, PortMapping(8080, 80, host_ip="127.0.0.1"), False, None),
        (NET, PortMapping(8080, 80), False, None),
    ],
)
def test_unreachable_ports(
    net: BridgeNet, mapping: PortMapping, v6: bool, message: str | None
) -> None:
    found = unreachable_ports(net, [endpoint("web", 2, mapping, v6=v6)])
    assert found == ([] if message is None else [message])


def test_unreachable_ports_in_unit_order() -> None:
    v6_only = PortMapping(8080, 80, host_ip="2001:db8::7")
    found = unreachable_ports(NET, [endpoint("web", 2, v6_only), endpoint("api", 3, v6_only)])
    assert [message.split(":")[0] for message in found] == ["api", "web"]


def test_ipv6_loopback_is_never_rendered() -> None:
    ruleset = render_ruleset(
        NET6, [endpoint("web", 2, PortMapping(8080, 80, host_ip="::1"), v6=True)]
    )
    assert "8080" not in ruleset


@pytest.mark.parametrize("bridge", ['quay"0', "quay*", "", "a-very-long-bridge-name"])
def test_bridge_names_nft_would_misread_are_refused(bridge: str) -> None:
    with pytest.raises(RulesetError, match="bridge name"):
        render_ruleset(BridgeNet(bridge, IPv4Network("10.89.0.0/24")), [])


def test_unit_names_are_checked_before_they_go_into_a_comment() -> None:
    with pytest.raises(RulesetError, match="unit name"):
        render_ruleset(NET, [endpoint('web" accept', 2)])
