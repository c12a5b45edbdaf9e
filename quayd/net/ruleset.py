"""quay's nftables ruleset (``table inet quay``): a pure function of the bridge and its endpoints.

quay owns exactly one table and replaces it as a whole, so the rules never need patching: the
reconciler renders the table it wants and, if that differs from the live one, loads it.
:func:`render_ruleset` produces byte for byte the text ``nft list table inet quay`` prints once
the table is loaded (nft 1.0.6: tabs, its own normalisation of expressions, chains and rules in
load order). Drift detection is then a plain string compare,
``live_ruleset() == render_ruleset(...)``, and a diff of the two is readable by an operator.

What the rules do, with the semantics Docker and podman users expect:

* ``published`` (a regular chain) DNATs each published port to its container. It is jumped to
  from the nat prerouting hook (traffic from other hosts, and from containers: hairpin) and the
  nat output hook (the host's own processes, 127.0.0.1 included), both only for packets addressed
  to a local address of the host (``fib daddr type local``).
* ``postrouting`` masquerades the subnet leaving through any other interface than the bridge;
  packets from 127.0.0.0/8 DNATed out the bridge (they need ``route_localnet=1`` on the bridge,
  set elsewhere); and DNATed packets from the subnet going back out the bridge, so a container's
  replies to another container's published port return through the host's conntrack. Where
  br_netfilter is active, such a packet is DNATed while it is bridged and must leave by the port
  it came in on: the containers' bridge ports need hairpin mode for it (the bridge module's job).

The thin I/O edge (:func:`apply_ruleset`, :func:`live_ruleset`, :func:`remove_ruleset`) runs
``nft``; it touches no other table.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from quayd.net.errors import RulesetError
from quayd.units.fieldtypes import UNIT_NAME
from quayd.units.values import PortMapping

TABLE = "inet quay"
TABLE_COMMENT = "managed by quayd: replaced as a whole, edits here are lost"

# nft accepts the symbolic priority "dstnat" in prerouting only; in output it wants the number.
_PREROUTING = "type nat hook prerouting priority dstnat; policy accept;"
_OUTPUT = "type nat hook output priority -100; policy accept;"
_POSTROUTING = "type nat hook postrouting priority srcnat; policy accept;"
_JUMP_PUBLISHED = "fib daddr type local jump published"

# Linux interface names: at most 15 bytes. Limited further to characters nft prints verbatim
# inside quotes and never reads as a wildcard ("*") or an escape.
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}", re.ASCII)
_HANDLE = re.compile(r" # handle \d+$", re.MULTILINE)
_NFT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Endpoint:
    """One bridged container: its addresses on the bridge and the ports it publishes."""

    unit: str
    ipv4: IPv4Address
    ipv6: IPv6Address | None
    ports: tuple[PortMapping, ...] = ()


@dataclass(frozen=True)
class BridgeNet:
    """The bridge the containers sit on and its subnets (the gateway is on the bridge itself)."""

    bridge: str
    subnet: IPv4Network
    subnet6: IPv6Network | None = None


# --- rendering (pure) ----------------------------------------------------------------------------


def render_ruleset(net: BridgeNet, endpoints: Sequence[Endpoint]) -> str:
    """The whole ``table inet quay``, exactly as ``nft list table inet quay`` prints it.

    Endpoints are ordered by unit and mappings sorted, so the same inputs always give the same
    text whatever order the caller found them in.
    """
    _check_names(net, endpoints)
    chains = [
        _chain("published", None, _published_rules(endpoints)),
        _chain("prerouting", _PREROUTING, [_JUMP_PUBLISHED]),
        _chain("output", _OUTPUT, [_JUMP_PUBLISHED]),
        _chain("postrouting", _POSTROUTING, _masquerade_rules(net)),
    ]
    return f'table {TABLE} {{\n\tcomment "{TABLE_COMMENT}"\n' + "\n".join(chains) + "}\n"


def unreachable_ports(net: BridgeNet, endpoints: Sequence[Endpoint]) -> list[str]:
    """One message per mapping :func:`render_ruleset` leaves out, for the caller to report.

    A mapping on an IPv6 host address needs the container to have an IPv6 address; quay cannot
    publish it otherwise, and saying so beats a port that silently does not answer.
    """
    messages = []
    for endpoint in _by_unit(endpoints):
        for mapping in _sorted_mappings(endpoint.ports):
            reason = _unreachable_reason(net, endpoint, mapping)
            if reason is not None:
                messages.append(f"{endpoint.unit}: port {mapping} {reason}")
    return messages


def _unreachable_reason(net: BridgeNet, endpoint: Endpoint, mapping: PortMapping) -> str | None:
    host = _host_address(mapping)
    if isinstance(host, IPv6Address) and host.is_loopback:
        # IPv4 lets a DNATed packet with a 127.0.0.1 source leave by the bridge
        # (route_localnet); IPv6 has no such switch, so ::1 never reaches a container.
        return "cannot be published on ::1 (IPv6 has no route_localnet); use 127.0.0.1"
    if not isinstance(host, IPv6Address) or endpoint.ipv6 is not None:
        return None
    if net.subnet6 is None:
        return "needs an IPv6 address, but network.subnet6 is not set"
    return "needs an IPv6 address, but the container has none"


def _check_names(net: BridgeNet, endpoints: Iterable[Endpoint]) -> None:
    """Refuse names nft would read differently (quotes, wildcards): they end up inside rules."""
    if not _INTERFACE_NAME.fullmatch(net.bridge):
        raise RulesetError(f"{net.bridge!r} is not a usable bridge name for nftables rules")
    for endpoint in endpoints:
        if not UNIT_NAME.fullmatch(endpoint.unit):
            raise RulesetError(f"{endpoint.unit!r} is not a valid unit name")


def _chain(name: str, base: str | None, rules: Sequence[str]) -> str:
    """One chain in nft's listing layout: one tab per level, the hook line first."""
    lines = ([base] if base is not None else []) + list(rules)
    body = "".join(f"\t\t{line}\n" for line in lines)
    return f"\tchain {name} {{\n{body}\t}}\n"


def _published_rules(endpoints: Sequence[Endpoint]) -> list[str]:
    return [
        rule
        for endpoint in _by_unit(endpoints)
        for mapping in _sorted_mappings(endpoint.ports)
        for rule in _dnat_rules(endpoint, mapping)
    ]


def _by_unit(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    return sorted(endpoints, key=lambda endpoint: endpoint.unit)


def _sorted_mappings(ports: Iterable[PortMapping]) -> list[PortMapping]:
    """Duplicates dropped (one rule is enough), then by host port, protocol and address."""
    return sorted(
        set(ports),
        key=lambda m: (m.host_port, m.protocol, m.host_ip or "", m.container_port),
    )


def _dnat_rules(endpoint: Endpoint, mapping: PortMapping) -> list[str]:
    """The v4 and/or v6 DNAT rule of one mapping; none if the container lacks the family."""
    host = _host_address(mapping)
    rules = []
    if isinstance(host, IPv6Address) and host.is_loopback:
        return []  # never reachable: see _unreachable_reason
    if not isinstance(host, IPv6Address):
        match = "meta nfproto ipv4" if host is None else f"ip daddr {host}"
        target = f"ip to {endpoint.ipv4}:{mapping.container_port}"
        rules.append((match, target))
    if endpoint.ipv6 is not None and not isinstance(host, IPv4Address):
        match = "meta nfproto ipv6" if host is None else f"ip6 daddr {_ip6(host)}"
        target = f"ip6 to [{_ip6(endpoint.ipv6)}]:{mapping.container_port}"
        rules.append((match, target))
    return [
        f"{match} {mapping.protocol} dport {mapping.host_port} dnat {target}"
        f' comment "unit {endpoint.unit}"'
        for match, target in rules
    ]


def _host_address(mapping: PortMapping) -> IPv4Address | IPv6Address | None:
    return None if mapping.host_ip is None else ip_address(mapping.host_ip)


def _masquerade_rules(net: BridgeNet) -> list[str]:
    bridge = f'"{net.bridge}"'
    subnet = _prefix4(net.subnet)
    rules = [
        f'ip saddr {subnet} oifname != {bridge} masquerade comment "outbound"',
        f'ip saddr 127.0.0.0/8 oifname {bridge} masquerade comment "localhost to a container"',
        f'ct status dnat ip saddr {subnet} oifname {bridge} masquerade comment "hairpin"',
    ]
    if net.subnet6 is not None:
        subnet6 = _prefix6(net.subnet6)
        rules += [
            f'ip6 saddr {subnet6} oifname != {bridge} masquerade comment "outbound"',
            f'ct status dnat ip6 saddr {subnet6} oifname {bridge} masquerade comment "hairpin"',
        ]
    return rules


def _ip6(address: IPv6Address) -> str:
    """An IPv6 address as nft prints it: glibc's inet_ntop (``::ffff:1.2.3.4``, not Python's
    ``::ffff:102:304``); a zone (``%eth0``) has no meaning to nft and is dropped."""
    return socket.inet_ntop(socket.AF_INET6, address.packed)


def _prefix4(network: IPv4Network) -> str:
    """nft prints a full-length prefix as a bare address."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _prefix6(network: IPv6Network) -> str:
    address = _ip6(network.network_address)
    if network.prefixlen == network.max_prefixlen:
        return address
    return f"{address}/{network.prefixlen}"


# --- the nft edge (I/O) --------------------------------------------------------------------------


def apply_ruleset(text: str) -> None:
    """Replace ``table inet quay`` by ``text`` in one nft transaction.

    ``table inet quay`` first creates the table if it is missing, so the ``delete`` after it
    never fails; nft applies the three statements atomically, so there is no moment without
    rules, and a refused ruleset leaves the old one in place.
    """
    if not text.startswith(f"table {TABLE} {{\n"):
        raise RulesetError(f"refusing to load a ruleset that is not table {TABLE}")
    _nft(["-f", "-"], stdin=_replace_prefix() + text, action="load quay's nftables ruleset")


def live_ruleset() -> str | None:
    """The live ``table inet quay`` in :func:`render_ruleset`'s format; None if there is none."""
    result = _run_nft(["list", "table", *TABLE.split()], stdin=None)
    if result.returncode != 0:
        if "No such file or directory" in result.stderr:
            return None
        raise RulesetError(f"cannot list table {TABLE}: {_stderr(result)}")
    return _HANDLE.sub("", result.stdout)


def remove_ruleset() -> None:
    """Delete ``table inet quay`` if it exists; nothing else."""
    _nft(["-f", "-"], stdin=_replace_prefix(), action=f"delete table {TABLE}")


def _replace_prefix() -> str:
    return f"table {TABLE}\ndelete table {TABLE}\n"


def _nft(args: list[str], *, stdin: str | None, action: str) -> None:
    result = _run_nft(args, stdin=stdin)
    if result.returncode != 0:
        raise RulesetError(f"nft could not {action}: {_stderr(result)}")


def _run_nft(args: list[str], *, stdin: str | None) -> subprocess.CompletedProcess[str]:
    """Run nft with the C locale, whose messages :func:`live_ruleset` recognises."""
    nft = shutil.which("nft", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if nft is None:
        raise RulesetError("nft is not installed; install the nftables package")
    env = {**os.environ, "LC_ALL": "C"}
    try:
        return subprocess.run(
            [nft, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=_NFT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RulesetError(f"nft {' '.join(args)} did not finish in {_NFT_TIMEOUT:.0f}s") from None


def _stderr(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip() or f"exit status {result.returncode}"
