"""Fuzzing the unpacker: mutated layers (honest ones in the three tar formats, and hostile ones
aiming outside) are applied or refused with our own error, and nothing beside the layer
directory changes: a sentinel tree next to it keeps every byte, mode, time, xattr and link
count (a hardlink to it would show in its link count).

``./dev test`` runs :data:`EXAMPLES` cases; ``QUAY_FUZZ_EXAMPLES`` (divided by 5, as layers cost
more than unit files) for a long run.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quayd.images.errors import ImageError
from quayd.images.unpack import UnpackLimits, apply_layer
from tests.faults.test_fuzz_units import mutate
from tests.integration.test_unpack import D, E, H, S, build, honest_layer, snapshot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: mknod (whiteouts), chown to other users, trusted.* xattrs",
    ),
]

EXAMPLES = max(1, int(os.environ.get("QUAY_FUZZ_EXAMPLES", "5000")) // 5)
LIMITS = UnpackLimits(max_uncompressed_bytes=1 << 22, max_entries=200)


def hostile_layer() -> list[E]:
    """Entries that try to leave the layer: each one alone is refused by the applier."""
    return [
        D("a"),
        S("a/up", "../../outside"),
        E("a/up/victim", data=b"owned\n"),
        H("a/hard", "../outside/victim"),
        E("../outside/victimdir/inner", data=b"owned\n"),
        E("/abs/file", data=b"x"),
        S("b", "/"),
        E("b/etc/passwd", data=b"x"),
    ]


SEEDS = (
    build(honest_layer()),
    build(honest_layer(), fmt=tarfile.GNU_FORMAT),
    build(
        [e for e in honest_layer() if not (e.xattrs or e.pax or e.linkname == "usr/bin/ping")],
        fmt=tarfile.USTAR_FORMAT,
    ),
    build(hostile_layer()),
    build(hostile_layer(), fmt=tarfile.GNU_FORMAT),
)

# Header fields and values that matter to a tar reader, spliced in by the mutations.
TOKENS = (
    b"../", b"/", b"./", b"..", b"\x00", b"0000777\x00", b"7777777\x00", b"77777777777\x00",
    b"\x80\x00\x00\x00\x00\x00\x00\xff", b"ustar\x0000", b"ustar  \x00", b"L", b"K", b"x", b"g",
    b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"30 path=../../outside/x\n",
    b"25 linkpath=/etc/shadow\n", b"22 size=99999999999\n", b".wh..wh..opq", b".wh.",
)  # fmt: skip

edits = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=1.0),
        st.sampled_from(("insert", "delete", "duplicate-line", "replace", "replace")),
        st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=16)),
        st.integers(min_value=1, max_value=1024),
    ),
    min_size=1,
    max_size=6,
)


def arena() -> Iterator[Path]:
    """A fresh directory: ``outside`` (the sentinel tree) and an empty ``layer``."""
    root = Path(tempfile.mkdtemp(prefix="quay-fuzz-layer-"))
    try:
        outside = root / "outside"
        (outside / "victimdir").mkdir(parents=True)
        (outside / "victim").write_text("precious\n")
        (outside / "victimdir" / "inner").write_text("inner\n")
        os.setxattr(outside / "victim", "user.sentinel", b"1")
        (root / "layer").mkdir()
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def apply(blob: bytes) -> None:
    for root in arena():
        before = snapshot(root)
        refused: ImageError | None = None
        try:
            apply_layer(io.BytesIO(blob), root / "layer", limits=LIMITS)
        except ImageError as error:
            refused = error
        assert refused is None or str(refused)
        assert snapshot(root) == before, "something beside the layer directory changed"
        assert sorted(os.listdir(root)) == ["layer", "outside"]


def test_the_seeds_apply_or_are_refused_as_expected() -> None:
    for blob in SEEDS[:3]:
        for root in arena():
            apply_layer(io.BytesIO(blob), root / "layer", limits=LIMITS)
    for blob in SEEDS[3:]:
        for root in arena():
            with pytest.raises(ImageError):
                apply_layer(io.BytesIO(blob), root / "layer", limits=LIMITS)


@settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.sampled_from(range(len(SEEDS))), changes=edits)
def test_mutated_layers_are_applied_inside_or_refused_with_our_error(
    seed: int, changes: list[tuple[float, str, bytes, int]]
) -> None:
    apply(mutate(SEEDS[seed], changes))
