"""How fast can a gzip layer be inflated here? The options the unpacker could use, side by side.

    python -m bench decompress [--mb N] [--runs N]
    python -m bench decompress --unpack [--baseline REV] ...   # apply_layer throughput (unpack.py)

Inflates the same gzip stream (a layer-like mix of text and binary, about 3:1) with Python's zlib,
ISA-L through the ``isal`` package (what quay uses), and by piping through ``unpigz`` and
``igzip`` (installed here if missing: Debian's pigz and isal). Prints MB/s of output.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import random
import shutil
import statistics
import subprocess
import time
import zlib
from collections.abc import Callable

CHUNK = 1 << 20


def layer_like(size: int) -> bytes:
    rng = random.Random(7)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(2, 10))) for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.2:
            out += rng.randbytes(256)  # compressed or random content inside binaries
        else:
            out += b" ".join(rng.choices(words, k=48)) + b"\n"
    return bytes(out[:size])


def inflate_module(module: object) -> Callable[[bytes], int]:
    def run(data: bytes) -> int:
        inflater = module.decompressobj(31)  # type: ignore[attr-defined]
        total = 0
        view = memoryview(data)
        for offset in range(0, len(data), CHUNK):
            total += len(inflater.decompress(view[offset : offset + CHUNK]))
        return total

    return run


def pipe_through(command: list[str]) -> Callable[[bytes], int]:
    def run(data: bytes) -> int:
        result = subprocess.run(command, input=data, capture_output=True, check=True)
        return len(result.stdout)

    return run


def ensure_tools() -> None:
    missing = [
        pkg for tool, pkg in (("unpigz", "pigz"), ("igzip", "isal")) if not shutil.which(tool)
    ]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False)


def main(argv: list[str] | None = None) -> int:
    if argv and "--unpack" in argv:
        from bench import unpack  # noqa: PLC0415 - its own scenario, reached through this one

        return unpack.main([arg for arg in argv if arg != "--unpack"])
    parser = argparse.ArgumentParser(prog="python -m bench decompress")
    parser.add_argument("--mb", type=int, default=200, help="uncompressed size")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    size = (20 if args.quick else args.mb) * 1024 * 1024
    runs = 1 if args.quick else args.runs
    ensure_tools()
    raw = layer_like(size)
    data = gzip.compress(raw, compresslevel=6, mtime=0)
    options: dict[str, Callable[[bytes], int]] = {"python zlib": inflate_module(zlib)}
    with contextlib.suppress(ImportError):
        options["isal (quay)"] = inflate_module(importlib.import_module("isal.isal_zlib"))
    for name, command in (("unpigz pipe", ["unpigz", "-c"]), ("igzip pipe", ["igzip", "-dc"])):
        if shutil.which(command[0]):
            options[name] = pipe_through(command)
    print(f"\ngzip inflate: {size / 1e6:.0f} MB out of {len(data) / 1e6:.0f} MB, {runs} run(s)")
    print(f"{'option':<14}{'median s':>10}{'MB/s':>9}")
    for name, run in options.items():
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            assert run(data) == len(raw)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"{name:<14}{median:>10.3f}{size / 1e6 / median:>9.0f}")
    return 0
