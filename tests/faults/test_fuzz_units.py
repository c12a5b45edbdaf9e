"""Fuzzing the unit loader: mutated unit files (from the seeds in ``corpus/units``) give a unit
or our own error, never another exception; every finding names the file it is about; no input
takes more than a second (hypothesis's deadline).

``./dev test`` runs :data:`EXAMPLES` cases in all (the quick variant); set ``QUAY_FUZZ_EXAMPLES``
for a long run (issue 19's report runs 100,000).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quayd.units.findings import QuayConfigError
from quayd.units.loader import decode_source, load_unit
from quayd.units.model import Unit

CORPUS = Path(__file__).parent / "corpus" / "units"
SEEDS = tuple(sorted(CORPUS.glob("*.toml")))
DROPIN_SEEDS = tuple(sorted(CORPUS.glob("*.toml.d/*.toml")))
EXAMPLES = int(os.environ.get("QUAY_FUZZ_EXAMPLES", "5000"))
"""All the cases of this module together (split between its tests)."""

TOKENS = (
    b"[", b"]", b"[[", b"]]", b"=", b'"', b"'", b'"""', b"{", b"}", b",", b".", b"#", b"\n",
    b"\\", b"\\u0000", b"\x00", b"\xff", b"\xc3", b"0", b"-1", b"1e999", b"nan", b"inf",
    b"true", b"false", b"1979-05-27T07:32:00Z", b"0x7fffffffffffffff", b"99999999999999999999",
    b"[container]", b"[network]", b"[[mounts]]", b"[resources]", b"[update]", b"[ready]",
    b"image", b"command", b"ports", b"memory", b"pids", b"cpus", b"policy", b"strategy",
    b'"1ms"', b'"0s"', b'"-5s"', b'"10000000h"', b'"64M"', b'"1T"', b'"80:80"', b'"0:0"',
    b'"65536:1"', b'"../../etc"', b'"/"', b'"a" * 300', b'"\\n"', b"\xe2\x80\xae",
)  # fmt: skip

edits = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=1.0),
        st.sampled_from(("insert", "delete", "duplicate-line", "replace")),
        st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)),
        st.integers(min_value=1, max_value=64),
    ),
    min_size=1,
    max_size=8,
)


def mutate(seed: bytes, changes: list[tuple[float, str, bytes, int]]) -> bytes:
    data = bytearray(seed)
    for where, kind, token, length in changes:
        at = int(where * len(data))
        if kind == "insert":
            data[at:at] = token
        elif kind == "delete":
            del data[at : at + length]
        elif kind == "replace":
            data[at : at + len(token)] = token
        else:
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            line = bytes(data[start : (end if end >= 0 else len(data))])
            data[start:start] = line + b"\n"
    return bytes(data)


def load(path: Path, data: bytes, dropins: tuple[tuple[Path, bytes], ...] = ()) -> None:
    """One input through the loader, as the agent loads a file: a unit, or our error whose
    every finding names one of the input's files."""
    files = {path, *(dropin for dropin, _ in dropins)}
    refused: QuayConfigError | None = None
    try:
        main = decode_source(path, data)
        sources = [decode_source(dropin, text) for dropin, text in dropins]
        unit, _ = load_unit(main, sources)
    except QuayConfigError as error:
        refused = error
    if refused is None:
        assert isinstance(unit, Unit)
        return
    assert refused.findings
    for finding in refused.findings:
        assert finding.file in files, finding
        assert finding.message, finding
    assert str(refused)


FUZZ = settings(
    max_examples=max(1, EXAMPLES // 2),
    deadline=timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_the_seeds_are_valid_units() -> None:
    for seed in SEEDS:
        load(seed, seed.read_bytes())
        main = decode_source(seed, seed.read_bytes())
        load_unit(main)  # a seed that does not load would only test the error paths


@FUZZ
@given(seed=st.sampled_from(SEEDS), changes=edits)
def test_mutated_unit_files_give_a_unit_or_our_error(
    seed: Path, changes: list[tuple[float, str, bytes, int]]
) -> None:
    load(seed, mutate(seed.read_bytes(), changes))


@FUZZ
@given(seed=st.sampled_from(SEEDS), dropin=st.sampled_from(DROPIN_SEEDS or SEEDS), changes=edits)
def test_mutated_drop_ins_give_a_unit_or_our_error_naming_the_drop_in(
    seed: Path, dropin: Path, changes: list[tuple[float, str, bytes, int]]
) -> None:
    path = seed.with_name(seed.name + ".d") / "50-fuzz.toml"
    load(seed, seed.read_bytes(), ((path, mutate(dropin.read_bytes(), changes)),))
