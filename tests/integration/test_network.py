"""quayd.net for real: the bridge, veths, leases, nftables and hosts files, in the systemd host.

Everything happens inside the systemd test host, which has a network namespace of its own (only
``lo`` at boot): the bridge ``quay0`` and the ruleset live there, not on this machine. A second
namespace made by the test, ``outside``, plays another machine on a link to the host
(198.51.100.1 on the host's side, 198.51.100.2 outside; TEST-NET-2, never routed anywhere).

Containers are real: busybox pulled from a real registry, run by crun with the namespace quay
prepared, its ``/etc/hosts`` bound from the file quay keeps. Each ``inside_*`` function runs in
a fresh Python process inside the host (``host.call``), like successive agent processes: the
containers outlive each call.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation.container import Bundle, ContainerConfig, prepare, remove, start, stop
from quayd.isolation.runtime import ExitWatcher, OciRuntime, open_log_file
from quayd.isolation.seccomp import load_default_profile
from quayd.isolation.spec import EtcFiles, ImageDefaults, seccomp_for
from quayd.net import links, netns
from quayd.net.ipam import LeaseFile
from quayd.net.naming import QUAY_LINK_GROUP, host_veth_name
from quayd.net.network import Network
from quayd.net.ruleset import Endpoint, live_ruleset, render_ruleset
from quayd.units.model import Unit
from quayd.units.settings import NetworkSettings
from tests.support.pulled import pulled_busybox_layers
from tests.support.systemd_host import CONTAINER_TEST_MARKS, SystemdHost, systemd_host

pytestmark = CONTAINER_TEST_MARKS

RUN_DIR = Path("/run/quay")  # inside the host: its private /run
OUTSIDE_NS = Path("/run/quay-test-outside")
HOST_ADDRESS = "198.51.100.1"
OUTSIDE_ADDRESS = "198.51.100.2"
SETTINGS: dict[str, Any] = {"bridge": "quay0", "subnet": "10.89.0.0/24", "subnet6": "fd89::/64"}
WEB = (
    "mkdir -p /tmp/www && echo hello-from-$(hostname) > /tmp/www/index.html && "
    "exec httpd -f -p 80 -h /tmp/www"
)
IDLE = "trap 'exit 0' TERM; while :; do sleep 0.1; done"


def unit_document(script: str, **network: Any) -> dict[str, Any]:
    return {
        "container": {
            "image": "test/busybox:1",
            "command": ["/bin/sh", "-c", script],
            "stop_timeout": "2s",
        },
        "network": network,
    }


# --- inside the host (module-level: host.call imports them by name) ----------------------------


def _network(state_dir: str) -> Network:
    return Network(
        NetworkSettings.model_validate(SETTINGS),
        state_dir=Path(state_dir),
        run_dir=RUN_DIR,
    )


def _units(documents: dict[str, dict[str, Any]]) -> dict[str, Unit]:
    return {name: Unit.model_validate(document) for name, document in documents.items()}


def _runtime() -> OciRuntime:
    return OciRuntime("crun", run_dir=RUN_DIR, systemd_cgroup=True)


def inside_start(
    *, state_dir: str, layers: list[str], units: dict[str, dict[str, Any]], start_names: list[str]
) -> dict[str, Any]:
    """Set the host up, attach and start ``start_names`` (``units`` is every unit that exists)."""
    network = _network(state_dir)
    network.setup_host()
    all_units = _units(units)
    attached = {
        name: network.attach(name)
        for name in start_names
        if all_units[name].network.mode == "bridge"
    }
    network.sync(all_units)
    base = Path(state_dir)
    profile = load_default_profile()
    for name in start_names:
        unit = all_units[name]
        etc = network.etc_paths(name)
        hostname = base / "etc" / name / "hostname"
        hostname.parent.mkdir(parents=True, exist_ok=True)
        hostname.write_text(f"{name}\n")
        config = ContainerConfig(
            unit=unit.model_copy(
                update={"container": unit.container.model_copy(update={"hostname": name})}
            ),
            image=ImageDefaults(),
            etc_files=EtcFiles(hostname, etc.hosts, etc.resolv_conf),
            volumes_dir=base / "volumes",
            cgroup_driver="systemd",
            netns=str(attached[name].netns) if name in attached else None,
            seccomp=seccomp_for(unit, profile),
            nofile_ceiling=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            swap_limit=Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
        )
        bundle = prepare(name, [Path(x) for x in layers], config, base / "containers" / name)
        out = open_log_file(base / "logs" / f"{name}.log")
        try:
            start(bundle, _runtime(), out)
        finally:
            os.close(out)
    return {name: {"ipv4": str(a.ipv4), "ipv6": str(a.ipv6)} for name, a in attached.items()}


def inside_sync(*, state_dir: str, units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    report = _network(state_dir).sync(_units(units))
    return {"ruleset_replaced": report.ruleset_replaced, "hosts_updated": report.hosts_updated}


def inside_exec(*, name: str, argv: list[str], timeout: float = 20.0) -> dict[str, Any]:
    # Through the shell: busybox's sh runs its applets without the image linking each one.
    done = _runtime().exec(name, ["/bin/sh", "-c", shlex.join(argv)], timeout=timeout)
    return {"code": done.returncode, "out": done.stdout.decode(), "err": done.stderr.decode()}


def inside_stop_remove(*, state_dir: str, names: list[str], release: bool) -> None:
    network = _network(state_dir)
    runtime = _runtime()
    base = Path(state_dir)
    with ExitWatcher() as watcher:
        for name in names:
            state = runtime.state(name)
            if state is not None and state.pid:
                watcher.watch(state.pid)
                stop(
                    name,
                    signal_name="SIGTERM",
                    timeout=2,
                    runtime=runtime,
                    watcher=watcher,
                    pid=state.pid,
                )
            remove(Bundle(name, base / "containers" / name, "SIGTERM", 2, "systemd"), runtime)
            network.detach(name)
    if release:
        network.release(names)


def inside_state(*, state_dir: str, units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the kernel and the files say: quay's links, namespaces, leases, ruleset."""
    network = _network(state_dir)
    with links.rtnl() as ipr:
        quay_links = [(link.name, link.kind, link.unit) for link in links.quay_links(ipr)]
    namespaces = (
        sorted(p.name for p in network.netns_dir.iterdir()) if network.netns_dir.is_dir() else []
    )
    inner = {name: netns.run_in(network.netns_dir / name, _link_names) for name in namespaces}
    leases = LeaseFile(Path(state_dir) / "net" / "leases.json").load()
    all_units = _units(units)
    endpoints = [
        Endpoint(
            unit=lease.unit,
            ipv4=lease.ipv4,
            ipv6=lease.ipv6,
            ports=tuple(m for s in all_units[lease.unit].network.ports for m in s.mappings),
        )
        for lease in leases
        if lease.unit in all_units and all_units[lease.unit].network.mode == "bridge"
    ]
    return {
        "links": quay_links,
        "netns": namespaces,
        "inside": inner,
        "leases": {lease.unit: [str(lease.ipv4), str(lease.ipv6)] for lease in leases},
        "live": live_ruleset(),
        "rendered": render_ruleset(network.bridge, endpoints),
    }


def _link_names() -> list[str]:
    with links.rtnl() as ipr:
        return [str(link.get("ifname")) for link in ipr.get_links()]


def inside_make_outside() -> None:
    """The ``outside`` namespace: a veth to the host, 198.51.100.2 there, .1 on the host."""
    OUTSIDE_NS.mkdir(exist_ok=True)
    path = OUTSIDE_NS / "ns"
    if not netns.is_netns(path):
        netns.create(path)
    subprocess.run(
        ["ip", "link", "add", "qt-out", "type", "veth", "peer", "name", "eth0", "netns", str(path)],
        check=True,
    )
    subprocess.run(["ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", "qt-out"], check=True)
    subprocess.run(["ip", "link", "set", "qt-out", "up"], check=True)
    inside = ["nsenter", f"--net={path}", "ip"]
    subprocess.run([*inside, "addr", "add", f"{OUTSIDE_ADDRESS}/24", "dev", "eth0"], check=True)
    subprocess.run([*inside, "link", "set", "eth0", "up"], check=True)
    subprocess.run([*inside, "link", "set", "lo", "up"], check=True)


def _http_get(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=5) as conn:
        conn.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return data.decode(errors="replace").partition("\r\n\r\n")[2]


def inside_http_get(*, address: str, port: int, outside: bool) -> str:
    """GET / from the host's namespace, or from the outside namespace."""
    if outside:
        return netns.run_in(OUTSIDE_NS / "ns", lambda: _http_get(address, port))
    return _http_get(address, port)


def inside_udp_roundtrip(*, state_dir: str, unit: str, port: int, host_port: int) -> dict[str, str]:
    """A UDP echo server in ``unit``'s namespace; datagrams sent to the published port from the
    outside namespace and from the host's 127.0.0.1 come back, and the server saw them."""
    network = _network(state_dir)
    server = netns.run_in(
        network.netns_path(unit), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )
    server.bind(("0.0.0.0", port))
    server.settimeout(5)

    def echo() -> None:
        with contextlib.suppress(OSError):
            for _ in range(2):
                data, peer = server.recvfrom(2048)
                server.sendto(data, peer)

    thread = threading.Thread(target=echo)
    thread.start()

    def roundtrip(address: str) -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(f"ping {address}".encode(), (address, host_port))
            return client.recv(2048).decode()

    try:
        seen = {
            "outside": netns.run_in(OUTSIDE_NS / "ns", lambda: roundtrip(HOST_ADDRESS)),
            "localhost": roundtrip("127.0.0.1"),
        }
    finally:
        thread.join()
        server.close()
    return seen


def inside_peer_seen_outside(*, container: str) -> str:
    """A TCP server in the outside namespace; ``container`` connects to it: the source it saw."""
    listener = netns.run_in(
        OUTSIDE_NS / "ns", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    )
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((OUTSIDE_ADDRESS, 9000))
    listener.listen(1)
    listener.settimeout(10)
    seen: list[str] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            conn, peer = listener.accept()
            seen.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        _runtime().exec(
            container, ["/bin/sh", "-c", f"echo hi | nc -w 3 {OUTSIDE_ADDRESS} 9000"], timeout=15
        )
    finally:
        thread.join()
        listener.close()
    return seen[0] if seen else "nothing"


def inside_killed_mid_setup(
    *, state_dir: str, names: list[str], seed: int, rounds: int
) -> list[dict[str, Any]]:
    """A process attaching units is SIGKILLed at a random moment; a new one cleans up and attaches
    again. Returns what the kernel holds after each recovery."""
    rng = random.Random(seed)
    documents = {
        name: unit_document(IDLE, ports=[f"{7000 + i}:80"]) for i, name in enumerate(names)
    }
    found: list[dict[str, Any]] = []
    for _ in range(rounds):
        child = os.fork()
        if child == 0:  # the "agent": attach, sync, detach, over and over, until killed
            try:
                network = _network(state_dir)
                network.setup_host()
                while True:
                    for name in names:
                        network.attach(name)
                    network.sync(_units(documents))
                    for name in names:
                        network.detach(name)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        network = _network(state_dir)
        network.setup_host()
        network.cleanup(names)
        for name in names:
            network.attach(name)
        network.sync(_units(documents))
        found.append(inside_state(state_dir=state_dir, units=documents))
    return found


def inside_foreign_links() -> dict[str, Any]:
    """Links quay did not make: a cleanup leaves them, a bridge name clash is refused."""
    # A veth named like quay's (the dummy driver is not loadable from here), and a bridge.
    subprocess.run(
        ["ip", "link", "add", "qv-foreign", "type", "veth", "peer", "name", "qv-foreign-p"],
        check=True,
    )
    subprocess.run(["ip", "link", "add", "quay9", "type", "bridge"], check=True)
    network = Network(
        NetworkSettings.model_validate({"bridge": "quay9", "subnet": "10.90.0.0/24"}),
        state_dir=Path("/run/quay-foreign-state"),
        run_dir=RUN_DIR,
    )
    error = ""
    try:
        network.setup_host()
    except Exception as exc:
        error = str(exc)
    _network("/run/quay-foreign-state").cleanup([])
    with links.rtnl() as ipr:
        names = [link.get("ifname") for link in ipr.get_links()]
    subprocess.run(["ip", "link", "del", "qv-foreign"], check=True)
    subprocess.run(["ip", "link", "del", "quay9"], check=True)
    return {"error": error, "links": names}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host() -> Iterator[SystemdHost]:
    with systemd_host() as booted:
        booted.call(inside_make_outside)
        yield booted


@pytest.fixture(scope="module")
def layers(host: SystemdHost, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """busybox pushed to a real registry and pulled into a store in the host's state dir."""
    return pulled_busybox_layers(host.state_dir, tmp_path_factory.mktemp("network-registry"))


def call(host: SystemdHost, function: Any, **kwargs: Any) -> Any:
    return host.call(function, timeout=120, **kwargs)


def state_dir(host: SystemdHost, scenario: str) -> str:
    return str(host.state_dir / scenario)


# --- tests -------------------------------------------------------------------------------------


def test_containers_reach_each_other_by_ip_and_name_and_a_later_one_resolves(
    host: SystemdHost, layers: list[str]
) -> None:
    state = state_dir(host, "names")
    units = {
        "alpha": unit_document(WEB, aliases=["first"]),
        "beta": unit_document(IDLE),
    }
    started = call(
        host,
        inside_start,
        state_dir=state,
        layers=layers,
        units=units,
        start_names=["alpha", "beta"],
    )
    try:
        alpha_ip = started["alpha"]["ipv4"]
        assert IPv4Network(SETTINGS["subnet"]).overlaps(IPv4Network(f"{alpha_ip}/32"))
        for target in (alpha_ip, "alpha", "first"):
            got = call(
                host, inside_exec, name="beta", argv=["wget", "-q", "-O", "-", f"http://{target}/"]
            )
            assert got["out"].strip() == "hello-from-alpha", (target, got)
        # IPv6 too, by address.
        got = call(
            host,
            inside_exec,
            name="beta",
            argv=["wget", "-q", "-O", "-", f"http://[{started['alpha']['ipv6']}]/"],
        )
        assert got["out"].strip() == "hello-from-alpha", got

        # A third unit appears: beta resolves it without being restarted.
        units["gamma"] = unit_document(WEB, aliases=["third"])
        call(host, inside_start, state_dir=state, layers=layers, units=units, start_names=["gamma"])
        got = call(host, inside_exec, name="beta", argv=["wget", "-q", "-O", "-", "http://third/"])
        assert got["out"].strip() == "hello-from-gamma", got
        hosts = call(host, inside_exec, name="beta", argv=["cat", "/etc/hosts"])["out"]
        assert "first" in hosts
        assert "gamma" in hosts
        assert "third" in hosts
    finally:
        call(host, inside_stop_remove, state_dir=state, names=list(units), release=True)
    left = call(host, inside_state, state_dir=state, units=units)
    assert left["leases"] == {}
    assert [link for link in left["links"] if link[1] == "veth"] == []
    assert left["netns"] == []


def test_published_ports_answer_from_outside_localhost_and_the_container_itself(
    host: SystemdHost, layers: list[str]
) -> None:
    state = state_dir(host, "ports")
    units = {
        "web": unit_document(WEB, ports=["8080:80", "5300:5353/udp"]),
        "client": unit_document(IDLE),
    }
    call(
        host,
        inside_start,
        state_dir=state,
        layers=layers,
        units=units,
        start_names=["web", "client"],
    )
    try:
        assert (
            call(host, inside_http_get, address=HOST_ADDRESS, port=8080, outside=True).strip()
            == "hello-from-web"
        )
        assert (
            call(host, inside_http_get, address="127.0.0.1", port=8080, outside=False).strip()
            == "hello-from-web"
        )
        # Hairpin: the container reaches its own published port through the host's address;
        # another container on the bridge does too.
        for container in ("web", "client"):
            got = call(
                host,
                inside_exec,
                name=container,
                argv=["wget", "-q", "-O", "-", f"http://{HOST_ADDRESS}:8080/"],
            )
            assert got["out"].strip() == "hello-from-web", (container, got)
        echoed = call(
            host, inside_udp_roundtrip, state_dir=state, unit="web", port=5353, host_port=5300
        )
        assert echoed == {"outside": f"ping {HOST_ADDRESS}", "localhost": "ping 127.0.0.1"}
        # Leaving the subnet, a container's traffic is masqueraded behind the host's address.
        assert call(host, inside_peer_seen_outside, container="client") == HOST_ADDRESS
        seen = call(host, inside_state, state_dir=state, units=units)
        assert seen["live"] == seen["rendered"]
        assert "8080" in seen["live"]
        assert "5300" in seen["live"]
    finally:
        call(host, inside_stop_remove, state_dir=state, names=["web"], release=True)
    # web is removed: its address and its rules go; client keeps its own.
    del units["web"]
    call(host, inside_sync, state_dir=state, units=units)
    seen = call(host, inside_state, state_dir=state, units=units)
    assert list(seen["leases"]) == ["client"]
    assert "8080" not in (seen["live"] or "")
    assert seen["live"] == seen["rendered"]
    with pytest.raises(Exception, match=r"refused|timed out|No route"):
        call(host, inside_http_get, address=HOST_ADDRESS, port=8080, outside=True)
    call(host, inside_stop_remove, state_dir=state, names=["client"], release=True)


def test_agent_killed_mid_setup_leaves_no_duplicates_after_restart(host: SystemdHost) -> None:
    state = state_dir(host, "killed")
    names = ["k1", "k2", "k3"]
    rounds = call(host, inside_killed_mid_setup, state_dir=state, names=names, seed=7, rounds=8)
    for seen in rounds:
        veths = sorted(link[0] for link in seen["links"] if link[1] == "veth")
        assert veths == sorted(host_veth_name(name) for name in names), seen["links"]
        assert seen["netns"] == names
        for name in names:
            assert sorted(seen["inside"][name]) == ["eth0", "lo"], seen["inside"]
        addresses = [pair[0] for pair in seen["leases"].values()]
        assert sorted(seen["leases"]) == names
        assert len(set(addresses)) == len(names)
        assert seen["live"] == seen["rendered"]
    # Stable: the same addresses after every recovery.
    assert all(seen["leases"] == rounds[0]["leases"] for seen in rounds)
    # A unit that no longer exists: the next start removes its veth, namespace, lease and rules.
    call(host, inside_stop_remove, state_dir=state, names=[], release=False)
    kept = {name: unit_document(IDLE, ports=[f"{7000 + i}:80"]) for i, name in enumerate(names[:2])}
    host.call(_cleanup_and_sync, state_dir=state, keep=names[:2], units=kept)
    seen = call(host, inside_state, state_dir=state, units=kept)
    assert sorted(link[0] for link in seen["links"] if link[1] == "veth") == sorted(
        host_veth_name(name) for name in names[:2]
    )
    assert seen["netns"] == names[:2]
    assert sorted(seen["leases"]) == names[:2]
    assert seen["live"] == seen["rendered"]
    assert "7002" not in seen["live"]
    call(host, inside_stop_remove, state_dir=state, names=names[:2], release=True)


def _cleanup_and_sync(
    *, state_dir: str, keep: list[str], units: dict[str, dict[str, Any]]
) -> list[str]:
    network = _network(state_dir)
    report = network.cleanup(keep)
    network.sync(_units(units))
    return list(report.removed)


def test_mode_none_has_only_loopback_and_mode_host_shares_the_hosts(
    host: SystemdHost, layers: list[str]
) -> None:
    state = state_dir(host, "modes")
    units = {"solo": unit_document(IDLE, mode="none"), "hosted": unit_document(IDLE, mode="host")}
    call(host, inside_start, state_dir=state, layers=layers, units=units, start_names=list(units))
    try:
        solo = call(host, inside_exec, name="solo", argv=["ip", "-o", "link"])["out"]
        assert [line.split(":")[1].strip() for line in solo.splitlines()] == ["lo"]
        hosted = call(host, inside_exec, name="hosted", argv=["ip", "-o", "link"])["out"]
        assert "quay0" in hosted
        assert "qt-out" in hosted
        resolv = call(host, inside_exec, name="solo", argv=["cat", "/etc/hosts"])["out"]
        assert "solo" in resolv
    finally:
        call(host, inside_stop_remove, state_dir=state, names=list(units), release=True)


def test_links_quay_did_not_make_are_never_touched(host: SystemdHost) -> None:
    seen = call(host, inside_foreign_links)
    assert "quay did not create it" in seen["error"]
    assert "qv-foreign" in seen["links"]
    assert "quay9" in seen["links"]


def test_bridge_is_repaired_when_changed(host: SystemdHost) -> None:
    state = state_dir(host, "repair")
    call(host, _setup, state_dir=state)
    host.run(["ip", "addr", "flush", "dev", "quay0"])
    host.run(["ip", "addr", "add", "10.99.0.1/24", "dev", "quay0"])
    host.run(["ip", "link", "set", "quay0", "down"])
    changes = call(host, _setup, state_dir=state)
    assert any("removed 10.99.0.1/24" in change for change in changes), changes
    assert any("added 10.89.0.1/24" in change for change in changes), changes
    shown = json.loads(host.run(["ip", "-j", "addr", "show", "quay0"]).stdout)[0]
    assert shown["operstate"] in ("UP", "UNKNOWN", "DOWN")  # no ports: carrier may be down
    assert "UP" in shown["flags"]
    assert {a["local"] for a in shown["addr_info"] if a["scope"] == "global"} == {
        "10.89.0.1",
        "fd89::1",
    }
    assert shown["group"] == str(QUAY_LINK_GROUP)
    assert call(host, _setup, state_dir=state) == []


def _setup(*, state_dir: str) -> list[str]:
    return _network(state_dir).setup_host()
