"""Unavailability during an image update of a unit ready on tcp, per strategy, beside podman.

    python -m bench update [--runs N] [--quick] [--this-host] [--commit REV] [--out PATH]
                           [--json PATH]

The issue's measure: the milliseconds between the old version's last answered request and the
new version's first, for each of quay's ``[update] strategy`` values (``download-then-replace``,
``replace-then-download``, ``stop-then-download``) and for ``podman auto-update`` on the same
image with the same probe. Numbers beside the peer, no goal, no assertions.

Where: a throwaway systemd host (tests.support.systemd_host), or this machine's own systemd with
``--this-host`` (bench/hosts.py: in a booted VM guest). A docker-registry runs inside the host on
127.0.0.1:5000 (bench.suite.host_registry); image version N is busybox plus a file ``/version``
holding N (tests.support.images, as the e2e Registry.push builds them), pushed with ``skopeo
copy`` as ``bench/REPO:latest``, one repository per tool. Every container runs ``busybox httpd
-f -p 8080 -h /`` published on a host port of its own.

* **quay**: quayd (the bench's, bench.agent.Bench) with a settings file that puts the scheduled
  update check a day away, so only ``quayctl update NAME`` updates; the unit is ready on tcp
  (``[ready] mode = "tcp"``, as tests/e2e/test_agent_updates.py's unavailability test).
* **podman**: the container created with ``--label io.containers.autoupdate=registry`` (and
  ``--init`` with tini, as quay's containers run under tini: without it httpd, PID 1, ignores
  SIGTERM and every stop waits 10 s for SIGKILL), its unit made by ``podman generate systemd
  --new`` into /run/systemd/system and started; ``podman auto-update`` pulls the new image and
  restarts the unit. podman's storage, tmp dir and insecure registry are set with
  CONTAINERS_STORAGE_CONF / CONTAINERS_CONF / CONTAINERS_REGISTRIES_CONF (``generate -e`` writes
  them into the unit too) rather than ``--root``/``--runroot``: the generated unit's ExecStop and
  ExecStopPost drop those flags, and would act on /var/lib/containers, the machine's own.

One run: the next version pushed, then a probe started inside the host
(tests/support/version_probe.py: a GET of ``/version`` over and over, 0.5 s timeout, 5 ms
pause after a failure, printing when each request began and what it got), 1 s later the
update asked for (``quayctl update NAME`` / ``podman auto-update``, timed inside the host),
and the probe stops 1 s after its first answer from the new version. The gap (:func:`gap`):
the first new answer's start minus the start of the last old answer before it, and the failed
requests between. Runs alternate the four tools; each goes from the version it runs to the next.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench import agent, suite
from bench.agent import RUN_DIR, Bench, log, percentile, wait_until
from bench.hosts import BenchHost, LocalHostError, cgroup_fs, local_host, local_refusal
from tests.support.systemd_host import systemd_host
from tests.support.version_probe import PROBE

STRATEGIES = ("download-then-replace", "replace-then-download", "stop-then-download")
PODMAN = "podman auto-update"
TOOLS = (*STRATEGIES, PODMAN)
PORTS = {tool: 18101 + index for index, tool in enumerate(TOOLS)}
"""Each tool's published host port (the host's loopback; nothing else listens there)."""
NAMES = {tool: "upd-" + "".join(word[0] for word in tool.split("-")) for tool in STRATEGIES}
NAMES[PODMAN] = "upd-podman"
"""Each tool's unit or container name, and its repository below ``bench/``."""
PACKAGES = {
    **{cmd: suite.PACKAGES[cmd] for cmd in ("podman", "crun", "skopeo", "docker-registry")},
    "busybox": "busybox-static",  # the images' binary
    "tini-static": "tini",  # quay's containers' init, and podman's --init here
}
"""Command → Debian package: what the run needs (bench.suite.ensure_packages installs them)."""
INIT = "/usr/bin/tini-static"
DEBIAN_VERSION = Path("/etc/debian_version")
SETTINGS = '[updates]\ncheck_interval = "24h"\njitter = "0s"\n'
"""quayd's settings (``--config``): no scheduled update check during the run."""
REGISTRIES_CONF = '[[registry]]\nlocation = "{address}"\ninsecure = true\n'
STORAGE_CONF = '[storage]\ndriver = "overlay"\ngraphroot = "{root}"\nrunroot = "{runroot}"\n'
CONTAINERS_CONF = '[engine]\ntmp_dir = "{tmpdir}"\n'
PROBE_SECONDS = 60.0
"""The probe's deadline: far beyond any update here (it stops 1 s after the new version)."""


TIMED = """\
import subprocess, sys, time
t0 = time.monotonic()
done = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, text=True)
t1 = time.monotonic()
sys.stderr.write(done.stdout + done.stderr)
print(f"{t0:.4f} {t1:.4f} {done.returncode}")
"""
"""Run inside the host: the update command, timed on the probe's clock (CLOCK_MONOTONIC)."""


# --- the probe's lines → the gap (pure) -----------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    last_old: float
    """When the last request the old version answered began (the probe's monotonic clock)."""
    first_new: float
    """When the first request the new version answered began."""
    failed: int
    """Requests between the two that got no version (refused, timed out, another answer)."""

    @property
    def ms(self) -> float:
        return (self.first_new - self.last_old) * 1000


def parse_probe(lines: Iterable[str]) -> list[tuple[float, str]]:
    """The probe's ``TIME ANSWER`` lines as (time, answer); blank lines are skipped."""
    answers = []
    for line in lines:
        if line.strip():
            at, _, answer = line.strip().partition(" ")
            answers.append((float(at), answer.strip() or "-"))
    return answers


def gap(lines: Iterable[str], old: str, new: str) -> Gap:
    """The unavailability the probe saw: from the last answer ``old`` before the first answer
    ``new`` to that first one, and the failed requests between. ValueError when the probe never
    saw the new version, or no old one before it (the update was not what it measured)."""
    answers = parse_probe(lines)
    first_new = min((at for at, answer in answers if answer == new), default=None)
    if first_new is None:
        raise ValueError(f"the probe never got version {new!r} ({len(answers)} requests)")
    last_old = max((at for at, answer in answers if answer == old and at < first_new), default=None)
    if last_old is None:
        raise ValueError(f"the probe got no version {old!r} before {new!r}")
    failed = sum(1 for at, answer in answers if last_old < at < first_new)
    return Gap(last_old, first_new, failed)


# --- images, pushed into the host's registry ----------------------------------------------------


def build_layout(directory: Path, name: str, version: int, payload_mb: int = 0) -> Path:
    """``name``'s version ``version``: an OCI layout of one layer (busybox, /version, and
    ``payload_mb`` MiB of random bytes at /payload), built once below ``directory``."""
    # imported here: the unit tests import this module's pure part without the image builders
    from quayd.images.model import Platform  # noqa: PLC0415
    from tests.support.images import Layer, OciLayout, busybox_entries, file  # noqa: PLC0415

    root = directory / f"{name}-v{version}"
    if not (root / "index.json").exists():
        layout = OciLayout(root)
        entries = [
            *busybox_entries(),
            file("version", f"{version}\n".encode()),
            # each tool's layer its own: quay's store shares blobs between units, and one
            # strategy's download must not be done already by another's
            file("image", f"{name} {version}\n".encode()),
        ]
        if payload_mb:
            entries.append(file("payload", os.urandom(payload_mb << 20)))  # incompressible
        descriptor, _ = layout.image([Layer.of(entries)], Platform.host())
        layout.tag(descriptor, "latest")
    return root


def layout_mb(layout: Path) -> float:
    """The layout's blobs (compressed layer, config, manifest) in MB: what an update downloads."""
    return (
        sum(blob.stat().st_size for blob in (layout / "blobs").rglob("*") if blob.is_file()) / 1e6
    )


def push(host: BenchHost, layout: Path, reference: str, home: Path) -> None:
    host.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:latest",
         f"docker://{reference}"],
        env={"HOME": str(home)},  # skopeo's own files stay in the bench's state dir
        timeout=120,
    )  # fmt: skip


FETCH = """\
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())
except OSError:
    pass
"""
"""``/version`` once, or nothing (a timeout with busybox wget's ``-T`` crashes its 1.35)."""


def served(host: BenchHost, port: int) -> str:
    url = f"http://127.0.0.1:{port}/version"
    return host.run(["/usr/bin/python3", "-c", FETCH, url], check=False).stdout.strip()


def serves(host: BenchHost, port: int, version: str) -> bool:
    return served(host, port) == version


def timed(host: BenchHost, argv: list[str], timeout: float = 300.0) -> tuple[float, float, str]:
    """(start, end) of ``argv`` inside the host on the probe's clock, and its output."""
    done = host.run(["/usr/bin/python3", "-c", TIMED, *argv], timeout=timeout)
    t0, t1, code = done.stdout.split()
    if code != "0":
        raise RuntimeError(f"{argv} exited {code}: {done.stderr}")
    return float(t0), float(t1), done.stderr


# --- the tools ----------------------------------------------------------------------------------


@dataclass
class Quay:
    bench: Bench

    def deploy(self, strategy: str, image: str) -> None:
        port = PORTS[strategy]
        text = (
            f'[container]\nimage = "{image}"\n'
            'command = ["busybox", "httpd", "-f", "-p", "8080", "-h", "/"]\n'
            f'[network]\nports = ["{port}:8080"]\n'
            '[ready]\nmode = "tcp"\nport = 8080\ntimeout = "10s"\n'
            f'[update]\npolicy = "registry"\nstrategy = "{strategy}"\n'
        )
        self.bench.write_unit(NAMES[strategy], text)

    def update(self, strategy: str) -> list[str]:
        return [*agent.quayctl_argv(), "--run-dir", RUN_DIR, "update", NAMES[strategy]]

    def remove(self) -> None:
        names = [
            NAMES[s] for s in STRATEGIES if (self.bench.config_dir / f"{NAMES[s]}.toml").exists()
        ]
        if names and self.bench.quayd is not None:
            self.bench.delete_units(names)


@dataclass
class Podman:
    """podman with its storage, tmp dir and registries from config files in the bench's dir."""

    host: BenchHost
    directory: Path
    address: str
    units: list[Path]

    def env(self) -> dict[str, str]:
        return {
            "CONTAINERS_STORAGE_CONF": str(self.directory / "storage.conf"),
            "CONTAINERS_CONF": str(self.directory / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.directory / "registries.conf"),
        }

    def configure(self) -> None:
        self.directory.mkdir(parents=True)
        runroot = agent.PODMAN_RUNROOT  # /run/bench-podman*: removed by --this-host's clean-up
        (self.directory / "storage.conf").write_text(
            STORAGE_CONF.format(root=self.directory / "storage", runroot=runroot)
        )
        (self.directory / "containers.conf").write_text(
            CONTAINERS_CONF.format(tmpdir=f"{runroot}-tmp")
        )
        (self.directory / "registries.conf").write_text(
            REGISTRIES_CONF.format(address=self.address)
        )

    def run(self, *args: str, timeout: float = 120.0) -> str:
        return self.host.run(["podman", *args], env=self.env(), timeout=timeout).stdout

    def argv(self, *args: str) -> list[str]:
        """``podman ARGS`` with its environment, for :func:`timed`."""
        return ["env", *(f"{k}={v}" for k, v in self.env().items()), "podman", *args]

    def deploy(self, image: str) -> None:
        name, port = NAMES[PODMAN], PORTS[PODMAN]
        self.run("pull", "-q", image)
        self.run(
            "create", "--name", name, "--label", "io.containers.autoupdate=registry",
            "--init", "--init-path", INIT, "-p", f"{port}:8080",
            image, "busybox", "httpd", "-f", "-p", "8080", "-h", "/",
        )  # fmt: skip
        unit_text = self.run(
            "generate", "systemd", "--new", "--name", "--no-header",
            *(f"-e={k}={v}" for k, v in self.env().items()), name,
        )  # fmt: skip
        self.run("rm", name)  # the unit creates its own (--new)
        unit = Path("/run/systemd/system") / f"container-{name}.service"
        staged = self.directory / unit.name  # /run is the host's own: written from inside
        staged.write_text(unit_text)
        self.units.append(unit)
        self.host.run(["cp", str(staged), str(unit)])
        self.host.systemctl("daemon-reload")
        self.host.systemctl("start", unit.name)

    def remove(self) -> None:
        for unit in self.units:
            self.host.systemctl("stop", unit.name, check=False)
            self.host.run(["rm", "-f", str(unit), f"/run/{unit.name}.ctr-id"], check=False)
        if self.units:
            self.host.systemctl("daemon-reload", check=False)
        if (self.directory / "storage.conf").exists():
            for args in (["rm", "-a", "-f", "-t", "0"], ["system", "reset", "-f"]):
                self.host.run(["podman", *args], env=self.env(), check=False, timeout=120)


# --- the run --------------------------------------------------------------------------------------


def one_update(host: BenchHost, tool: str, version: int, trigger: list[str]) -> dict[str, Any]:
    """Probe ``tool``'s port while ``trigger`` updates it from ``version`` to the next."""
    port = PORTS[tool]
    out: list[str] = []

    def probe() -> None:
        done = host.run(
            ["/usr/bin/python3", "-c", PROBE, str(port), str(PROBE_SECONDS), str(version + 1)],
            timeout=PROBE_SECONDS + 30,
        )
        out.extend(done.stdout.splitlines())

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(1.0)  # old answers first
    try:
        t0, t1, said = timed(host, trigger)
    finally:
        prober.join()
    seen = gap(out, str(version), str(version + 1))
    return {
        "gap_ms": seen.ms,
        "failed": seen.failed,
        "requests": len(out),
        "command_s": t1 - t0,
        "new_after_s": seen.first_new - t0,
        "output": said.strip(),
    }


def measure(
    host: BenchHost, quay: Quay, podman: Podman, address: str, *, runs: int, about: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    images = host.state_dir / "images"
    home = host.state_dir / "home"
    home.mkdir()
    reference = {tool: f"{address}/bench/{NAMES[tool]}:latest" for tool in TOOLS}
    log("images: building v1 and pushing it for each tool")
    payload: int = about["payload_mb"]
    for tool in TOOLS:
        first = build_layout(images, NAMES[tool], 1, payload)
        push(host, first, reference[tool], home)
    about["image_mb"] = layout_mb(first)
    for strategy in STRATEGIES:
        quay.deploy(strategy, reference[strategy])
    podman.deploy(reference[PODMAN])
    for tool in TOOLS:
        port = PORTS[tool]
        wait_until(f"{tool}: v1 answering", partial(serves, host, port, "1"), 120, 0.1)
    results: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    for run in range(runs):
        version = run + 1
        for tool in TOOLS:
            push(
                host, build_layout(images, NAMES[tool], version + 1, payload), reference[tool], home
            )
            trigger = podman.argv("auto-update") if tool == PODMAN else quay.update(tool)
            result = one_update(host, tool, version, trigger)
            results[tool].append(result)
            log(
                f"run {run + 1}/{runs} {tool}: {result['gap_ms']:.0f} ms unavailable, "
                f"{result['failed']} failed requests; the command took {result['command_s']:.2f} s"
                f" ({result['output'].splitlines()[-1] if result['output'] else ''})"
            )
    return results


def summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    def p50(tool: str, key: str) -> float:
        return percentile([float(r[key]) for r in results[tool]], 0.5)

    podman = p50(PODMAN, "gap_ms")
    return {
        tool: {
            "runs": len(values),
            "p50_ms": p50(tool, "gap_ms"),
            "max_ms": max(float(r["gap_ms"]) for r in values),
            "failed_p50": p50(tool, "failed"),
            "p50_over_podman": p50(tool, "gap_ms") / podman if podman else float("nan"),
            "command_p50_s": p50(tool, "command_s"),
            "new_after_p50_s": p50(tool, "new_after_s"),
        }
        for tool, values in results.items()
    }


def report(summarised: dict[str, dict[str, float]], about: dict[str, Any]) -> str:
    lines = [
        "# Unavailability during an update of a unit ready on tcp",
        "",
        f"{about['date']}: quayd {about['commit']}; {about['host']} (/sys/fs/cgroup: "
        f"{about['cgroup_fs']}), {about['cores']} cores, {about['platform']}, {about['podman']}; "
        f"load average {about['load_before']} before the run, {about['load_after']} after; "
        f"each image {about['image_mb']:.1f} MB (busybox, /version"
        + (f", {about['payload_mb']} MiB of random bytes)" if about["payload_mb"] else ")")
        + (f"; {about['note']}" if about.get("note") else ""),
        "",
        "`python -m bench update` (bench/update.py): each unit or container serves its image's "
        "/version with `busybox httpd`, published on a host port; a probe inside the host GETs "
        "it over and over (0.5 s timeout, 5 ms pause after a failure) while the update runs. "
        "Unavailable: from the start of the last request the old version answered to the start "
        "of the first the new one answered; failed: the requests between. Command: how long "
        "`quayctl update NAME` / `podman auto-update` took (quayctl returns once the agent has "
        "taken the update on, answering `updating OLD to NEW`; podman once systemd has restarted "
        "the unit); new answered: from that command's start to the new version's first answer, "
        "the update's whole duration as a client sees it.",
        "",
        "| strategy / tool | runs | p50 ms | max ms | failed requests p50 | p50 / podman "
        "auto-update | command p50 s | new answered p50 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tool, numbers in summarised.items():
        name = f"quay `{tool}`" if tool in STRATEGIES else f"`{tool}`"
        lines.append(
            f"| {name} | {numbers['runs']:.0f} | {numbers['p50_ms']:.0f} | "
            f"{numbers['max_ms']:.0f} | {numbers['failed_p50']:.0f} | "
            f"{numbers['p50_over_podman']:.2f}x | {numbers['command_p50_s']:.2f} | "
            f"{numbers['new_after_p50_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench update",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 4)[4],
    )
    parser.add_argument("--runs", type=int, help="updates per tool (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="2 runs: a smoke check")
    parser.add_argument("--commit", help="measure quayd as it is at this commit (git archive)")
    parser.add_argument(
        "--this-host",
        action="store_true",
        help="on this machine's own systemd (PID 1 must be systemd: a VM guest) instead of a "
        "throwaway systemd host in namespaces",
    )
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--payload-mb",
        type=int,
        default=0,
        help="MiB of random bytes added to each image (default 0: busybox and /version only)",
    )
    parser.add_argument("--agent-log", type=Path, help="keep a copy of quayd's log here")
    parser.add_argument("--note", help="a remark for the report's header line (a busy machine)")
    args = parser.parse_args(argv)
    runs: int = args.runs or (2 if args.quick else 5)
    if args.this_host and (reason := local_refusal()) is not None:
        print(f"bench update: {reason}", file=sys.stderr)  # before installing anything
        return 2
    suite.ensure_packages(PACKAGES)
    about: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": suite.commit_of(args.commit, None),
        "cores": os.cpu_count(),
        # not suite.machine(): its `podman --version` here makes /var/lib/containers/storage
        "platform": f"kernel {platform.release()}, Debian {DEBIAN_VERSION.read_text().strip()}",
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "note": args.note,
        "payload_mb": args.payload_mb,
    }
    with contextlib.ExitStack() as stack:
        if args.commit:
            agent.SOURCE[0] = agent.export_commit(stack, args.commit)
        try:
            results = _run(runs, this_host=args.this_host, about=about, agent_log=args.agent_log)
        except LocalHostError as error:
            print(f"bench update: {error}", file=sys.stderr)
            return 2
    about["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summarised = summary(results)
    text = report(summarised, about)
    print(text)
    if args.out:
        args.out.write_text(text)
        log(f"wrote {args.out}")
    if args.json:
        document = {"about": about, "runs": results, "summary": summarised}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _run(
    runs: int, *, this_host: bool, about: dict[str, Any], agent_log: Path | None
) -> dict[str, list[dict[str, Any]]]:
    hosting: contextlib.AbstractContextManager[BenchHost] = (
        local_host() if this_host else systemd_host()
    )
    with hosting as host:
        about["host"] = suite.HOST_KINDS[this_host]
        about["cgroup_fs"] = cgroup_fs(host)
        log(f"{about['host']} up in {host.boot_seconds:.1f} s ({about['cgroup_fs']})")
        bench = Bench(host)
        bench.config_dir.mkdir()
        settings = bench.root / "quayd.toml"
        settings.write_text(SETTINGS)
        with suite.host_registry(host, bench.root / "registry") as address:
            quay = Quay(bench)
            podman = Podman(host, bench.root / "podman-conf", address, [])
            podman.configure()
            about["podman"] = podman.run("--version").strip()  # even this makes storage dirs
            try:
                bench.start_quayd(extra=["--config", str(settings)])
                wait_until("quayd answering", bench.status, 30)
                return measure(host, quay, podman, address, runs=runs, about=about)
            finally:
                if agent_log and bench.agent_log.exists():
                    shutil.copyfile(bench.agent_log, agent_log)
                with _logged("removing quay's units"):
                    quay.remove()
                bench.stop_quayd()
                with _logged("removing podman's unit and containers"):
                    podman.remove()


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """Clean-up goes on after a failed step (the rest still has to go); the failure is said."""
    try:
        yield
    except Exception as error:  # any failure: said, and the clean-up goes on
        log(f"{what} failed: {error}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
