"""File → running for each way of writing a unit file, beside ``podman run -d``, in one run.

    python -m bench writes [--runs N] [--commit COMMIT] [--json PATH]

The agent bench's host and tools (:class:`bench.agent.Bench`: a throwaway systemd host, quayd in
it, the busybox image in quay's store and podman's). Runs alternate:

* **renamed**: the unit written to a staging dir next to the config dir, then renamed into it
  (Ansible; the agent bench's latency);
* **in place**: the unit file opened in the config dir (created, truncated), written, closed
  (``cat >``, an editor, Python's ``write_text``); the time is taken before the open;
* **podman**: ``podman run -d``, from a launcher already inside the host.

Each container runs ``sh -c 'touch /marks/RUNID; exec sleep 1000'``, bridged; the time is the
mark's mtime minus ``time.time_ns()`` just before the action. ``--commit`` measures quayd as it
was at COMMIT (``git archive``), for a before/after. The issue's goal: both writes
within 5 ms of each other at p50, and each ≤ 0.33x podman. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench import agent
from bench.agent import Bench, log, mark_time, percentile, quay_unit, wait_until
from tests.support.systemd_host import systemd_host

RATIO_GOAL = 0.33
SAME_WITHIN_SECONDS = 0.005


def in_place_start(bench: Bench, unit: str, run_id: str) -> float:
    """Seconds from opening the unit file in the config dir to its process running."""
    command = ["sh", "-c", f"touch /marks/{run_id}; exec sleep 1000"]
    text = quay_unit(command, mark=bench.marks)
    path = bench.config_dir / f"{unit}.toml"
    started = time.time_ns()
    with path.open("w") as handle:
        handle.write(text)
    seconds = (mark_time(bench.marks / run_id) - started) / 1e9
    bench.delete_units([unit])
    return seconds


def measure(bench: Bench, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"renamed": [], "in place": [], "podman": []}
    for run in range(runs):
        results["renamed"].append(bench.quay_start(f"ren{run}", f"r{run}"))
        results["in place"].append(in_place_start(bench, f"inp{run}", f"i{run}"))
        results["podman"].append(bench.podman_start(f"pod{run}", f"p{run}"))
        log(
            f"run {run + 1}/{runs}: "
            + "  ".join(f"{way} {values[-1]:.3f}s" for way, values in results.items())
        )
    return results


def summary(results: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    podman = percentile(results["podman"], 0.5)
    return {
        way: {
            "p50": percentile(values, 0.5),
            "p95": percentile(values, 0.95),
            "p50_over_podman": percentile(values, 0.5) / podman,
        }
        for way, values in results.items()
    }


def report(summarised: dict[str, dict[str, float]], runs: int) -> str:
    lines = [
        f"file → running, {runs} runs each, {os.cpu_count()} cores, {platform.platform()}",
        "",
        "| write    | p50 s | p95 s | p50 / podman |",
        "|----------|------:|------:|-------------:|",
    ]
    for way, numbers in summarised.items():
        lines.append(
            f"| {way:<8} | {numbers['p50']:.3f} | {numbers['p95']:.3f} "
            f"| {numbers['p50_over_podman']:.2f}x |"
        )
    gap = summarised["in place"]["p50"] - summarised["renamed"]["p50"]
    ratios = [summarised[w]["p50_over_podman"] for w in ("renamed", "in place")]
    lines += [
        "",
        f"in place - renamed at p50: {gap * 1000:+.1f} ms "
        f"(goal: within {SAME_WITHIN_SECONDS * 1000:.0f} ms: "
        f"{'met' if abs(gap) <= SAME_WITHIN_SECONDS else 'missed'}); "
        f"≤ {RATIO_GOAL}x podman: {'met' if max(ratios) <= RATIO_GOAL else 'missed'}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench writes", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="runs per way (default 20)")
    parser.add_argument("--commit", help="measure quayd as it is at this commit")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        print("bench writes: podman is missing (apt-get install -y podman)", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.commit:
            agent.SOURCE[0] = agent.export_commit(stack, args.commit)
        results = _run(args.runs)
    summarised = summary(results)
    print(report(summarised, args.runs))
    if args.json:
        document: dict[str, Any] = {"source": args.commit or "the working tree"}
        document |= {"runs": results, "summary": summarised}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _run(runs: int) -> dict[str, list[float]]:
    with systemd_host() as host:
        log(f"systemd host up in {host.boot_seconds:.1f} s ({host.state})")
        bench = Bench(host)
        try:
            bench.setup()
            bench.start_quayd()
            wait_until("quayd answering", bench.status, 30)
            return measure(bench, runs)
        finally:
            bench.stop_quayd()
            host.run(bench.podman("rm", "-a", "-f", "-t", "0"), check=False)
            host.run(bench.podman("system", "reset", "-f"), check=False, timeout=120)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
