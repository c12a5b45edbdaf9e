"""Benchmarks: `python -m bench SCENARIO [options]`. They print numbers; tests never time things."""

from __future__ import annotations

import sys

from bench import agent, decompress, metrics, pull, scale, suite, update, vm, writes

SCENARIOS = {
    "pull": pull.main,
    "decompress": decompress.main,
    "agent": agent.main,
    "scale": scale.main,
    "all": suite.main,
    "writes": writes.main,
    "update": update.main,
    "metrics": metrics.main,
    "vm": vm.main,
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SCENARIOS:
        print(
            f"usage: python -m bench {{{','.join(SCENARIOS)}}} [--quick] [options]\n"
            "  all: every scenario, writes docs/benchmarks.md (--this-host: on this systemd)\n"
            "  scale: only the N-units scenario (--units N, --podman)\n"
            "  writes: file -> running, written in place and renamed, beside podman run -d\n"
            "  update: ms unavailable during an image update, per strategy, beside podman "
            "auto-update\n"
            "  metrics: quayd's CPU per Prometheus scrape with N containers (--units N)\n"
            "  vm: bench all in the booted cgroup v2 guest, beside podman (--quick, --units N)"
        )
        return 2
    return SCENARIOS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
