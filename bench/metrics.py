"""The cost of a metrics scrape: quayd's CPU per scrape with N running containers (issue 18).

    python -m bench.metrics [--units N] [--scrapes K] [--rounds R]

One throwaway systemd host; quayd with ``[metrics] listen = "127.0.0.1:9464"`` (the host's own
loopback) and N bridged ``sleep`` units, all running. Then, alternately: K scrapes in a row
(one client process inside the host, one connection per scrape, as Prometheus), and a quiet
window as long as those scrapes took. quayd's CPU (utime + stime of the process, every thread)
in each scrape window less that of the quiet window after it, divided by K, is the CPU a scrape
costs; the goal is 20 ms for 100 containers. Also: the size of one exposition, the scrape's
wall time as the client sees it, and the pass duration quayd reports about itself (the
snapshot the loop publishes is built in the pass). Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.agent import CLK_TCK, Bench, log, quay_unit, quayd_argv, sample, wait_until
from tests.support.systemd_host import systemd_host

LISTEN = "127.0.0.1:9464"
GOAL_MS = 20.0
CLIENT = """
import http.client, json, sys, time
count, walls, size = int(sys.argv[1]), [], 0
for _ in range(count):
    t0 = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", 9464, timeout=30)
    connection.request("GET", "/metrics", headers={"Accept": sys.argv[2]})
    size = len(connection.getresponse().read())
    connection.close()
    walls.append(time.perf_counter() - t0)
print(json.dumps({"walls": walls, "size": size}))
"""
"""Run inside the host: K scrapes, their wall times and the last exposition's size."""
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus 2.42 sends: it gets OpenMetrics."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.metrics", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with systemd_host() as host:
        log(f"systemd host up in {host.boot_seconds:.1f} s")
        bench = Bench(host)
        try:
            setup(bench)
            names = [f"mx{i:03d}" for i in range(args.units)]
            text = quay_unit(["sleep", "100000"])
            for name in names:
                bench.write_unit(name, text)
            wait_until(
                f"{args.units} running",
                lambda: sum(1 for n, u in bench.units().items()
                            if n in names and u["state"] == "running") == args.units,
                300, every=0.2,
            )  # fmt: skip
            time.sleep(3.0)  # the passes after the starts settle
            results = measure(bench, args.scrapes, args.rounds)
        finally:
            bench.stop_quayd()
    report(args.units, args.scrapes, results)
    return 0


def setup(bench: Bench) -> None:
    """The image loaded (no podman: only quayd is measured), quayd started with metrics on."""
    bench.config_dir.mkdir()
    bench.load_quay_image()
    settings = bench.root / "quayd.toml"
    settings.write_text(f'[metrics]\nlisten = "{LISTEN}"\n')
    bench.start_quayd([*quayd_argv(), "--config", str(settings)])
    wait_until("quayd answering", bench.status, 30)


def scrape(bench: Bench, count: int, accept: str) -> dict[str, object]:
    done = bench.host.run(["python3", "-c", CLIENT, str(count), accept], timeout=600)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def measure(bench: Bench, scrapes: int, rounds: int) -> dict[str, object]:
    assert bench.quayd_pid is not None
    pid = bench.quayd_pid
    per_scrape_ms: list[float] = []
    walls: list[float] = []
    size = 0
    for round_ in range(rounds):
        for accept in ("text/plain;version=0.0.4", PROMETHEUS_ACCEPT):
            before = sample(pid).cpu_ticks
            t0 = time.monotonic()
            found = scrape(bench, scrapes, accept)
            window = time.monotonic() - t0
            busy = sample(pid).cpu_ticks - before
            quiet_before = sample(pid).cpu_ticks
            time.sleep(window)
            quiet = sample(pid).cpu_ticks - quiet_before
            cost = (busy - quiet) / CLK_TCK / scrapes * 1000
            per_scrape_ms.append(cost)
            round_walls = [float(w) for w in found["walls"]]  # type: ignore[attr-defined]
            walls += round_walls
            size = max(size, int(str(found["size"])))
            log(
                f"round {round_ + 1} ({accept.split(';')[0].split('/')[1]}): {scrapes} scrapes in "
                f"{window:.2f} s: quayd {busy} ticks, quiet {quiet} ticks -> {cost:.1f} ms CPU "
                f"per scrape; wall p50 {statistics.median(round_walls) * 1000:.1f} ms"
            )
    exposition = bench.host.run(
        ["busybox", "wget", "-q", "-O", "-", f"http://{LISTEN}/metrics"]
    ).stdout
    passes = [
        line for line in exposition.splitlines()
        if line.startswith("quay_agent_pass_duration_seconds_")
        and ("_sum" in line or "_count" in line)
    ]  # fmt: skip
    values = {line.split()[0]: float(line.split()[1]) for line in passes}
    count = values.get("quay_agent_pass_duration_seconds_count", 0.0)
    total = values.get("quay_agent_pass_duration_seconds_sum", 0.0)
    return {
        "per_scrape_ms": per_scrape_ms,
        "walls_ms": [w * 1000 for w in walls],
        "size": size,
        "series": sum(1 for line in exposition.splitlines() if line and line[0] != "#"),
        "pass_mean_ms": total / count * 1000 if count else float("nan"),
        "passes": int(count),
    }


def report(units: int, scrapes: int, results: dict[str, object]) -> None:
    costs = [float(v) for v in results["per_scrape_ms"]]  # type: ignore[attr-defined]
    walls = sorted(float(v) for v in results["walls_ms"])  # type: ignore[attr-defined]
    median = statistics.median(costs)
    print(f"\n{units} containers, {scrapes} scrapes per window ({time.strftime('%H:%M %Z')})")
    print(
        f"quayd CPU per scrape: p50 {median:.1f} ms (windows: "
        f"{', '.join(f'{c:.1f}' for c in costs)}); goal {GOAL_MS:.0f} ms: "
        f"{'met' if median <= GOAL_MS else 'NOT met'}"
    )
    print(
        f"scrape wall time: p50 {statistics.median(walls):.1f} ms, max {walls[-1]:.1f} ms; "
        f"{results['series']} series, {int(str(results['size'])) / 1024:.0f} KiB"
    )
    print(f"pass duration (quayd's own histogram): mean {results['pass_mean_ms']:.1f} ms over "
          f"{results['passes']} passes")  # fmt: skip


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
