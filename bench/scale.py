"""Scale alone: N units dropped at once → all running and ready (issue 8's scenario 3).

    python -m bench scale [--units N] [--runs R] [--podman] [--source DIR | --commit REV]

The same measurement as ``python -m bench all`` (bench/suite.py's ``scale_quay``: N bridged
``sleep`` units renamed into the config dir at once → ``quayctl status`` shows all running and
ready; then all deleted → gone from status, scopes gone, quayd's ``removed`` line for each), in
one throwaway systemd host, against quay only unless ``--podman`` (then ``podman run -d`` N times
in a shell loop too, alternately). Also from quayd's log: the passes while the N started and
when the starts happened. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

from bench import agent
from bench.agent import Bench, log, wait_until
from bench.suite import (
    Suite,
    passes,
    scale_podman,
    scale_profile,
    scale_quay,
    scale_under_profiler,
)
from tests.support.systemd_host import systemd_host

PROFILED = [*agent.PROFILED, ("quayd.units.directory", "LoadCache", "load")]
"""bench/agent.py's pieces of a start, and the agent's unit-file cache."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--podman", action="store_true", help="the podman loop too")
    parser.add_argument(
        "--profile", action="store_true", help="then one run under a profiled quayd (timers)"
    )
    parser.add_argument("--source", type=Path, help="import quayd from DIR (an exported commit)")
    parser.add_argument("--commit", help="measure this commit (`git archive REV quayd`)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.commit:
            args.source = agent.export_commit(stack, args.commit)
        if args.source:
            agent.SOURCE[0] = args.source.resolve()
            if agent.hidden_in_host(agent.SOURCE[0]):
                print(f"bench scale: {agent.SOURCE[0]} is not visible in the host", file=sys.stderr)
                return 2
        return run(args)


def run(args: argparse.Namespace) -> int:
    up: dict[str, list[float]] = {"quay": [], "podman loop": []}
    gone: dict[str, list[float]] = {"quay": [], "podman loop": []}
    with systemd_host() as host:
        log(f"systemd host up in {host.boot_seconds:.1f} s; quayd from {agent.SOURCE[0]}")
        bench = Bench(host)
        suite = Suite(bench, quick=True, tools_dir=bench.root / "tools")
        try:
            bench.setup()
            bench.start_quayd()
            wait_until("quayd answering", bench.status, 30)
            for run in range(args.runs):
                before = passes(bench)
                t_up, t_gone = scale_quay(suite, args.units, "bridge", run)
                after = passes(bench)
                found = scale_profile(bench, f"sc{run}x")
                up["quay"].append(t_up)
                gone["quay"].append(t_gone)
                log(
                    f"run {run + 1}/{args.runs} quay: {args.units} up {t_up:.2f} s, gone "
                    f"{t_gone:.2f} s; {after - before} passes (up and down); last started "
                    f"{found.get('last_started_s', float('nan')):.2f} s after the first action"
                )
                if args.podman:
                    t_up, t_gone = scale_podman(suite, args.units, "bridge", run)
                    up["podman loop"].append(t_up)
                    gone["podman loop"].append(t_gone)
                    log(f"run {run + 1}/{args.runs} podman: up {t_up:.2f} s, gone {t_gone:.2f} s")
            if args.profile:
                agent.PROFILED[:] = PROFILED
                profiled = scale_under_profiler(suite, args.units)
                print(f"\nprofiled: all up in {profiled['up_s']:.2f} s")
                print(f"{'piece':<28} {'calls':>6} {'sum s':>8} {'p50 ms':>8} {'max ms':>8}")
                for label, item in profiled["pieces"].items():
                    print(
                        f"{label:<28} {item['calls']:>6} {item['sum_s']:>8.2f} "
                        f"{item['p50_s'] * 1000:>8.1f} {item['max_s'] * 1000:>8.1f}"
                    )
        finally:
            bench.stop_quayd()
            if args.podman:
                with contextlib.suppress(Exception):
                    host.run(bench.podman("rm", "-a", "-f", "-t", "0"), check=False)
                    host.run(bench.podman("system", "reset", "-f"), check=False, timeout=120)
    print(f"\n{args.units} units, bridge, {args.runs} runs ({time.strftime('%H:%M %Z')})")
    for tool, values in up.items():
        if values:
            print(
                f"{tool:<12} all running and ready p50 {statistics.median(values):6.2f} s "
                f"({', '.join(f'{v:.2f}' for v in values)}); all removed p50 "
                f"{statistics.median(gone[tool]):6.2f} s"
            )
    if up["quay"] and up["podman loop"]:
        quotient = statistics.median(up["quay"]) / statistics.median(up["podman loop"])
        print(f"quay / podman loop: {quotient:.2f}x")
    return 0
