"""Benchmarks: `python -m bench SCENARIO [options]`. They print numbers; tests never time things."""

from __future__ import annotations

import sys

from bench import agent, decompress, pull, scale, suite

SCENARIOS = {
    "pull": pull.main,
    "decompress": decompress.main,
    "agent": agent.main,
    "scale": scale.main,
    "all": suite.main,
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SCENARIOS:
        print(
            f"usage: python -m bench {{{','.join(SCENARIOS)}}} [--quick] [options]\n"
            "  all: every scenario, writes docs/benchmarks.md\n"
            "  scale: only the N-units scenario (--units N, --podman)"
        )
        return 2
    return SCENARIOS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
