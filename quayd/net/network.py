"""The bridge network as one object: what the reconciler calls (host setup, attach, sync, cleanup).

* :meth:`Network.setup_host` creates or repairs the bridge (quay's link group, gateway
  addresses, up) and turns on forwarding and ``route_localnet`` on the bridge.
* :meth:`Network.attach` gives a bridged unit its lease (persisted before anything uses it),
  its namespace (``RUN/netns/UNIT``), its veth pair and ``eth0``; idempotent, so after a crash
  half-way it finishes the job. It is :meth:`Network.prepare` (lease and namespace: what a
  container's spec needs) then :meth:`Network.connect` (veth, addresses, routes), which a
  caller may run while the runtime creates the container. :meth:`Network.detach` undoes the
  links and the namespace but keeps the lease (the unit keeps its address when it is re-created);
  :meth:`Network.release` gives the address back when the unit is removed.
* :meth:`Network.sync` makes the derived state match the current units: the nftables table
  (rendered, compared with the live one, replaced only when different) and every container's
  ``/etc/hosts`` (rewritten in place, so running containers see new peers at once). Its cost
  grows with the number of units, so a start calls :meth:`Network.sync_unit` instead (that
  unit's own files, and the ruleset only when that unit is in it), and the peers' files are
  brought up to date by one :meth:`Network.sync` after a burst of starts (the caller's job).
* :meth:`Network.cleanup` removes what units that no longer exist left behind: veths of quay's
  group, namespace files, leases, files. Nothing without quay's marks is touched.

State: the leases (``STATE/net/leases.json``) are the only thing persisted; links, namespaces
and the ruleset are read back from the kernel. Calls may come from several threads (units work
concurrently): lease changes are serialised by one lock, the ruleset's compare-and-replace by
another, and each etc file's write by a third, held for one file only. Every change of the
leases bumps a generation; a file is never overwritten with content rendered from older
leases than what it holds (a sync that read the leases before a start must not undo the
files that start wrote).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path

from quayd.net import hosts, ipam, links, netns
from quayd.net.errors import AddressPoolExhaustedError, LinkError
from quayd.net.naming import host_veth_name
from quayd.net.ruleset import (
    BridgeNet,
    Endpoint,
    apply_ruleset,
    live_ruleset,
    remove_ruleset,
    render_ruleset,
    unreachable_ports,
)
from quayd.units.model import Unit
from quayd.units.settings import NetworkSettings

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
"""systemd-resolved's list of the real upstream servers (its stub at 127.0.0.53 is unreachable
from a container's namespace)."""


@dataclass(frozen=True)
class Attachment:
    """A bridged unit's place on the network."""

    unit: str
    netns: Path
    ipv4: IPv4Address
    ipv6: IPv6Address | None
    host_veth: str
    changes: tuple[str, ...] = ()
    """What :meth:`Network.attach` had to create or repair (empty when all was in place)."""


@dataclass(frozen=True)
class EtcPaths:
    """The host files quay keeps for a unit, bound over its /etc/hosts and /etc/resolv.conf."""

    hosts: Path
    resolv_conf: Path


@dataclass(frozen=True)
class SyncReport:
    ruleset_replaced: bool
    drifted: bool
    """The live ruleset was not the one this object had applied (someone changed or flushed
    it); False for the first load on a host, which is no drift."""
    hosts_updated: tuple[str, ...]
    unreachable_ports: tuple[str, ...]
    """Published ports that cannot work (an IPv6 host address without an IPv6 subnet…)."""


@dataclass(frozen=True)
class CleanupReport:
    removed: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass
class Network:
    settings: NetworkSettings
    state_dir: Path
    run_dir: Path
    host_resolv_conf: Path = HOST_RESOLV_CONF
    resolved_upstream: Path = RESOLVED_UPSTREAM
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Serialises lease changes (and guards :attr:`_generation`)."""
    _generation: int = field(default=0, repr=False)
    """Bumped by every change of the leases this object makes."""
    _ruleset_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _applied: str | None = field(default=None, repr=False)
    """The ruleset this object last applied or found live."""
    _files_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _written: dict[Path, tuple[int, str]] = field(default_factory=dict, repr=False)
    """What this object last wrote (or found) in each etc file, with the leases' generation
    it was rendered from."""
    _released: set[str] = field(default_factory=set, repr=False)
    """Units released since their last lease: a sync still running with an older set of
    units writes no files for them."""

    # --- layout ----------------------------------------------------------------------------

    @property
    def bridge(self) -> BridgeNet:
        subnet6 = self.settings.subnet6
        return BridgeNet(
            bridge=self.settings.bridge,
            subnet=IPv4Network(self.settings.subnet),
            subnet6=IPv6Network(subnet6) if subnet6 is not None else None,
        )

    @property
    def netns_dir(self) -> Path:
        return self.run_dir / "netns"

    @property
    def files_dir(self) -> Path:
        return self.run_dir / "net"

    @property
    def lease_file(self) -> ipam.LeaseFile:
        return ipam.LeaseFile(self.state_dir / "net" / "leases.json")

    def netns_path(self, unit: str) -> Path:
        return self.netns_dir / unit

    def etc_paths(self, unit: str) -> EtcPaths:
        directory = self.files_dir / unit
        return EtcPaths(hosts=directory / "hosts", resolv_conf=directory / "resolv.conf")

    # --- the host ---------------------------------------------------------------------------

    def setup_host(self) -> list[str]:
        """Bridge, addresses, forwarding, ``route_localnet``: create or repair. Returns changes."""
        net = self.bridge
        addresses: list[links.Interface] = [
            IPv4Interface(f"{ipam.gateway(net.subnet)}/{net.subnet.prefixlen}")
        ]
        if net.subnet6 is not None:
            addresses.append(IPv6Interface(f"{ipam.gateway(net.subnet6)}/{net.subnet6.prefixlen}"))
        with links.rtnl() as ipr:
            changes = links.ensure_bridge(ipr, net.bridge, addresses)
        sysctls = {
            "net/ipv4/ip_forward": "1",
            # 127.0.0.1:PORT -> container: the DNAT'd packet leaves through the bridge with a
            # loopback source, which the kernel drops unless the bridge allows it.
            f"net/ipv4/conf/{net.bridge}/route_localnet": "1",
        }
        if net.subnet6 is not None:
            sysctls["net/ipv6/conf/all/forwarding"] = "1"
        for name, value in sysctls.items():
            if links.write_sysctl(name, value):
                changes.append(f"{name.replace('/', '.')} = {value}")
        netns.prepare_directory(self.netns_dir)
        return changes

    # --- one unit ---------------------------------------------------------------------------

    def lease(self, unit: str) -> ipam.Lease:
        """``unit``'s lease, allocated and saved first if it has none."""
        net = self.bridge
        with self._lock:
            current = self.lease_file.load()
            allocation = ipam.allocate(current, [unit], net.subnet, net.subnet6)
            if unit in allocation.failures:
                raise AddressPoolExhaustedError(allocation.failures[unit])
            if allocation.leases != current:
                self.lease_file.save(allocation.leases)
                self._generation += 1
            with self._files_lock:
                self._released.discard(unit)
        lease = allocation.leases.get(unit)
        assert lease is not None
        return lease

    def attach(self, unit: str) -> Attachment:
        """Lease, namespace, veth pair, ``eth0``; for a unit with ``network.mode = "bridge"``."""
        return self.connect(self.prepare(unit))

    def prepare(self, unit: str) -> Attachment:
        """The first half of :meth:`attach`: the lease and the namespace (what a container's
        spec refers to); no link yet. :meth:`connect` does the rest."""
        lease = self.lease(unit)
        path = self.netns_path(unit)
        changes: list[str] = []
        if not netns.is_netns(path):
            self.netns_dir.mkdir(parents=True, exist_ok=True)
            netns.create(path)
            changes.append(f"created network namespace {path}")
        return Attachment(
            unit=unit,
            netns=path,
            ipv4=lease.ipv4,
            ipv6=lease.ipv6,
            host_veth=host_veth_name(unit),
            changes=tuple(changes),
        )

    def connect(self, prepared: Attachment) -> Attachment:
        """The second half of :meth:`attach`: the veth pair on the bridge, ``eth0`` with the
        lease's addresses and the default routes in the namespace :meth:`prepare` made.
        Touches only this unit's links: it may run while the runtime creates the container."""
        net = self.bridge
        addresses: list[links.Interface] = [
            IPv4Interface(f"{prepared.ipv4}/{net.subnet.prefixlen}")
        ]
        gateway6 = None
        if prepared.ipv6 is not None and net.subnet6 is not None:
            addresses.append(IPv6Interface(f"{prepared.ipv6}/{net.subnet6.prefixlen}"))
            gateway6 = ipam.gateway(net.subnet6)
        side = links.ContainerSide(
            addresses=tuple(addresses), gateway4=ipam.gateway(net.subnet), gateway6=gateway6
        )
        with links.rtnl() as ipr:
            changes = links.ensure_veth(
                ipr,
                unit=prepared.unit,
                host_name=prepared.host_veth,
                bridge=net.bridge,
                namespace=prepared.netns,
                side=side,
            )
        return replace(prepared, changes=(*prepared.changes, *changes))

    def detach(self, unit: str) -> list[str]:
        """Remove ``unit``'s veth pair and namespace; its lease stays (see :meth:`release`)."""
        removed: list[str] = []
        with links.rtnl() as ipr:
            if links.delete_link(ipr, host_veth_name(unit)):
                removed.append(f"veth {host_veth_name(unit)}")
        if netns.remove(self.netns_path(unit)):
            removed.append(f"network namespace {self.netns_path(unit)}")
        return removed

    def release(self, units: Collection[str]) -> None:
        """Give the addresses of ``units`` back and delete their files (they are gone for good)."""
        with self._lock:
            current = self.lease_file.load()
            remaining = ipam.release(current, units)
            if remaining != current:
                self.lease_file.save(remaining)
                self._generation += 1
            with self._files_lock:
                for unit in units:
                    self._released.add(unit)
                    shutil.rmtree(self.files_dir / unit, ignore_errors=True)
                    for path in self.etc_paths(unit).__dict__.values():
                        self._written.pop(path, None)

    # --- everything derived from the set of units -------------------------------------------

    def sync(self, units: Mapping[str, Unit], *, verify: bool = True) -> SyncReport:
        """Ruleset and hosts files for ``units`` (every unit that exists, running or not).

        Only bridged units with a lease take part: a unit gets its lease on its first attach.
        With ``verify`` the live ruleset and every file are read back and repaired when they
        drifted (someone flushed nftables, edited a hosts file); without it, only what differs
        from what this object last wrote is written. Either way every unit's files are
        rendered: with 100 units a plain sync costs tens of milliseconds, so it is what a burst
        of starts ends with, once, not what each start does (:meth:`sync_unit`).
        """
        leases, generation = self._leases()
        replaced, believed, endpoints = self._sync_ruleset(units, verify=verify)
        updated = self._write_etc_files(units, units, leases, generation, verify=verify)
        return SyncReport(
            ruleset_replaced=replaced,
            drifted=replaced and believed,
            hosts_updated=tuple(updated),
            unreachable_ports=tuple(unreachable_ports(self.bridge, endpoints)),
        )

    def sync_unit(self, name: str, units: Mapping[str, Unit]) -> SyncReport:
        """What one unit's start (or removal) needs now, at a cost that does not grow with the
        number of units' files: ``name``'s own hosts and resolv.conf (naming every current peer)
        and the ruleset, only when ``name`` publishes ports or had rules in it (its
        replacement or removal). The peers' hosts files are left to the next :meth:`sync`.
        A ``name`` not in ``units`` (removed) gets no files.
        """
        unit = units.get(name)
        replaced = believed = False
        endpoints: list[Endpoint] = []
        in_ruleset = self._applied is None or f'"unit {name}"' in self._applied
        if in_ruleset or (unit is not None and unit.network.ports):
            replaced, believed, endpoints = self._sync_ruleset(units, verify=False)
        updated: list[str] = []
        if unit is not None:
            leases, generation = self._leases()
            updated = self._write_etc_files({name: unit}, units, leases, generation, verify=False)
        return SyncReport(
            ruleset_replaced=replaced,
            drifted=replaced and believed,
            hosts_updated=tuple(updated),
            unreachable_ports=tuple(unreachable_ports(self.bridge, endpoints)),
        )

    def ensure_etc_files(self, name: str) -> EtcPaths:
        """``name``'s hosts and resolv.conf exist (empty when new): what a container's spec
        bind-mounts must exist at the runtime's create, but their content is needed only once
        its process runs, so :meth:`sync_unit` may write it while the runtime creates it (the
        bind mount pins the inode, and files are rewritten in place)."""
        paths = self.etc_paths(name)
        with self._files_lock:
            paths.hosts.parent.mkdir(parents=True, exist_ok=True)
            for path in (paths.hosts, paths.resolv_conf):
                if hosts.create_empty(path):
                    self._written.pop(path, None)  # what was written there is gone
        return paths

    def _leases(self) -> tuple[ipam.Leases, int]:
        with self._lock:
            return self.lease_file.load(), self._generation

    def _sync_ruleset(
        self, units: Mapping[str, Unit], *, verify: bool
    ) -> tuple[bool, bool, list[Endpoint]]:
        """Render, compare, replace when different: (replaced, believed, endpoints)."""
        with self._ruleset_lock:
            leases, _ = self._leases()
            endpoints = [
                _endpoint(name, unit, leases)
                for name, unit in sorted(units.items())
                if unit.network.mode == "bridge" and leases.get(name) is not None
            ]
            wanted = render_ruleset(self.bridge, endpoints)
            replaced = False
            believed = self._applied == wanted
            if verify or not believed:
                replaced = live_ruleset() != wanted
                if replaced:
                    apply_ruleset(wanted)
                self._applied = wanted
        return replaced, believed, endpoints

    def _write_etc_files(
        self,
        targets: Mapping[str, Unit],
        units: Mapping[str, Unit],
        leases: ipam.Leases,
        generation: int,
        *,
        verify: bool,
    ) -> list[str]:
        """The files of ``targets``, naming the bridged ones among ``units`` as peers."""
        bridged_peers = [
            _host_entry(name, unit, leases)
            for name, unit in sorted(units.items())
            if unit.network.mode == "bridge" and leases.get(name) is not None
        ]
        host_resolv = _read(self.host_resolv_conf) or ""
        upstream = _read(self.resolved_upstream)
        filtered_resolv = hosts.resolv_conf(host_resolv, upstream_resolv=upstream)
        updated: list[str] = []
        for name, unit in sorted(targets.items()):
            paths = self.etc_paths(name)
            own = _host_entry(name, unit, leases)
            peers = [peer for peer in bridged_peers if peer.name != name]
            if unit.network.mode == "none":
                peers = []
            hosts_text = hosts.hosts_file(own, peers)
            # In the host's namespace the host's own resolvers (a 127.0.0.53 stub) work.
            resolv = host_resolv if unit.network.mode == "host" else filtered_resolv
            with self._files_lock:
                if name in self._released:
                    continue  # removed meanwhile: its directory is gone and stays gone
                paths.hosts.parent.mkdir(parents=True, exist_ok=True)
                changed = self._write(paths.hosts, hosts_text, generation, verify)
                changed |= self._write(paths.resolv_conf, resolv, generation, verify)
            if changed:
                updated.append(name)
        return updated

    def _write(self, path: Path, content: str, generation: int, verify: bool) -> bool:
        """Write one file (the caller holds :attr:`_files_lock`), unless it holds content
        rendered from newer leases, or (without ``verify``) exactly this already."""
        written = self._written.get(path)
        if written is not None and (
            written[0] > generation or (not verify and written[1] == content)
        ):
            return False
        changed = hosts.write_in_place(path, content)
        self._written[path] = (generation, content)
        return changed

    def teardown(self) -> None:
        """Remove the ruleset (for tests and an explicit uninstall; the agent never calls it)."""
        remove_ruleset()

    # --- crash leftovers ---------------------------------------------------------------------

    def cleanup(self, existing: Collection[str]) -> CleanupReport:
        """Remove what units not in ``existing`` (every unit file, valid or not) left behind."""
        keep = set(existing)
        removed: list[str] = []
        errors: list[str] = []
        expected_names = {host_veth_name(unit) for unit in keep}
        with links.rtnl() as ipr:
            for link in links.quay_links(ipr):
                if link.kind != "veth" or link.name in expected_names:
                    continue
                if link.unit is not None and link.unit in keep:
                    continue
                try:
                    links.delete_link(ipr, link.name)
                    removed.append(f"veth {link.name} (unit {link.unit or 'unknown'})")
                except LinkError as error:
                    errors.append(str(error))
        if self.netns_dir.is_dir():
            for path in sorted(self.netns_dir.iterdir()):
                if path.name not in keep:
                    try:
                        netns.remove(path)
                        removed.append(f"network namespace {path}")
                    except LinkError as error:
                        errors.append(str(error))
        stale_leases = [lease.unit for lease in self.lease_file.load() if lease.unit not in keep]
        stale_files = (
            [p.name for p in self.files_dir.iterdir() if p.name not in keep]
            if self.files_dir.is_dir()
            else []
        )
        if stale_leases or stale_files:
            self.release(sorted(set(stale_leases) | set(stale_files)))
            removed += [f"lease of {unit}" for unit in stale_leases]
        return CleanupReport(removed=tuple(removed), errors=tuple(errors))


def _endpoint(name: str, unit: Unit, leases: ipam.Leases) -> Endpoint:
    lease = leases.get(name)
    assert lease is not None
    ports = tuple(mapping for spec in unit.network.ports for mapping in spec.mappings)
    return Endpoint(unit=name, ipv4=lease.ipv4, ipv6=lease.ipv6, ports=ports)


def _host_entry(name: str, unit: Unit, leases: ipam.Leases) -> hosts.HostEntry:
    lease = leases.get(name) if unit.network.mode == "bridge" else None
    aliases = [unit.container.hostname] if unit.container.hostname not in (None, name) else []
    aliases += [alias for alias in unit.network.aliases if alias not in aliases]
    return hosts.HostEntry(
        name=name,
        aliases=tuple(str(alias) for alias in aliases),
        ipv4=lease.ipv4 if lease is not None else None,
        ipv6=lease.ipv6 if lease is not None else None,
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
