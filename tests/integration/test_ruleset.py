"""quayd.net.ruleset against the real nft and kernel, each test in network namespaces of its own.

The machine's own nftables ruleset is never touched: every nft call, including the ones made by
``apply_ruleset`` / ``live_ruleset`` / ``remove_ruleset``, runs in a fresh Python process inside a
namespace created with ``ip netns add`` (:func:`call`), and the namespaces are deleted afterwards.
The central promise checked here is that ``render_ruleset`` prints exactly what nft lists after
loading it, so that drift detection can be a string compare.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from quayd.net.errors import RulesetError
from quayd.net.ruleset import BridgeNet, Endpoint, render_ruleset
from quayd.units.values import PortMapping

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and nftables"),
    pytest.mark.skipif(
        shutil.which("nft", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")) is None
        or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") is None,
        reason="needs nft (package nftables) and ip (package iproute2)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
NET = BridgeNet("quay0", IPv4Network("10.89.0.0/24"))
NET6 = BridgeNet("quay0", IPv4Network("10.89.0.0/24"), IPv6Network("fd00:89::/64"))
WEB = Endpoint(
    "web",
    IPv4Address("10.89.0.2"),
    None,
    (
        PortMapping(8080, 80),
        PortMapping(5353, 53, "udp"),
        PortMapping(8443, 443, "tcp", "127.0.0.1"),
    ),
)
WEB6 = Endpoint(
    "web",
    IPv4Address("10.89.0.2"),
    IPv6Address("fd00:89::2"),
    (
        PortMapping(8080, 80),
        PortMapping(8081, 81, "udp", "2001:db8::1"),
        PortMapping(8082, 82, "tcp", "::ffff:192.0.2.1"),
        PortMapping(8083, 83, "tcp", "192.0.2.7"),
    ),
)
DB = Endpoint("db", IPv4Address("10.89.0.3"), None, (PortMapping(5432, 5432),))
OTHER_TABLE = """table inet other {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 22 accept
	}
}
"""

# Runs one function of quayd.net.ruleset in the namespace; the result (or a RulesetError's
# message) comes back as JSON on stdout.
_CALL = """
import json, sys
from quayd.net import ruleset
from quayd.net.errors import RulesetError
name, args = json.loads(sys.argv[1])
try:
    print(json.dumps({"value": getattr(ruleset, name)(*args)}))
except RulesetError as error:
    print(json.dumps({"error": str(error)}))
"""


def run(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


@pytest.fixture
def new_netns() -> Iterator[Callable[[], str]]:
    """Makes named network namespaces on demand; deletes them all at the end."""
    names: list[str] = []

    def make() -> str:
        name = f"quay-test-{uuid.uuid4().hex[:8]}"
        run("ip", "netns", "add", name)
        names.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in names:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def netns(new_netns: Callable[[], str]) -> str:
    return new_netns()


def call(ns: str, name: str, *args: Any, prefix: tuple[str, ...] = ()) -> Any:
    """``quayd.net.ruleset.<name>(*args)`` in a new process inside ``ns``."""
    argv = [*prefix, sys.executable, "-c", _CALL, json.dumps([name, list(args)])]
    out = run("ip", "netns", "exec", ns, *argv)
    answer = json.loads(out)
    if "error" in answer:
        raise RulesetError(answer["error"])
    return answer["value"]


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return run("ip", "netns", "exec", ns, "nft", *args, stdin=stdin)


# --- the listing is the rendering ----------------------------------------------------------------

INPUTS = {
    "empty": (NET, []),
    "tcp, udp, IPv4 host address": (NET, [WEB]),
    "two endpoints": (NET, [WEB, DB]),
    "IPv6 subnet and host addresses": (NET6, [WEB6, DB]),
    "IPv6 subnet, no endpoints": (NET6, []),
    "another bridge and subnet": (BridgeNet("br-apps", IPv4Network("172.30.0.0/16")), [DB]),
}


@pytest.mark.parametrize("inputs", INPUTS.values(), ids=INPUTS.keys())
def test_live_ruleset_is_the_rendered_text(
    netns: str, inputs: tuple[BridgeNet, list[Endpoint]]
) -> None:
    text = render_ruleset(*inputs)
    call(netns, "apply_ruleset", text)
    assert call(netns, "live_ruleset") == text


def test_no_table_is_none(netns: str) -> None:
    assert call(netns, "live_ruleset") is None


def test_applying_twice_changes_nothing(netns: str) -> None:
    text = render_ruleset(NET6, [WEB6])
    call(netns, "apply_ruleset", text)
    call(netns, "apply_ruleset", text)
    assert call(netns, "live_ruleset") == text
    assert nft(netns, "list", "ruleset") == text


def test_a_new_ruleset_replaces_the_old_one(netns: str) -> None:
    call(netns, "apply_ruleset", render_ruleset(NET, [WEB, DB]))
    text = render_ruleset(NET, [DB])
    call(netns, "apply_ruleset", text)
    live = call(netns, "live_ruleset")
    assert live == text
    assert '"unit web"' not in live


def test_remove_leaves_nothing(netns: str) -> None:
    call(netns, "apply_ruleset", render_ruleset(NET, [WEB]))
    call(netns, "remove_ruleset")
    assert call(netns, "live_ruleset") is None
    assert nft(netns, "list", "ruleset") == ""
    call(netns, "remove_ruleset")  # nothing to remove is fine


def test_other_tables_are_left_alone(netns: str) -> None:
    nft(netns, "-f", "-", stdin=OTHER_TABLE)
    call(netns, "apply_ruleset", render_ruleset(NET, [WEB]))
    call(netns, "apply_ruleset", render_ruleset(NET, [DB]))
    call(netns, "remove_ruleset")
    assert nft(netns, "list", "ruleset") == OTHER_TABLE


def test_a_refused_ruleset_keeps_the_old_one(netns: str) -> None:
    text = render_ruleset(NET, [WEB])
    call(netns, "apply_ruleset", text)
    broken = "table inet quay {\n\tchain published {\n\t\ttcp dport 80 frobnicate\n\t}\n}\n"
    with pytest.raises(RulesetError, match="frobnicate"):
        call(netns, "apply_ruleset", broken)
    assert call(netns, "live_ruleset") == text


def test_only_table_inet_quay_is_loaded(netns: str) -> None:
    with pytest.raises(RulesetError, match="not table inet quay"):
        call(netns, "apply_ruleset", OTHER_TABLE)
    assert nft(netns, "list", "ruleset") == ""


def test_missing_nft_says_which_package(netns: str) -> None:
    # A private mount namespace with empty /usr/sbin and /sbin: nft cannot be found there.
    hide = 'mount -t tmpfs none /usr/sbin && mount -t tmpfs none /sbin; exec "$@"'
    prefix = ("unshare", "--mount", "sh", "-c", hide, "sh", "env", "PATH=/usr/bin:/bin")
    with pytest.raises(RulesetError, match="install the nftables package"):
        call(netns, "live_ruleset", prefix=prefix)


# --- the rules work ------------------------------------------------------------------------------

# Answers each connection with the address it came from, then closes it.
_SERVER = """
import socket
server = socket.create_server(("10.89.0.2", 80))
print("ready", flush=True)
while True:
    connection, (peer, _) = server.accept()
    connection.sendall(peer.encode())
    connection.close()
"""

_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as connection:
    print(connection.recv(100).decode())
"""


def connect(ns: str, address: str, port: int) -> str:
    """The peer address the container's server saw for a connection from ``ns``."""
    out = run("ip", "netns", "exec", ns, sys.executable, "-c", _CLIENT, address, str(port))
    return out.strip()


def wire_container(host: str, container: str, bridge_netfilter: bool) -> None:
    """quay0 with the gateway in ``host``, a veth into ``container`` holding 10.89.0.2.

    ``bridge_netfilter``: whether bridged IPv4 passes the nftables hooks too (br_netfilter,
    which Docker loads and this kernel may have built in); quay's rules must work either way.
    """
    run("ip", "-n", host, "link", "add", "quay0", "type", "bridge")
    run("ip", "-n", host, "addr", "add", "10.89.0.1/24", "dev", "quay0")
    run("ip", "-n", host, "link", "set", "quay0", "up")
    run(
        "ip", "-n", host, "link", "add", "veth0", "type", "veth", "peer", "eth0", "netns", container
    )
    run("ip", "-n", host, "link", "set", "veth0", "master", "quay0", "up")
    # With br_netfilter, a hairpin packet is DNATed while bridged and leaves by the port it came
    # in on, which a bridge port allows only in hairpin mode (the bridge module sets it too).
    run("ip", "-n", host, "link", "set", "veth0", "type", "bridge_slave", "hairpin", "on")
    run("ip", "-n", container, "addr", "add", "10.89.0.2/24", "dev", "eth0")
    run("ip", "-n", container, "link", "set", "eth0", "up")
    run("ip", "-n", container, "route", "add", "default", "via", "10.89.0.1")
    sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.quay0.route_localnet=1"]
    if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        sysctls.append(f"net.bridge.bridge-nf-call-iptables={int(bridge_netfilter)}")
    elif bridge_netfilter:
        pytest.skip("br_netfilter is not loaded")
    run("ip", "netns", "exec", host, "sysctl", "-qw", *sysctls)


@pytest.fixture(params=[False, True], ids=["routed", "br_netfilter"])
def server_in(
    new_netns: Callable[[], str], request: pytest.FixtureRequest
) -> Iterator[tuple[str, str]]:
    """A host namespace and a container namespace whose 10.89.0.2:80 answers; (host, container)."""
    host, container = new_netns(), new_netns()
    wire_container(host, container, bridge_netfilter=request.param)
    server = subprocess.Popen(
        ["ip", "netns", "exec", container, sys.executable, "-c", _SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n"
        yield host, container
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def test_published_port_reaches_the_container(server_in: tuple[str, str]) -> None:
    host, container = server_in
    endpoint = Endpoint("web", IPv4Address("10.89.0.2"), None, (PortMapping(8080, 80),))
    call(host, "apply_ruleset", render_ruleset(NET, [endpoint]))
    # The host's own processes through 127.0.0.1: DNAT in output, then masquerade to the gateway.
    assert connect(host, "127.0.0.1", 8080) == "10.89.0.1"
    # A host address: DNAT in output, source already the gateway address.
    assert connect(host, "10.89.0.1", 8080) == "10.89.0.1"
    # Hairpin: the container reaches its own published port through the host.
    assert connect(container, "10.89.0.1", 8080) == "10.89.0.1"
