"""Links, addresses and routes through netlink (pyroute2): the bridge, veth pairs, eth0 inside.

Every function takes what it changes as arguments and converges: it looks at the current state
first and changes only what differs, so calling it again after a crash half-way finishes the job.
Links without quay's group (:data:`naming.QUAY_LINK_GROUP`) are never changed or deleted.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_interface
from pathlib import Path
from typing import Any

from quayd.net import netns
from quayd.net.errors import LinkError
from quayd.net.naming import (
    BRIDGE_ALIAS,
    CONTAINER_IFNAME,
    QUAY_LINK_GROUP,
    bridge_mac,
    unit_alias,
    unit_of_alias,
)
from quayd.net.pyroute2_light import IPRoute, NetlinkError

Interface = IPv4Interface | IPv6Interface
_IFA_F_NODAD = 0x02
_RT_TABLE_MAIN = 254


@dataclass(frozen=True)
class QuayLink:
    """A link of quay's group in the host namespace."""

    name: str
    index: int
    kind: str | None
    unit: str | None
    """The unit named by the link's alias (None for the bridge or an alias-less leftover)."""


@contextmanager
def rtnl() -> Iterator[Any]:
    """A netlink route socket in the calling thread's network namespace."""
    try:
        ipr = IPRoute()
    except OSError as error:
        raise LinkError(f"cannot open a netlink socket: {error}") from error
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def _netlink(what: str) -> Iterator[None]:
    """Turn pyroute2's errors into a LinkError that names the operation."""
    try:
        yield
    except NetlinkError as error:
        raise LinkError(f"{what}: {error.args[-1] if error.args else error}") from error


def find_link(ipr: Any, name: str) -> Any | None:
    """The link called ``name``, or None. One RTM_GETLINK for that name (about 1 ms), where
    pyroute2's ``get_links(ifname=…)`` dumps and decodes every link (3 ms and growing)."""
    try:
        found = ipr.link("get", ifname=name)
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            return None
        raise LinkError(f"cannot look up interface {name}: {error.args[-1]}") from error
    return found[0] if found else None


def quay_links(ipr: Any) -> list[QuayLink]:
    """Every link in this namespace that carries quay's group."""
    return [
        QuayLink(
            name=link.get("ifname"),
            index=link["index"],
            kind=link.get(("linkinfo", "kind")),
            unit=unit_of_alias(link.get("ifalias")),
        )
        for link in ipr.get_links()
        if link.get("group") == QUAY_LINK_GROUP
    ]


def _is_ours(link: Any) -> bool:
    return bool(link.get("group") == QUAY_LINK_GROUP)


# --- the bridge ------------------------------------------------------------------------------


def ensure_bridge(ipr: Any, name: str, addresses: Sequence[Interface]) -> list[str]:
    """Create or repair the bridge: quay's, up, with exactly ``addresses``. Returns the changes.

    A link of that name that quay did not create is an error, never taken over.
    """
    changes: list[str] = []
    link = find_link(ipr, name)
    if link is None:
        with _netlink(f"cannot create bridge {name}"):
            ipr.link(
                "add", ifname=name, kind="bridge", group=QUAY_LINK_GROUP, address=bridge_mac(name)
            )
        changes.append(f"created bridge {name}")
        link = find_link(ipr, name)
        if link is None:
            raise LinkError(f"bridge {name} vanished right after it was created")
    elif not _is_ours(link) or link.get(("linkinfo", "kind")) != "bridge":
        raise LinkError(
            f"interface {name} exists but quay did not create it; remove it or choose another "
            "name with network.bridge in quayd.toml"
        )
    index = link["index"]
    if link.get("ifalias") != BRIDGE_ALIAS:
        with _netlink(f"cannot label bridge {name}"):
            ipr.link("set", index=index, ifalias=BRIDGE_ALIAS)
    changes += converge_addresses(ipr, index, name, addresses)
    if link.get("state") != "up":
        with _netlink(f"cannot bring bridge {name} up"):
            ipr.link("set", index=index, state="up")
        changes.append(f"brought {name} up")
    return changes


def converge_addresses(
    ipr: Any, index: int, name: str, wanted: Sequence[Interface], *, nodad: bool = False
) -> list[str]:
    """Give link ``index`` exactly the global addresses ``wanted`` (IPv6 link-local kept)."""
    changes: list[str] = []
    present = {_interface(addr) for addr in ipr.get_addr(index=index)}
    present = {iface for iface in present if not _link_local(iface)}
    for stale in sorted(present - set(wanted), key=str):
        with _netlink(f"cannot remove address {stale} from {name}"):
            ipr.addr("del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen)
        changes.append(f"removed {stale} from {name}")
    for missing in sorted(set(wanted) - present, key=str):
        flags = _IFA_F_NODAD if nodad and missing.version == 6 else 0
        with _netlink(f"cannot add address {missing} to {name}"):
            ipr.addr(
                "add",
                index=index,
                address=str(missing.ip),
                prefixlen=missing.network.prefixlen,
                flags=flags,
            )
        changes.append(f"added {missing} to {name}")
    return changes


def _interface(addr: Any) -> Interface:
    return ip_interface(f"{addr.get('address')}/{addr['prefixlen']}")


def _link_local(iface: Interface) -> bool:
    return iface.version == 6 and iface.ip.is_link_local


# --- a unit's veth pair ----------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerSide:
    """What ``eth0`` inside the unit's namespace gets."""

    addresses: tuple[Interface, ...]
    gateway4: IPv4Address
    gateway6: IPv6Address | None = None


def ensure_veth(
    ipr: Any, *, unit: str, host_name: str, bridge: str, namespace: Path, side: ContainerSide
) -> list[str]:
    """Create or repair ``unit``'s veth pair: host end on the bridge, ``eth0`` in ``namespace``.

    A pair left half-made (host end without its peer in the namespace, e.g. after a crash) is
    deleted and made again.
    """
    changes: list[str] = []
    bridge_link = find_link(ipr, bridge)
    if bridge_link is None:
        raise LinkError(f"bridge {bridge} is missing; it is set up before any container")
    link = find_link(ipr, host_name)
    if link is not None and not _is_ours(link):
        raise LinkError(
            f"interface {host_name} (for unit {unit}) exists but quay did not create it; "
            "remove it or rename the unit"
        )
    if link is not None and not netns.run_in(namespace, _has_container_end):
        delete_link(ipr, host_name)
        changes.append(f"removed half-made veth {host_name}")
        link = None
    if link is None:
        _create_veth(ipr, host_name, namespace)
        changes.append(f"created veth {host_name}")
        link = find_link(ipr, host_name)
        if link is None:
            raise LinkError(f"veth {host_name} vanished right after it was created")
    index = link["index"]
    wanted = (unit_alias(unit), bridge_link["index"], "up")
    if (link.get("ifalias"), link.get("master"), link.get("state")) != wanted:
        with _netlink(f"cannot attach {host_name} to {bridge}"):
            ipr.link("set", index=index, ifalias=wanted[0], master=bridge_link["index"], state="up")
    # Hairpin: with bridge netfilter on (br_netfilter, common with Docker around), a container's
    # packet to its own published port is DNATed while being bridged and must leave through
    # the port it came in by, which a bridge refuses unless the port allows it. Docker sets it
    # too. Setting it again is harmless, so it is not read back first.
    with _netlink(f"cannot set hairpin mode on {host_name}"):
        ipr.brport("set", index=index, mode=1)
    changes += netns.run_in(namespace, lambda: _configure_inside(side))
    return changes


def _create_veth(ipr: Any, host_name: str, namespace: Path) -> None:
    fd = _open(namespace)
    try:
        with _netlink(f"cannot create veth {host_name}"):
            ipr.link(
                "add",
                ifname=host_name,
                kind="veth",
                group=QUAY_LINK_GROUP,
                peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": fd},
            )
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise LinkError(f"cannot open network namespace {path}: {error}") from error


def _has_container_end() -> bool:
    with rtnl() as ipr:
        link = find_link(ipr, CONTAINER_IFNAME)
        return link is not None and link.get(("linkinfo", "kind")) == "veth"


def _configure_inside(side: ContainerSide) -> list[str]:
    """Inside the namespace: ``lo`` up, ``eth0`` addressed and up, default routes."""
    changes: list[str] = []
    with rtnl() as ipr:
        lo = find_link(ipr, "lo")
        if lo is not None and lo.get("state") != "up":
            ipr.link("set", index=lo["index"], state="up")
        eth0 = find_link(ipr, CONTAINER_IFNAME)
        if eth0 is None:
            raise LinkError(f"{CONTAINER_IFNAME} is missing in the container's namespace")
        index = eth0["index"]
        changes += converge_addresses(ipr, index, CONTAINER_IFNAME, side.addresses, nodad=True)
        if eth0.get("state") != "up":
            with _netlink(f"cannot bring {CONTAINER_IFNAME} up"):
                ipr.link("set", index=index, state="up")
        changes += _ensure_default_route(ipr, index, side.gateway4)
        if side.gateway6 is not None:
            changes += _ensure_default_route(ipr, index, side.gateway6)
    return changes


def _ensure_default_route(ipr: Any, index: int, gateway: IPv4Address | IPv6Address) -> list[str]:
    family = 2 if gateway.version == 4 else 10
    for route in ipr.get_default_routes(family=family, table=_RT_TABLE_MAIN):
        if route.get("gateway") == str(gateway) and route.get("oif") == index:
            return []
        with _netlink("cannot remove a wrong default route"):
            ipr.route("del", family=family, dst="default", gateway=route.get("gateway"))
    with _netlink(f"cannot add the default route via {gateway}"):
        ipr.route("add", family=family, dst="default", gateway=str(gateway), oif=index)
    return [f"default route via {gateway}"]


def delete_link(ipr: Any, name: str) -> bool:
    """Delete quay's link ``name`` (a veth takes its peer along). False when there is none."""
    link = find_link(ipr, name)
    if link is None:
        return False
    if not _is_ours(link):
        raise LinkError(f"interface {name} was not created by quay; it is left alone")
    try:
        ipr.link("del", index=link["index"])
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            return False
        raise LinkError(f"cannot delete {name}: {error.args[-1]}") from error
    return True


# --- sysctls -----------------------------------------------------------------------------------


def write_sysctl(name: str, value: str, *, proc: Path = Path("/proc/sys")) -> bool:
    """Set sysctl ``name``, spelt as a path (``net/ipv4/ip_forward``: interface names may hold
    dots); True when it changed. ``/proc/sys/net`` is the calling thread's namespace's."""
    path = proc / name
    name = name.replace("/", ".")
    try:
        if path.read_text().strip() == value:
            return False
        path.write_text(f"{value}\n")
    except OSError as error:
        raise LinkError(f"cannot set {name} = {value}: {error}") from error
    return True
