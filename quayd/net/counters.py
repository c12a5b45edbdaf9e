"""Bytes through each container's veth, for the metrics endpoint.

One read of ``/proc/net/dev`` gives every interface of the reader's network namespace (the
host's, where the host ends of the veth pairs are), cheaper than two sysfs files per veth, and
right inside a test host's namespace, where ``/sys/class/net`` may show another one's.

The host end's counters are seen from the bridge: what the host end *transmits* is what the
container *receives*. :func:`container_traffic` turns them around, so its figures are the
container's own (``rx`` in, ``tx`` out), as ``docker stats`` shows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from quayd.net.naming import host_veth_name

PROC_NET_DEV = Path("/proc/net/dev")


@dataclass(frozen=True)
class Traffic:
    rx_bytes: int
    """Received by the container (sent by the host end of its veth)."""
    tx_bytes: int
    """Sent by the container."""


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """``{interface: (rx_bytes, tx_bytes)}`` from ``/proc/net/dev``'s text (pure)."""
    found: dict[str, tuple[int, int]] = {}
    for line in text.splitlines()[2:]:  # two header lines
        name, colon, rest = line.partition(":")
        fields = rest.split()
        if not colon or len(fields) < 9:
            continue
        try:
            found[name.strip()] = (int(fields[0]), int(fields[8]))
        except ValueError:
            continue
    return found


def container_traffic(
    units: Iterable[str], counters: Mapping[str, tuple[int, int]]
) -> dict[str, Traffic]:
    """Per unit with a veth among ``counters``: its container's traffic (pure)."""
    found: dict[str, Traffic] = {}
    for unit in units:
        host_end = counters.get(host_veth_name(unit))
        if host_end is not None:
            found[unit] = Traffic(rx_bytes=host_end[1], tx_bytes=host_end[0])
    return found


def read_traffic(units: Iterable[str], *, proc_net_dev: Path = PROC_NET_DEV) -> dict[str, Traffic]:
    """:func:`container_traffic` of the namespace's interfaces now; empty when unreadable."""
    try:
        text = proc_net_dev.read_text()
    except OSError:
        return {}
    return container_traffic(units, parse_net_dev(text))
