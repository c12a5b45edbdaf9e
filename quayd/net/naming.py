"""Names and marks of what quay creates in the kernel's network stack (pure).

Interface names are at most 15 bytes (IFNAMSIZ - 1), unit names up to 63, so the host end of a
unit's veth pair is ``qv-`` + the name's first 6 characters + ``-`` + 5 hex digits of the name's
SHA-256: predictable, readable in ``ip link``, and distinct for names that share a prefix.

Ownership: every link quay creates carries the link group :data:`QUAY_LINK_GROUP`, set in the same
netlink message that creates it (``IFLA_GROUP``; ``ip link show group 29045``), so even a link left
by a crash mid-setup is recognisably quay's. Its alias (``IFLA_IFALIAS``, set right after) names the
unit, for people and for the cleanup. Links without the group are never touched. Network namespaces
live in quay's own run directory (``RUN/netns/UNIT``), never in ``/run/netns``.
"""

from __future__ import annotations

import hashlib

QUAY_LINK_GROUP = 0x7175
"""``IFLA_GROUP`` of every link quay creates ("qu")."""

HOST_VETH_PREFIX = "qv-"
CONTAINER_IFNAME = "eth0"
BRIDGE_ALIAS = "quay:bridge"
_UNIT_ALIAS_PREFIX = "quay:unit="
_MAX_IFNAME = 15


def host_veth_name(unit: str) -> str:
    """The host end of ``unit``'s veth pair, e.g. ``qv-worker-3f9a1``."""
    digest = hashlib.sha256(unit.encode()).hexdigest()[:5]
    name = f"{HOST_VETH_PREFIX}{unit[:6]}-{digest}"
    assert len(name) <= _MAX_IFNAME
    return name


def unit_alias(unit: str) -> str:
    return f"{_UNIT_ALIAS_PREFIX}{unit}"


def unit_of_alias(alias: str | None) -> str | None:
    """The unit a host veth belongs to, from its alias; None for any other alias."""
    if alias is None or not alias.startswith(_UNIT_ALIAS_PREFIX):
        return None
    return alias.removeprefix(_UNIT_ALIAS_PREFIX) or None


def bridge_mac(bridge: str) -> str:
    """A fixed, locally administered MAC for the bridge.

    A Linux bridge without its own address takes the lowest MAC of its ports, so it changes as
    containers come and go and every neighbour's ARP entry for the gateway goes stale. A
    stable address derived from the bridge's name avoids that (Docker sets one too).
    """
    digest = hashlib.sha256(f"quay-bridge:{bridge}".encode()).digest()
    octets = [0x02, *digest[:5]]  # 0x02: locally administered, unicast
    return ":".join(f"{octet:02x}" for octet in octets)
