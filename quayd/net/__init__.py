"""Networking: bridge, veth, IPAM, nftables NAT and ports, names. Not built yet (issue 5)."""
