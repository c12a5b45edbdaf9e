"""Property: no TOML document, however odd, crashes the loader. It yields a unit or our error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quayd.units.findings import QuayConfigError
from quayd.units.loader import SourceFile, load_unit
from quayd.units.model import Unit

# Real table and key names, so generated documents reach deep into validation, mixed with noise.
_KNOWN_KEYS = sorted(
    set(Unit.model_fields)
    | {
        key
        for field in Unit.model_fields.values()
        for key in getattr(field.annotation, "model_fields", {})
    }
    | {"type", "source", "target", "size", "read_only"}
)
keys = st.one_of(st.sampled_from(_KNOWN_KEYS), st.text(min_size=1, max_size=8))

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["10s", "1h30m", "256M", "1G", "8080:80", "busybox", "SIGTERM", "/data",
                     "tcp", "bind", "tmpfs", "volume", "always", "no", "-1", "0", "NET_ADMIN"]),
    st.dates(),
    st.datetimes(),
    st.times(),
)  # fmt: skip


def _values(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=5),
    )


values = st.recursive(scalars, _values, max_leaves=8)
documents = st.dictionaries(keys, values, max_size=6)


def _check(texts: list[str]) -> None:
    sources = [SourceFile(Path(f"f{i}.toml"), text) for i, text in enumerate(texts)]
    try:
        unit, _ = load_unit(sources[0], sources[1:])
    except QuayConfigError as error:
        findings = error.findings
    else:
        assert isinstance(unit, Unit)
        return
    assert findings
    for finding in findings:
        assert finding.file in {s.path for s in sources}
        assert finding.message
        assert str(finding)
        assert finding.to_json()["severity"] == "error"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(documents, st.lists(documents, max_size=1))
def test_any_toml_document_and_dropins_give_a_unit_or_findings(
    main: dict[str, Any], dropins: list[dict[str, Any]]
) -> None:
    _check([tomli_w.dumps(main), *(tomli_w.dumps(d) for d in dropins)])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_unit_or_findings(text: str) -> None:
    _check([text])


def test_deeply_nested_values_are_refused_not_crashing() -> None:
    deep = '[container]\nimage = "busybox"\nlabels = { a = ' + "[" * 5000 + "]" * 5000 + " }\n"
    _check([deep])


def test_a_valid_generated_unit_example() -> None:
    # Keeps the property honest: the generator's shape can produce a valid unit.
    _check([tomli_w.dumps({"container": {"image": "busybox", "env": {"A": "b"}}})])
    unit, _ = load_unit(SourceFile(Path("x.toml"), '[container]\nimage = "busybox"\n'))
    assert unit.container.image == "busybox"
