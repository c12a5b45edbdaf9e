"""Unpack throughput: MB/s of the tar stream through ``apply_layer``, one build against another.

    python -m bench decompress --unpack [--mb N] [--runs N] [--baseline REV] [--dir DIR] [--small]

Builds one layer-like tar stream (mixed file sizes: mostly small files, some large ones,
directories, symlinks, hardlinks, a few PAX headers; with ``--small`` only files under 2 KB,
where the per-entry cost of the tar reader and the syscalls shows), compresses it with gzip
(level 6) and zstd
(level 3), and applies it with ``apply_layer`` from the working tree and, with ``--baseline``,
from that commit (``git archive REV quayd``), alternating the two: ``--runs`` fresh processes
each, each applying ``--applies`` times into fresh directories under ``--dir`` (tmpfs by default,
so the disk does not set the pace). "warm" is the median of the later applies of a process (the
usual case in quayd, a long-lived process), "cold" that of the first.
Also prints how fast the compressed stream alone inflates: the ceiling any tar reader has.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/tmp/quay-bench-unpack")

# One process: imports apply_layer from whatever quayd is first on sys.path, applies the blob
# into a fresh directory under argv[2] argv[3] times, prints a JSON line. The first apply pays
# for a cold process (its heap grows, page faults); quayd pulls in a long-lived one, so the
# later applies are the usual case.
_RUN = """
import json, shutil, sys, tempfile, time
from pathlib import Path
import quayd
from quayd.images.unpack import apply_layer
seconds = []
for _ in range(int(sys.argv[3])):
    target = Path(tempfile.mkdtemp(dir=sys.argv[2], prefix="unpack-"))
    with open(sys.argv[1], "rb", buffering=0) as stream:
        started = time.perf_counter()
        result = apply_layer(stream, target)
        seconds.append(time.perf_counter() - started)
    shutil.rmtree(target)
print(json.dumps({"seconds": seconds, "entries": result.entries, "from": quayd.__file__}))
"""


def _content(rng: random.Random, words: list[bytes], size: int) -> bytes:
    """About 3:1 compressible: text with stretches of random bytes, as binaries have."""
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.2:
            out += rng.randbytes(256)
        else:
            out += b" ".join(rng.choices(words, k=48)) + b"\n"
    return bytes(out[:size])


def _file_size(rng: random.Random, small: bool) -> int:
    """Mostly small files, a few big ones: about 40 KB on average, as distribution images."""
    if small:
        return rng.randint(0, 2048)
    roll = rng.random()
    if roll < 0.75:
        return rng.randint(0, 8 << 10)
    if roll < 0.95:
        return rng.randint(8 << 10, 64 << 10)
    if roll < 0.997:
        return rng.randint(64 << 10, 512 << 10)
    return rng.randint(1 << 20, 8 << 20)


def build_layer(size: int, *, small: bool = False) -> bytes:
    """A deterministic layer-like tar stream of about ``size`` bytes (PAX format)."""
    rng = random.Random(14)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(2, 10))) for _ in range(2000)]
    pool = _content(rng, words, 16 << 20)  # file data is cut from here: building stays fast
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directory, n = "usr", 0
        files: list[str] = []
        archive.addfile(_info(directory + "/", tarfile.DIRTYPE, 0))
        while buf.tell() < size:
            n += 1
            if n % 25 == 0:
                directory = f"usr/{rng.choice(words).decode()}{n}"
                archive.addfile(_info(directory + "/", tarfile.DIRTYPE, 0))
            name = f"{directory}/{rng.choice(words).decode()}-{n}"
            if n % 97 == 0:
                name += "/" + "deep" * 30  # a name that needs a PAX path record
                archive.addfile(_info(name.rsplit("/", 1)[0] + "/", tarfile.DIRTYPE, 0))
            roll = rng.random()
            if roll < 0.03 and files:
                info = _info(name, tarfile.SYMTYPE, 0)
                info.linkname = rng.choice(files)
                archive.addfile(info)
            elif roll < 0.04 and files:
                info = _info(name, tarfile.LNKTYPE, 0)
                info.linkname = rng.choice(files)
                archive.addfile(info)
            else:
                length = _file_size(rng, small)
                start = rng.randrange(0, len(pool) - length) if length < len(pool) else 0
                data = (pool * (1 + length // len(pool)))[start : start + length]
                info = _info(name, tarfile.REGTYPE, len(data))
                if n % 50 == 0:
                    info.pax_headers = {"mtime": "1600000000.123456789"}
                archive.addfile(info, io.BytesIO(data))
                files.append(name)
    return buf.getvalue()


def _info(name: str, kind: bytes, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_600_000_000
    return info


def layers(mb: int, *, small: bool) -> tuple[int, dict[str, Path]]:
    """The gzip and zstd blobs of the bench layer (cached: building takes a while)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = f"layer-{mb}mb" + ("-small" if small else "")
    paths = {"gzip": CACHE / f"{stem}.tar.gz", "zstd": CACHE / f"{stem}.tar.zst"}
    raw_size = CACHE / f"{stem}.size"
    if not all(p.exists() for p in [*paths.values(), raw_size]):
        raw = build_layer(mb * 1_000_000, small=small)
        paths["gzip"].write_bytes(gzip.compress(raw, compresslevel=6, mtime=0))
        paths["zstd"].write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))
        raw_size.write_text(str(len(raw)))
    return int(raw_size.read_text()), paths


def inflate_only(path: Path, kind: str) -> float:
    """Seconds to inflate the blob with the library the unpacker uses, discarding the output."""
    data = path.read_bytes()
    started = time.perf_counter()
    if kind == "gzip":
        from isal import isal_zlib  # noqa: PLC0415 - only this bench needs it

        inflater = isal_zlib.decompressobj(31)
        view = memoryview(data)
        for offset in range(0, len(data), 256 << 10):
            chunk = inflater.decompress(view[offset : offset + (256 << 10)], 1 << 20)
            while inflater.unconsumed_tail:
                chunk = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
            del chunk
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        while reader.read(1 << 20):
            pass
    return time.perf_counter() - started


def run_process(source: Path, blob: Path, scratch: Path, applies: int) -> tuple[list[float], int]:
    """Seconds of each apply in one fresh process, and the layer's entry count."""
    out = subprocess.run(
        # -P and a cwd elsewhere: the working tree must not shadow the build on PYTHONPATH.
        [sys.executable, "-P", "-c", _RUN, str(blob), str(scratch), str(applies)],
        cwd=scratch,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    if not Path(result["from"]).is_relative_to(source):
        raise SystemExit(f"measured {result['from']}, not the build in {source}")
    return [float(s) for s in result["seconds"]], int(result["entries"])


def export(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "quayd"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench decompress --unpack")
    parser.add_argument("--mb", type=int, default=100, help="size of the tar stream")
    parser.add_argument("--runs", type=int, default=5, help="processes per build and layer")
    parser.add_argument("--applies", type=int, default=3, help="applies per process")
    parser.add_argument("--baseline", metavar="REV", help="also measure this commit")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="where to unpack")
    parser.add_argument("--small", action="store_true", help="only files under 2 KB")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    mb, runs = (20, 1) if args.quick else (args.mb, args.runs)
    raw_size, blobs = layers(mb, small=args.small)
    with tempfile.TemporaryDirectory(prefix="quay-bench-src-") as scratch_src:
        sources = {"working tree": REPO}
        if args.baseline:
            sources = {args.baseline: export(args.baseline, Path(scratch_src)), **sources}
        results: dict[tuple[str, str], list[list[float]]] = {}
        entries = 0
        for _ in range(runs):
            for kind, blob in blobs.items():
                for label, source in sources.items():  # alternated: drift hits both alike
                    seconds, entries = run_process(source, blob, args.dir, args.applies)
                    results.setdefault((label, kind), []).append(seconds)
    print(f"\nunpack: {raw_size / 1e6:.0f} MB tar stream, {entries} entries, {runs} process(es) "
          f"x {args.applies} applies, into {args.dir}")  # fmt: skip
    for kind, blob in blobs.items():
        inflating = inflate_only(blob, kind)
        print(f"  {kind}: {blob.stat().st_size / 1e6:.0f} MB compressed; inflating alone "
              f"{raw_size / 1e6 / inflating:.0f} MB/s")  # fmt: skip
    print(f"{'build':<16}{'layer':<7}{'warm s':>8}{'MB/s':>7}{'entries/s':>11}"
          f"{'cold s':>9}{'MB/s':>7}")  # fmt: skip
    for (label, kind), processes in results.items():
        cold = statistics.median(p[0] for p in processes)
        later = [s for p in processes for s in p[1:]]
        warm = statistics.median(later) if later else cold
        print(f"{label:<16}{kind:<7}{warm:>8.3f}{raw_size / 1e6 / warm:>7.0f}"
              f"{entries / warm:>11.0f}{cold:>9.3f}{raw_size / 1e6 / cold:>7.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
