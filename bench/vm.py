"""``python -m bench all`` in the VM test host: a Debian 12 guest, systemd as PID 1, cgroup v2.

    python -m bench vm [--quick] [--units N] [--out PATH] [--json PATH]

Finds or builds the guest image (tests/support/vm_image.py: its packages include everything the
bench runs, since the guest reaches no network), installs quay in it as a user does
(tests/support/vm_install.py: the checkout's wheels, the venv /opt/quay, ``quayd`` enabled; from
the cached installed layer), boots a guest from that and stops the packaged quayd (the bench runs
quayd itself, and two agents would share the bridge and the ruleset). Then it copies the
checkout's ``bench/``, ``tests/``'s support files, ``examples/`` and ``quayd/`` to
:data:`GUEST_CHECKOUT`, and the bench's own Python dependencies (``tests/support`` imports pytest
and cryptography, which quay's venv has not) to a directory on the bench's ``sys.path`` only (not
on ``PYTHONPATH``: quayd and quayctl start as they would anyway). It runs
``python -m bench all --this-host`` there with quay's venv Python (podman, crun and quay side by
side on the guest's own systemd), copies the report back (``docs/benchmarks-vm.md``), and appends
what the driver measured: the image (built or cached), the install layer, boot to ssh.

Under TCG (no usable KVM here) the guest is several times slower than the machine: the absolute
numbers are the emulator's; the ratios to podman in the same guest are the point.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.agent import log
from bench.suite import commit_of
from tests.support import vm_image, vm_install
from tests.support.systemd_host import REPO
from tests.support.vm_host import GUEST_PYTHON, VmHost, machine_scratch, vm_host

OUT = REPO / "docs" / "benchmarks-vm.md"
GUEST_CHECKOUT = "/root/quay-bench"
GUEST_DEPS = f"{GUEST_CHECKOUT}/.deps"
BENCH_DEPS = ("pytest", "cryptography")
"""What bench/ imports beyond quay's own dependencies (through tests/support)."""
COPIED = ("bench/", "tests/support/", "examples/", "quayd/")
"""The checkout's parts the bench uses in the guest (tests/__init__.py too)."""
LAUNCH = (
    "import runpy, sys; sys.path.append({deps!r}); "
    "runpy.run_module('bench', run_name='__main__', alter_sys=True)"
)
"""``python -c`` that runs ``python -m bench`` with the bench's dependencies on its path alone."""
RUN_TIMEOUT = 4 * 3600.0


def bench_wheels(directory: Path) -> None:
    """Wheels of :data:`BENCH_DEPS` (and theirs) from PyPI, on the machine."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
         "-w", str(directory), *BENCH_DEPS],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel {' '.join(BENCH_DEPS)} failed:\n{done.stderr}")


def stage_checkout(staging: Path) -> None:
    """The checkout's files the bench uses (:data:`COPIED`), as they are now, into ``staging``."""
    for name in vm_install.source_files():
        if name.startswith(COPIED) or name == "tests/__init__.py":
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)


def copy_bench(host: VmHost, deps: Path) -> None:
    """The checkout's bench, test support, examples and quayd to GUEST_CHECKOUT; the bench's
    dependencies installed into GUEST_DEPS from ``deps`` (the guest has no index to reach)."""
    host.run(["rm", "-rf", GUEST_CHECKOUT])
    with machine_scratch() as staging:
        stage_checkout(staging)
        host.copy_in(staging, GUEST_CHECKOUT)
    # compiled once before the run, as the checkout on the machine is: every quayd and quayctl
    # the bench starts would compile its modules again otherwise
    host.run([GUEST_PYTHON, "-m", "compileall", "-q", GUEST_CHECKOUT], timeout=900)
    host.copy_in(deps, f"{GUEST_CHECKOUT}/.wheels")
    host.run(
        [GUEST_PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
         "--find-links", f"{GUEST_CHECKOUT}/.wheels", "--target", GUEST_DEPS, *BENCH_DEPS],
        timeout=900,
    )  # fmt: skip


def run_bench(host: VmHost, options: list[str]) -> int:
    """``python -m bench all --this-host OPTIONS`` in the guest, its output streamed here."""
    argv = [GUEST_PYTHON, "-c", LAUNCH.format(deps=GUEST_DEPS), "all", "--this-host", *options]
    command = f"cd {GUEST_CHECKOUT} && {shlex.join(argv)}"
    done = subprocess.run(
        [*host.ssh(), command], stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT, check=False
    )
    return done.returncode


def driver_section(times: dict[str, Any]) -> str:
    """What the driver measured, appended to the guest's report."""
    lines = [
        "",
        "## The guest (`python -m bench vm`)",
        "",
        f"quay on the machine: {times['commit']} (its tree copied into the guest). "
        "The run above is `python -m bench all --this-host` in the VM test host "
        "(tests/support/vm_host.py): Debian 12's kernel and systemd, cgroup v2 unified, "
        f"{times['cpus']} vCPUs and {times['memory_mib']} MiB under qemu with "
        f"`-accel {times['accel']}`. The driver's own times, on the machine:",
        "",
        "| step | seconds |",
        "|------|--------:|",
        f"| guest image ({times['image_state']}) | {times['image_s']:.1f} |",
        f"| wheels of the checkout | {times['wheels_s']:.1f} |",
        f"| installed layer ({times['layer_state']}) | {times['layer_s']:.1f} |",
        f"| boot to ssh | {times['boot_s']:.1f} |",
        f"| copying the bench in, its dependencies installed | {times['copy_s']:.1f} |",
        f"| `bench all --this-host` in the guest | {times['bench_s']:.1f} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench vm", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="bench all --quick in the guest")
    parser.add_argument("--units", type=int, help="bench all --units N in the guest")
    parser.add_argument("--out", type=Path, default=OUT, help="the report (docs/benchmarks-vm.md)")
    parser.add_argument("--json", type=Path, help="also the raw results here")
    args = parser.parse_args(argv)
    from tests.support import vm_host as vm  # noqa: PLC0415 (its accelerator, for the report)

    reason = vm.unavailable_reason()
    if reason is not None:
        print(f"bench vm: cannot boot the guest: {reason}", file=sys.stderr)
        return 2
    times: dict[str, Any] = {
        "commit": commit_of(None, None),
        "accel": vm.accelerator()[0],
        "cpus": vm.CPUS,
        "memory_mib": vm.MEMORY_MIB,
    }
    cached = vm_image.cached_image() is not None
    started = time.monotonic()
    image = vm_image.ensure_image(log=True)
    times["image_s"] = time.monotonic() - started
    times["image_state"] = "cached" if cached else "built cold"
    log(f"guest image {times['image_state']} in {times['image_s']:.1f} s: {image.directory}")
    with machine_scratch() as wheels, machine_scratch() as deps:
        times["wheels_s"] = vm_install.build_wheels(wheels)
        bench_wheels(deps)
        key = vm_install.wheels_key(wheels)[:32]
        had_layer = (image.directory / f"installed-{key}.qcow2").is_file()
        started = time.monotonic()
        layer = vm_install.installed_layer(image, wheels)
        times["layer_s"] = time.monotonic() - started
        times["layer_state"] = "cached" if had_layer else "made: a boot and the install"
        log(f"installed layer {times['layer_state']} in {times['layer_s']:.1f} s")
        with vm_host(image=image, base=layer) as host:
            times["boot_s"] = host.boot_seconds
            log(f"guest up: ssh after {host.boot_seconds:.1f} s")
            host.systemctl("stop", "quayd.service")
            started = time.monotonic()
            copy_bench(host, deps)
            times["copy_s"] = time.monotonic() - started
            report, raw = f"{GUEST_CHECKOUT}/report.md", f"{GUEST_CHECKOUT}/report.json"
            options = ["--out", report, "--json", raw, *(["--quick"] if args.quick else [])]
            options += ["--units", str(args.units)] if args.units else []
            started = time.monotonic()
            code = run_bench(host, options)
            times["bench_s"] = time.monotonic() - started
            if code != 0:
                print(f"bench vm: bench all in the guest exited {code}", file=sys.stderr)
                return code
            text = host.read_file(report)
            if text is None:
                print(f"bench vm: the guest wrote no {report}", file=sys.stderr)
                return 1
            args.out.write_text(text.rstrip("\n") + "\n" + driver_section(times))
            if args.json:
                args.json.write_text(host.read_file(raw) or "")
    log(f"wrote {args.out}")
    return 0
