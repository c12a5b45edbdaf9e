"""Network.sync_unit and the generation rule, without a kernel: nft is replaced by a fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quayd.net import network as network_module
from quayd.net.network import Network
from quayd.units.model import Unit
from quayd.units.settings import NetworkSettings


class FakeNft:
    def __init__(self) -> None:
        self.live: str | None = None
        self.applied: list[str] = []

    def live_ruleset(self) -> str | None:
        return self.live

    def apply_ruleset(self, text: str) -> None:
        self.live = text
        self.applied.append(text)


@pytest.fixture
def nft(monkeypatch: pytest.MonkeyPatch) -> FakeNft:
    fake = FakeNft()
    monkeypatch.setattr(network_module, "live_ruleset", fake.live_ruleset)
    monkeypatch.setattr(network_module, "apply_ruleset", fake.apply_ruleset)
    return fake


def _network(tmp_path: Path) -> Network:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    return Network(
        NetworkSettings(),
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        host_resolv_conf=resolv,
        resolved_upstream=tmp_path / "none",
    )


def _unit(**network: Any) -> Unit:
    return Unit.model_validate({"container": {"image": "busybox"}, "network": network})


def _hosts(net: Network, name: str) -> str:
    return net.etc_paths(name).hosts.read_text()


def test_a_start_writes_its_own_files_with_every_peer_and_leaves_the_peers_files(
    tmp_path: Path, nft: FakeNft
) -> None:
    net = _network(tmp_path)
    units = {name: _unit() for name in ("a", "b", "c")}
    for name in ("a", "b"):
        net.lease(name)
    net.sync(units)
    assert "\tb\n" in _hosts(net, "a")
    applied = len(nft.applied)
    net.lease("c")
    report = net.sync_unit("c", units)
    assert report.hosts_updated == ("c",)
    assert "\ta\n" in _hosts(net, "c")
    assert "\tb\n" in _hosts(net, "c")
    assert "\tc\n" not in _hosts(net, "a")  # the peers wait for the coalesced sync
    assert len(nft.applied) == applied  # no ports: the ruleset is not even rendered
    assert net.sync(units, verify=False).hosts_updated == ("a", "b")
    assert "\tc\n" in _hosts(net, "a")


def test_the_ruleset_changes_at_a_start_only_for_a_unit_with_ports_or_rules(
    tmp_path: Path, nft: FakeNft
) -> None:
    net = _network(tmp_path)
    units = {"web": _unit(ports=["8080:80"]), "db": _unit()}
    net.sync(units)
    net.lease("web")
    net.sync_unit("web", units)
    assert nft.live is not None
    assert '"unit web"' in nft.live
    net.release(["web"])
    del units["web"]
    report = net.sync_unit("web", units)  # its removal: its rules go at once
    assert report.ruleset_replaced
    assert '"unit web"' not in nft.live
    assert not net.etc_paths("web").hosts.parent.exists()


def test_a_sync_rendered_from_older_leases_never_overwrites_newer_files(
    tmp_path: Path, nft: FakeNft
) -> None:
    """A peer sync that read the leases before a start must not undo what the start wrote."""
    net = _network(tmp_path)
    units = {"a": _unit(), "b": _unit()}
    net.lease("a")
    old_leases, old_generation = net._leases()
    net.lease("b")
    net.sync_unit("b", units)
    b_hosts = _hosts(net, "b")
    assert "10.89.0." in b_hosts.split("\tb\n")[0].splitlines()[-1]
    net._write_etc_files(units, units, old_leases, old_generation, verify=False)
    assert _hosts(net, "b") == b_hosts  # not b as "127.0.1.1" from leases without it
    assert "\tb\n" not in _hosts(net, "a")  # a itself was written (from what it knew)


def test_a_removed_units_files_are_not_recreated_by_a_sync_still_listing_it(
    tmp_path: Path, nft: FakeNft
) -> None:
    net = _network(tmp_path)
    units = {"a": _unit(), "b": _unit()}
    net.lease("a")
    net.lease("b")
    net.sync(units)
    net.release(["b"])
    net.sync(units, verify=False)  # an agent's sync begun before the removal
    assert not net.etc_paths("b").hosts.parent.exists()
    net.lease("b")  # the unit is back
    net.sync_unit("b", units)
    assert net.etc_paths("b").hosts.exists()


def test_etc_files_exist_before_the_create_and_get_their_content_after(
    tmp_path: Path, nft: FakeNft
) -> None:
    """The spec bind-mounts them at create; sync_unit fills them in place (same inode) before
    the process runs, even when a file this object had written was deleted meanwhile."""
    net = _network(tmp_path)
    units = {"a": _unit()}
    net.lease("a")
    paths = net.ensure_etc_files("a")
    assert paths.hosts.read_text() == ""
    inode = paths.hosts.stat().st_ino
    net.sync_unit("a", units)
    assert paths.hosts.stat().st_ino == inode
    assert "\ta\n" in paths.hosts.read_text()
    assert net.ensure_etc_files("a").hosts.read_text() != ""  # an existing file is kept
    paths.hosts.unlink()
    net.ensure_etc_files("a")
    net.sync_unit("a", units)  # not skipped as "already written"
    assert "\ta\n" in paths.hosts.read_text()
