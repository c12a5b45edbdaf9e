"""Pull benchmark: quay vs podman vs skopeo + umoci, from one local registry, in one run.

    python -m bench pull [--runs N] [--quick]

Scenarios (each tool starts from an empty store for the cold ones):
  cold-big      a ~100 MB, 5-layer gzip image
  cold-busybox  a one-layer busybox-static image
  top-changed   the big image again, where only the top layer changed (4 layers already stored)

Runs alternate between the tools (A B C A B C ...) so drift on the machine hits all of them alike.
Prints median and p95 wall-clock seconds and quay/peer ratios. Numbers, not assertions.
"quay" is the ``quayctl image pull`` command, process start-up included; "quay-in-agent" is the
same pull inside a running process, as the agent does it (the ratios use the command).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.registry import running_registry
from tests.support.systemd_host import REPO

ROOT = Path(__file__).resolve().parents[1]
QUAYCTL: list[str] = []
"""Set by :func:`install_quay`: quay as a user installs it (no dev tools, no editable finder)."""
MB = 1024 * 1024


def install_quay(work: Path) -> None:
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
    venv = work / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
    )
    QUAYCTL[:] = [str(venv / "bin" / "quayctl")]


# --- building images -----------------------------------------------------------------------------


def _layer(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith("busybox") else 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _mixed(size: int, seed: int) -> bytes:
    """Data that compresses about 2:1, like binaries and libraries do."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 12)) for _ in range(4096)]
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(512) if rng.random() < 0.4 else b" ".join(rng.choices(words, k=64))
    return bytes(out[:size])


def write_oci_layout(directory: Path, tag: str, layers: list[bytes]) -> None:
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    compressed, diff_ids = [], []
    for layer in layers:
        diff_ids.append("sha256:" + hashlib.sha256(layer).hexdigest())
        compressed.append(put(gzip.compress(layer, compresslevel=6, mtime=0)))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/busybox", "sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_digest, config_size = put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}
                for d, s in compressed
            ],
        }
    ).encode()
    manifest_digest, manifest_size = put(manifest)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest_digest,
                        "size": manifest_size,
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            }
        )
    )


def push(
    layout: Path, tag: str, target: str, run: Callable[[list[str]], object] | None = None
) -> None:
    """``skopeo copy`` the layout's ``tag`` to ``target``; ``run`` runs the command (default: here,
    checked; ``python -m bench all`` runs it inside its systemd host, where the registry is)."""
    command = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
               f"docker://{target}"]  # fmt: skip
    if run is None:
        subprocess.run(command, check=True)
    else:
        run(command)


def build_images(
    work: Path, registry: str, big_mb: int, run: Callable[[list[str]], object] | None = None
) -> dict[str, str]:
    busybox = Path("/bin/busybox").read_bytes()
    per_layer = big_mb * MB // 5
    big = [_layer({"bin/busybox": busybox})] + [
        _layer({f"data/layer{i}.bin": _mixed(per_layer, seed=i)}) for i in range(1, 5)
    ]
    top_changed = [*big[:4], _layer({"data/layer4.bin": _mixed(per_layer, seed=99)})]
    images = {
        "cold-big": (big, f"{registry}/bench/big:1"),
        "cold-busybox": ([_layer({"bin/busybox": busybox})], f"{registry}/bench/busybox:1"),
        "top-changed": (top_changed, f"{registry}/bench/big:2"),
    }
    for name, (layers, target) in images.items():
        layout = work / "layouts" / name
        write_oci_layout(layout, "t", layers)
        push(layout, "t", target, run)
    return {name: target for name, (_, target) in images.items()}


# --- the tools -----------------------------------------------------------------------------------

Runner = Callable[[str, Path, str | None], float]
"""(reference, empty work dir, reference to pull first untimed) -> seconds."""


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    _run(command)
    return time.perf_counter() - start


def _run(command: list[str]) -> None:
    result = subprocess.run(
        command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")


def run_quay(reference: str, work: Path, first: str | None) -> float:
    settings = work / "quayd.toml"
    settings.write_text("")
    base = [*QUAYCTL, "--config", str(settings), "--state-dir", str(work / "state"), "image"]
    if first:
        subprocess.run([*base, "pull", "-q", first], check=True, stdout=subprocess.DEVNULL)
    return _timed([*base, "pull", "-q", reference])


IN_PROCESS = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from quayd.images.pull import pull
from quayd.images.registry import RegistryClient
from quayd.images.store import Store
first, reference, state = sys.argv[2], sys.argv[3], Path(sys.argv[4])
store = Store(state)
with RegistryClient() as client:
    if first:
        pull(first, store=store, client=client)
    start = time.perf_counter()
    pull(reference, store=store, client=client)
    print(time.perf_counter() - start)
"""
"""The pull as the agent does it, timed inside a process that has imported quayd (argv: the
source dir quayd is imported from, the reference pulled first untimed or "", the reference,
the state dir)."""


def run_quay_in_agent(reference: str, work: Path, first: str | None) -> float:
    """The pull as the agent does it: in a running process, imports and start-up already paid."""
    python = str(Path(QUAYCTL[0]).parent / "python")
    result = subprocess.run(
        [python, "-c", IN_PROCESS, str(REPO), first or "", reference, str(work / "state")],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout)


def run_podman(reference: str, work: Path, first: str | None) -> float:
    base = ["podman", "--root", str(work / "root"), "--runroot", str(work / "r"),
            "--storage-driver", "overlay", "pull", "--quiet", "--tls-verify=false"]  # fmt: skip
    try:
        if first:
            _run([*base, first])
        return _timed([*base, reference])
    finally:
        # podman leaves a private mount of its overlay store behind; take it down first.
        subprocess.run(["umount", str(work / "root" / "overlay")], check=False, capture_output=True)


def run_skopeo_umoci(reference: str, work: Path, first: str | None) -> float:
    layout = work / "oci"

    def copy_and_unpack(ref: str, tag: str) -> list[list[str]]:
        return [
            ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
             f"oci:{layout}:{tag}"],
            ["umoci", "unpack", "--image", f"{layout}:{tag}", str(work / f"bundle-{tag}")],
        ]  # fmt: skip

    if first:
        for command in copy_and_unpack(first, "first"):
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    for command in copy_and_unpack(reference, "timed"):
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


TOOLS: dict[str, Runner] = {
    "quay": run_quay,
    "quay-in-agent": run_quay_in_agent,
    "podman": run_podman,
    "skopeo+umoci": run_skopeo_umoci,
}


# --- running -------------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pull")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one run of a 20 MB image")
    parser.add_argument("--tools", default=",".join(TOOLS))
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    big_mb = 20 if args.quick else 100
    # Short paths: podman refuses a runroot longer than 50 characters.
    base = Path(tempfile.mkdtemp(prefix="qb-", dir="/var/tmp"))
    try:
        install_quay(base)
        tools = {n: TOOLS[n] for n in args.tools.split(",") if shutil.which(_binary(n))}
        with running_registry(base / "registry") as registry:
            targets = build_images(base, registry.host, big_mb)
            results: dict[tuple[str, str], list[float]] = {}
            for scenario, reference in targets.items():
                first = targets["cold-big"] if scenario == "top-changed" else None
                for run in range(runs):
                    for tool, runner in tools.items():
                        work = base / f"{len(results)}-{run}-{tool.split('+')[0]}"
                        work.mkdir(parents=True)
                        seconds = runner(reference, work, first)
                        results.setdefault((scenario, tool), []).append(seconds)
                        _remove(work)
            _report(results, tools, targets, big_mb, runs)
    finally:
        _remove(base)
    return 0


def _binary(tool: str) -> str:
    return {
        "quay": QUAYCTL[0],
        "quay-in-agent": QUAYCTL[0],
        "podman": "podman",
        "skopeo+umoci": "umoci",
    }[tool]


def _remove(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _report(
    results: dict[tuple[str, str], list[float]],
    tools: dict[str, Runner],
    targets: dict[str, str],
    big_mb: int,
    runs: int,
) -> None:
    print(f"\npull benchmark: {big_mb} MB 5-layer image, {runs} run(s) each, "
          f"{os.cpu_count()} CPUs, local registry on 127.0.0.1")  # fmt: skip
    header = f"{'scenario':<14}{'tool':<14}{'median s':>10}{'p95 s':>10}{'quay/peer':>11}"
    print(header)
    print("-" * len(header))
    for scenario in targets:
        quay = statistics.median(results.get((scenario, "quay"), [float("nan")]))
        for tool in tools:
            values = results[(scenario, tool)]
            median = statistics.median(values)
            ratio = "" if tool.startswith("quay") else f"{quay / median:.2f}x"
            print(f"{scenario:<14}{tool:<14}{median:>10.3f}{p95(values):>10.3f}{ratio:>11}")
