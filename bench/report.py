"""docs/benchmarks.md from the results of ``python -m bench all`` (bench/suite.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

COMMAND = ".venv/bin/python -m bench all"
NOTES = Path(__file__).with_name("notes.md")
"""Reading of the numbers, by hand, appended to the report (checked against each full run)."""

X = "\u00d7"
"""The multiplication sign of the ratios."""
Table = dict[str, dict[str, Any]]
"""tool → {"p50", "p95", "runs"}."""


def _s(value: float) -> str:
    return "failed" if math.isnan(value) else f"{value:.3f}"


def _x(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}{X}"


def _table(rows: Table, peers: dict[str, str], unit: str = "s") -> list[str]:
    """A tool | p50 | p95 | runs | quay / this table; ``peers`` maps a peer row to its quay row."""
    out = [
        f"| tool | p50 {unit} | p95 {unit} | runs | quay / this |",
        "|------|------:|------:|-----:|------:|",
    ]
    for tool, item in rows.items():
        quay = peers.get(tool)
        ratio = _x(rows[quay]["p50"] / item["p50"]) if quay else ""
        out.append(
            f"| {tool} | {_s(item['p50'])} | {_s(item['p95'])} | {len(item['runs'])} | {ratio} |"
        )
    return out


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for each of issue 8's goals."""
    found: list[tuple[str, str, bool]] = []
    start = results["start"]
    r = start["quay"]["p50"] / start["podman"]["p50"]
    found.append(
        (
            f"start ≤ 0.33{X} podman (bridge), p50",
            f"{r:.2f}{X} ({start['quay']['p50']:.3f} s)",
            r <= 0.33,
        )
    )
    for scenario, tools in results["pull"]["scenarios"].items():
        r = tools["quay"]["p50"] / tools["podman"]["p50"]
        found.append((f"pull {scenario} ≤ 1.0{X} podman, p50", f"{r:.2f}{X}", r <= 1.0))
    scale = results["scale"]
    up = scale["tools"]
    r = up["quay"]["up"]["p50"] / up["podman loop"]["up"]["p50"]
    found.append(
        (
            f"{scale['units']} units running and ready ≤ 0.5{X} the podman loop, p50",
            f"{r:.2f}{X} ({up['quay']['up']['p50']:.1f} s vs "
            f"{up['podman loop']['up']['p50']:.1f} s)",
            r <= 0.5,
        )
    )
    top = results["footprint"]["idle"][-1]
    found.append(
        (
            f"idle CPU < 1 % of a core with {top['containers']} containers",
            f"{top['cpu_percent']:.2f} % ({top['cpu_s_per_min']:.2f} s/min)",
            top["cpu_percent"] < 1.0,
        )
    )
    found.append(
        (
            f"quayd RSS ≤ 60 MB with {top['containers']} containers",
            f"{top['rss_mib'] * 1.048576:.1f} MB ({top['rss_mib']:.1f} MiB)",
            top["rss_mib"] * 1.048576 <= 60.0,
        )
    )
    status = results["cold"]["quayctl status"]["p50"]
    found.append(("`quayctl status` ≤ 150 ms, p50", f"{status * 1000:.0f} ms", status <= 0.150))
    return found


def host_line(results: dict[str, Any]) -> str:
    """Which host the run used and its cgroup layout (runs before --this-host had no "host")."""
    host = results.get("host", {})
    layout = host.get("cgroup_fs", "")
    named = {"cgroup2fs": "cgroup v2 unified", "tmpfs": "cgroup v1 or hybrid"}.get(layout, "")
    cgroups = f"; `stat -fc %T /sys/fs/cgroup`: {layout} ({named})" if layout else ""
    if host.get("this_host"):
        return (
            "- Host: this machine's own systemd (`--this-host`, bench/hosts.py: systemd is PID 1 "
            f"here, no namespaces in between){cgroups}"
        )
    return (
        "- Host: one throwaway systemd host (`tests/support/systemd_host.py`: systemd as PID 1 "
        f"of new namespaces, on this machine's kernel and cgroup layout){cgroups}"
    )


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    quick = results["quick"]
    lines = [
        "# Benchmarks",
        "",
        "quay against its peers (podman, raw crun, skopeo + umoci), every scenario of issue 8, "
        "from one run of `python -m bench all`"
        + (
            " **--quick** (a smoke check: few runs, small counts; not the numbers to quote)"
            if quick
            else ""
        )
        + ". This file is written by "
        "that command; the code is in [bench/](../bench/) (`bench/suite.py`, the tables by "
        "`bench/report.py`). Times are wall-clock seconds; p50 is the median; a ratio is "
        "quay's p50 over the peer's p50 (below 1: quay is faster).",
        "",
        "## The machine and the run",
        "",
        f"- {m['date']}; {m['cores']} cores ({m['cpu']}), {m['memory']} RAM",
        f"- Debian {m['debian']}, kernel {m['kernel']}, cgroup {m['cgroup']}, Python {m['python']}",
        f"- {m['crun'].split(' version ')[0]} {m['crun'].split(' version ')[-1]}; {m['podman']}; "
        f"{m['skopeo']}; {m['umoci']}",
        f"- quay at commit {results['commit']}; the run took {results['wall_s'] / 60:.1f} min",
        host_line(results),
        "- quayd as a process there (`quayd --state-dir --config-dir --run-dir`), podman and "
        "crun there too with their storage in the host's state dir, the registry (Debian's "
        "docker-registry) on the host's own loopback. quay and the peers ran alternately "
        "(A B A B …) so drift hits all alike.",
        "",
        "### Reproduce",
        "",
        "```sh",
        "# as root on Debian 12 (installs podman, crun, skopeo, umoci, docker-registry, gcc);",
        "# --commit exports `git archive REV quayd` below /var/lib, which the host sees",
        "# (its /tmp is its own: a --source DIR must not be under /tmp, /run or /var/tmp)",
        f"{COMMAND} --commit HEAD           # a fixed commit; writes docs/benchmarks.md",
        f"{COMMAND} --quick --out /tmp/b.md # smoke check, under 2 minutes",
        f"{COMMAND} --render run.json       # the report again from a run's --json",
        "# where PID 1 is systemd: on this machine itself, no host in namespaces (bench/hosts.py)",
        f"{COMMAND} --this-host --quick --out /tmp/b.md",
        "```",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|------|---------:|-----|",
    ]
    for goal, measured, met in goals(results):
        lines.append(f"| {goal} | {measured} | {'yes' if met else '**no**'} |")
    lines += ["", *_start(results), "", *_pull(results), "", *_scale(results), ""]
    lines += [*_restart(results), "", *_footprint(results), "", *_profiles(results)]
    return "\n".join(lines).rstrip() + "\n"


def _start(results: dict[str, Any]) -> list[str]:
    start = results["start"]
    return [
        "## 1. Start: unit file written → container process running",
        "",
        "quay: the unit file renamed into the config dir; podman: `podman run -d`; crun: "
        "`crun --systemd-cgroup run -d` of the same busybox (`crun spec` defaults: no seccomp, "
        "empty network namespace), the floor. End: the container's command touched a file on a "
        "bind mount (its mtime, minus a timestamp taken right before the action, inside the "
        'host). `quay notify`: a unit with `[ready] mode = "notify"` whose container runs '
        '`sh -c "touch …; exec sd_notify READY=1 sleep 1000"` (tests/support/sd_notify.c, '
        "static): *running* as above, *ready* at quayd's `ready` log line. Each container is "
        "removed before the next run.",
        "",
        *_table(
            start,
            {"podman": "quay", "podman (host net)": "quay (host net)", "crun run": "quay"},
        ),
        "",
        "quay's *ready* for notify comes "
        f"{(start['quay notify: ready']['p50'] - start['quay notify: running']['p50']) * 1000:.0f}"
        " ms after its process ran (p50).",
    ]


def _pull(results: dict[str, Any]) -> list[str]:
    pull = results["pull"]
    lines = [
        "## 2. Pull",
        "",
        f"From docker-registry on the host's loopback (plain HTTP). cold-big: {pull['big_mb']} MB "
        "in 5 gzip layers (busybox + 4 layers of data that compresses about 2:1); cold-busybox: "
        "one layer; top-changed: the big image again where only the top layer changed (the "
        "other 4 already stored, pulled untimed first). Each run starts from an empty store. "
        "quay: `quayctl image pull` (process start included) with quayd running, which does the "
        "pull (one quayd for all the runs, its store emptied before each); quay (fresh quayd): "
        "the same against a quayd started for that run, whose first pull also loads its HTTP "
        "stack; quay --local: the same command pulling in its own process, as it does where no "
        "agent runs; quay (in-process): "
        "the pull alone, timed inside a process that has imported everything; podman: `podman "
        "pull` (overlay storage); skopeo+umoci: `skopeo copy docker://… oci:…` then "
        "`umoci unpack`.",
    ]
    for scenario, tools in pull["scenarios"].items():
        lines += ["", f"**{scenario}**", ""]
        lines += _table(tools, {"podman": "quay", "skopeo+umoci": "quay"})
    return lines


def _scale(results: dict[str, Any]) -> list[str]:
    scale = results["scale"]
    n = scale["units"]
    tools = scale["tools"]
    up = {tool: item["up"] for tool, item in tools.items()}
    gone = {tool: item["gone"] for tool, item in tools.items()}
    return [
        f"## 3. Scale: {n} containers",
        "",
        f"quay: {n} unit files (bridge network, `sleep`) renamed into the config dir at once → "
        "`quayctl status` shows all running and ready; then all deleted → units gone from "
        "status, their scopes gone and quayd's `removed` log line for each (its clean-up "
        f"done). podman: `podman run -d` {X}{n} in a shell loop (bridge) → "
        "the loop ended (all running: checked); then `podman rm -f -t 0 -a`.",
        "",
        "**all running**",
        "",
        *_table(up, {"podman loop": "quay"}),
        "",
        "**all removed**",
        "",
        *_table(gone, {"podman loop": "quay"}),
    ]


def _restart(results: dict[str, Any]) -> list[str]:
    return [
        "## 4. Restart: container crash → running again",
        "",
        "`kill -9` of the container's process (inside the host) → the next process of the same "
        "container ran (it writes a new `mktemp` file on a bind mount). quay: "
        '`[restart] policy = "always"`, `backoff = "0s"`; podman: `podman run -d '
        "--restart=always` (restarted by podman's own `container cleanup`, which conmon runs "
        "when the process exits).",
        "",
        *_table(results["restart"], {"podman": "quay"}),
    ]


def _footprint(results: dict[str, Any]) -> list[str]:
    fp = results["footprint"]
    lines = [
        "## 5. Footprint",
        "",
        f"quayd idle with N containers ({fp['network']} network, `sleep`), after the starts "
        f"settled, over {fp['idle'][0]['seconds']:.0f} s: CPU (utime + stime) and RSS from /proc, "
        "wake-ups = voluntary + involuntary context switches over all its threads; PSS "
        "counts shared pages divided among the processes mapping them, private only pages "
        "quayd alone maps (`/proc/PID/smaps_rollup`).",
        "",
        "| containers | CPU s / min | CPU % of a core | RSS MiB | PSS MiB | private MiB "
        "| wake-ups / s | threads |",
        "|-----------:|------:|------:|------:|------:|------:|------:|------:|",
    ]
    for item in fp["idle"]:
        lines.append(
            f"| {item['containers']} | {item['cpu_s_per_min']:.3f} | {item['cpu_percent']:.2f} | "
            f"{item['rss_mib']:.1f} | {item.get('pss_mib', 0):.1f} | "
            f"{item.get('private_mib', 0):.1f} | {item['wakeups_per_s']:.1f} | {item['threads']} |"
        )
    after = fp["after_adoption"]
    same = (
        "all the same PIDs"
        if not fp["changed_pids"]
        else (f"**{len(fp['changed_pids'])} new PIDs** ({', '.join(fp['changed_pids'][:8])}…)")
    )
    cold = results["cold"]
    lines += [
        "",
        f"**Adoption**: `kill -9` quayd with {fp['adopted_units']} containers running, start it "
        f"again → `status` shows all running: {fp['adoption_s']:.2f} s, {same}. Its RSS "
        f"afterwards: {after['rss_mib']:.1f} MiB.",
        "",
        "**Cold start**: quayd: process started "
        + (
            "(here: no nsenter) "
            if results.get("host", {}).get("this_host")
            else "(outside the host, through nsenter) "
        )
        + "→ its "
        "`agent ready` log line, no units. `quayctl status` against the running agent (table "
        "output) and `podman ps` (its nearest peer), timed inside the host.",
        "",
        *_table(cold, {"podman ps": "quayctl status"}),
    ]
    return lines


def _profiles(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Profiles: where the time and memory go",
        "",
        "Collected by the same run, for the goals (missed or met) that have a measurable inside.",
        "",
    ]
    if "start_profile" in results:
        lines += [
            "**Start** (5 more starts under a quayd with timers wrapped around the pieces of a "
            "start, `bench/agent.py`'s `PROFILED`, quayd's code untouched; medians; seconds after "
            "the rename):",
            "",
            "| piece | began at s | took s |",
            "|-------|-----:|-----:|",
        ]
        for label, item in results["start_profile"].items():
            lines.append(f"| {label} | {item['at_s']:.4f} | {item['took_s']:.4f} |")
        lines.append("")
    pull = results["pull"]
    for scenario, text in pull.get("profiles", {}).items():
        tools = pull["scenarios"][scenario]
        local = tools.get("quay --local", tools["quay"])["p50"]
        inside = tools["quay (in-process)"]["p50"]
        lines += [
            f"**Pull {scenario}**: `quayctl image pull` through quayd {tools['quay']['p50']:.3f} "
            f"s, with `--local` {local:.3f} s, the same pull inside a running process "
            f"{inside:.3f} s (so {local - inside:.3f} s is the standalone command's start-up and "
            "imports). cProfile of one cold pull in-process, by own time:",
            "",
            "```",
            text,
            "```",
            "",
        ]
    pip = results.get("pull_import_profile")
    if pip:
        tops = ", ".join(f"{name} {ms:.0f} ms" for name, ms in pip["top_imports_ms"].items())
        lines += [
            f"**The pull command's start-up**: a bare interpreter starts in "
            f"{pip['interpreter_s'] * 1000:.0f} ms; importing what `quayctl image pull` uses "
            f"(`{pip['modules']}`) takes it to {pip['imports_s'] * 1000:.0f} ms. Slowest "
            f"modules (own import time, `-X importtime`): {tops}.",
            "",
        ]
    scale = results["scale"]
    for run, item in enumerate(scale.get("quay_log", [])):
        if not item:
            continue
        lines.append(
            f"**Scale**, quay run {run + 1} (quayd's log, from the first start action): the "
            f"last start action at {item['last_action_s']:.2f} s; first container started at "
            f"{item['first_started_s']:.2f} s, last at {item['last_started_s']:.2f} s; action → "
            f"started p50 {item['action_to_started_p50_s']:.3f} s, max "
            f"{item['action_to_started_max_s']:.3f} s"
            + ("." if math.isnan(item["passes"]) else f"; {item['passes']:.0f} passes meanwhile.")
        )
    lines.append("")
    sp = results.get("scale_profile")
    if sp:
        lines += [
            f"**Scale under a profiled quayd** ({sp['units']} units, bridge: all running and "
            f"ready after {sp['up_s']:.1f} s; the `Executor.start` calls spanned "
            f"{sp['starts_window_s']:.1f} s). Timers around the pieces of a start (summed over "
            "all calls and threads, so overlapping pieces count twice):",
            "",
            "| piece | calls | sum s | p50 ms | max ms |",
            "|-------|------:|------:|------:|------:|",
        ]
        for label, item in sp["pieces"].items():
            lines.append(
                f"| {label} | {item['calls']} | {item['sum_s']:.2f} | "
                f"{item['p50_s'] * 1000:.1f} | {item['max_s'] * 1000:.1f} |"
            )
        lines.append("")
    mem = results["memory_profile"]
    idle = results["footprint"]["idle"]
    per = (
        (idle[-1]["rss_mib"] - idle[0]["rss_mib"]) / idle[-1]["containers"]
        if idle[-1]["containers"]
        else 0.0
    )
    packages = ", ".join(f"{name} {mib:.1f}" for name, mib in mem["by_package_mib"].items())
    lines += [
        "**Memory**: the bare interpreter is "
        f"{mem['interpreter_mib']:.1f} MiB; after importing quayd's modules (nothing run) "
        f"{mem['after_imports_mib']:.1f} MiB; quayd idle with 0 containers "
        f"{idle[0]['rss_mib']:.1f} MiB; each container adds {per * 1024:.0f} KiB "
        f"(0 → {idle[-1]['containers']}). What each top-level package adds to RSS, imported one "
        f"by one in quayd's import order and as quayd imports them (no `rich`; pyroute2's "
        f"rtnetlink modules only) (MiB): {packages}.",
        "",
    ]
    qp = results["quayctl_profile"]
    status = results["cold"]["quayctl status"]["p50"]
    tops = ", ".join(f"{name} {ms:.0f} ms" for name, ms in qp["top_imports_ms"].items())
    lines += [
        f"**quayctl status** ({status * 1000:.0f} ms): the bare interpreter starts in "
        f"{qp['interpreter_s'] * 1000:.0f} ms; importing `quayd.cli.quayctl` takes it to "
        f"{qp['imports_s'] * 1000:.0f} ms; the request and the table take the rest. "
        f"Slowest modules (own import time, `-X importtime`): {tops}.",
    ]
    if NOTES.exists():
        lines += ["", NOTES.read_text().rstrip()]
    return lines
