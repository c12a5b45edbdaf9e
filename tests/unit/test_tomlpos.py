"""Where each key of a TOML document stands: key paths as pydantic reports them, 1-based lines."""

from __future__ import annotations

import tomllib
from datetime import date
from typing import Any

import pytest
import tomli_w
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quayd.units.tomlpos import KeyPath, key_lines

BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def paths_of(value: object, prefix: KeyPath = ()) -> set[KeyPath]:
    """Every key path tomllib's result has: table keys and array indexes, all the way down."""
    found: set[KeyPath] = set()
    children: list[tuple[str | int, object]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    for key, child in children:
        path = (*prefix, key)
        found.add(path)
        found |= paths_of(child, path)
    return found


CASES = [
    pytest.param("", {}, id="empty"),
    pytest.param("# only a comment\n\n   # another\n", {}, id="only-comments"),
    pytest.param(
        'a = 1\nb = "x"\n\nc = true\n',
        {("a",): 1, ("b",): 2, ("c",): 4},
        id="top-level-keys",
    ),
    pytest.param(
        '[container]\nimage = "busybox"\n\n[resources]\nmemory = "1G"\n',
        {
            ("container",): 1,
            ("container", "image"): 2,
            ("resources",): 4,
            ("resources", "memory"): 5,
        },
        id="tables",
    ),
    pytest.param(
        "  [ container ]  \n\timage   =   1\n",
        {("container",): 1, ("container", "image"): 2},
        id="whitespace-in-header-and-key",
    ),
    pytest.param(
        '[[mounts]]\ntarget = "/a"\n\n[[mounts]]\ntarget = "/b"\nread_only = true\n',
        {
            ("mounts",): 1,
            ("mounts", 0): 1,
            ("mounts", 0, "target"): 2,
            ("mounts", 1): 4,
            ("mounts", 1, "target"): 5,
            ("mounts", 1, "read_only"): 6,
        },
        id="array-of-tables",
    ),
    pytest.param(
        "[[a]]\nx = 1\n[[a.b]]\ny = 1\n[[a.b]]\ny = 2\n[a.c]\nz = 1\n[[a]]\n[[a.b]]\ny = 3\n",
        {
            ("a",): 1,
            ("a", 0): 1,
            ("a", 0, "x"): 2,
            ("a", 0, "b"): 3,
            ("a", 0, "b", 0): 3,
            ("a", 0, "b", 0, "y"): 4,
            ("a", 0, "b", 1): 5,
            ("a", 0, "b", 1, "y"): 6,
            ("a", 0, "c"): 7,
            ("a", 0, "c", "z"): 8,
            ("a", 1): 9,
            ("a", 1, "b"): 10,
            ("a", 1, "b", 0): 10,
            ("a", 1, "b", 0, "y"): 11,
        },
        id="nested-arrays-of-tables-restart-per-parent",
    ),
    pytest.param(
        "[[a]]\n[a.b]\nc = 1\n[[a]]\n[a.b]\nc = 2\n",
        {
            ("a",): 1,
            ("a", 0): 1,
            ("a", 0, "b"): 2,
            ("a", 0, "b", "c"): 3,
            ("a", 1): 4,
            ("a", 1, "b"): 5,
            ("a", 1, "b", "c"): 6,
        },
        id="subtable-of-current-array-element",
    ),
    pytest.param(
        "[[network.ports]]\nhost = 1\n[[network.ports]]\nhost = 2\n",
        {
            ("network",): 1,
            ("network", "ports"): 1,
            ("network", "ports", 0): 1,
            ("network", "ports", 0, "host"): 2,
            ("network", "ports", 1): 3,
            ("network", "ports", 1, "host"): 4,
        },
        id="dotted-array-of-tables-header",
    ),
    pytest.param(
        'container.env.FOO = "x"\ncontainer.env.BAR = "y"\n',
        {
            ("container",): 1,
            ("container", "env"): 1,
            ("container", "env", "FOO"): 1,
            ("container", "env", "BAR"): 2,
        },
        id="dotted-keys",
    ),
    pytest.param(
        "[t]\na . b\t.c = 1\n",
        {("t",): 1, ("t", "a"): 2, ("t", "a", "b"): 2, ("t", "a", "b", "c"): 2},
        id="dotted-keys-with-spaces-in-table",
    ),
    pytest.param(
        "[ a . \"b.c\" . 'd e' ]\nk = 1\n",
        {
            ("a",): 1,
            ("a", "b.c"): 1,
            ("a", "b.c", "d e"): 1,
            ("a", "b.c", "d e", "k"): 2,
        },
        id="quoted-keys-in-header",
    ),
    pytest.param(
        '"a b" = 1\n\'lit\\\' = 2\n"esc\\"q" = 3\n"\\u00e9\\U0001F600" = 4\n'
        '"tab\\there" = 5\n"" = 6\n"back\\\\slash" = 7\n\'a.b\' = 8\n"caf\u00e9" = 9\n',
        {
            ("a b",): 1,
            ("lit\\",): 2,
            ('esc"q',): 3,
            ("\u00e9\U0001f600",): 4,
            ("tab\there",): 5,
            ("",): 6,
            ("back\\slash",): 7,
            ("a.b",): 8,
            ("caf\u00e9",): 9,
        },
        id="quoted-keys-decoded",
    ),
    pytest.param(
        '1234 = 1\n-a_B = 2\n"x".y = 3\n',
        {("1234",): 1, ("-a_B",): 2, ("x",): 3, ("x", "y"): 3},
        id="bare-key-characters",
    ),
    pytest.param(
        '[container]\nenv = { FOO = "1", BAR = { x = 2 }, "q k".z = 3 }\n',
        {
            ("container",): 1,
            ("container", "env"): 2,
            ("container", "env", "FOO"): 2,
            ("container", "env", "BAR"): 2,
            ("container", "env", "BAR", "x"): 2,
            ("container", "env", "q k"): 2,
            ("container", "env", "q k", "z"): 2,
        },
        id="inline-tables",
    ),
    pytest.param(
        "a = {}\nb = []\nc = [\n]\nd = {a=1}\n",
        {("a",): 1, ("b",): 2, ("c",): 3, ("d",): 5, ("d", "a"): 5},
        id="empty-containers-no-spaces",
    ),
    pytest.param(
        '[network]\nports = [\n  "80:80",\n  "443:443", # web\n  # a comment line\n\n'
        '  "53:53/udp",\n]\n',
        {
            ("network",): 1,
            ("network", "ports"): 2,
            ("network", "ports", 0): 3,
            ("network", "ports", 1): 4,
            ("network", "ports", 2): 7,
        },
        id="array-spanning-lines",
    ),
    pytest.param(
        'ports = ["80:80", "443:443",\n"53:53"]\n',
        {("ports",): 1, ("ports", 0): 1, ("ports", 1): 1, ("ports", 2): 2},
        id="array-partly-on-one-line",
    ),
    pytest.param(
        'mounts = [\n  { target = "/a" },\n  { target = "/b", read_only = true },\n]\n',
        {
            ("mounts",): 1,
            ("mounts", 0): 2,
            ("mounts", 0, "target"): 2,
            ("mounts", 1): 3,
            ("mounts", 1, "target"): 3,
            ("mounts", 1, "read_only"): 3,
        },
        id="array-of-inline-tables",
    ),
    pytest.param(
        "a = [[1, 2], [\n3]]\n",
        {
            ("a",): 1,
            ("a", 0): 1,
            ("a", 0, 0): 1,
            ("a", 0, 1): 1,
            ("a", 1): 1,
            ("a", 1, 0): 2,
        },
        id="nested-arrays",
    ),
    pytest.param(
        "[[m]]\nopts = { a = [1, { b = [\n{ c = 2 }] }] }\n",
        {
            ("m",): 1,
            ("m", 0): 1,
            ("m", 0, "opts"): 2,
            ("m", 0, "opts", "a"): 2,
            ("m", 0, "opts", "a", 0): 2,
            ("m", 0, "opts", "a", 1): 2,
            ("m", 0, "opts", "a", 1, "b"): 2,
            ("m", 0, "opts", "a", 1, "b", 0): 3,
            ("m", 0, "opts", "a", 1, "b", 0, "c"): 3,
        },
        id="inline-inside-array-inside-inline",
    ),
    pytest.param(
        'a = """\nb = 1\n[c]\n[[d]]\n"""\ne = 2\n',
        {("a",): 1, ("e",): 6},
        id="multiline-basic-string-hides-keys",
    ),
    pytest.param(
        "a = '''\n[[x]]\ny = \"\n'''\nz = 2\n",
        {("a",): 1, ("z",): 5},
        id="multiline-literal-string-hides-keys",
    ),
    pytest.param(
        'a = """x\\""" y"""""\nb = 1\n',
        {("a",): 1, ("b",): 2},
        id="multiline-escaped-quotes-and-trailing-quotes",
    ),
    pytest.param(
        "a = '''it''''\nb = 1\n",
        {("a",): 1, ("b",): 2},
        id="multiline-literal-trailing-quote",
    ),
    pytest.param(
        'a = """\\\n   b = 1 \\\n   """\nc = 2\n',
        {("a",): 1, ("c",): 4},
        id="line-ending-backslash",
    ),
    pytest.param(
        'a = ["""\nx = [""", \'\'\'\n]\'\'\', "y"]\nb = 1\n',
        {("a",): 1, ("a", 0): 1, ("a", 1): 2, ("a", 2): 3, ("b",): 4},
        id="multiline-strings-in-array",
    ),
    pytest.param(
        "# [fake]\n# x = 1\na = 1 # [b] c = 2\n[t] # [[u]]\n"
        "k = \"# not a comment\" # = 3\nl = '#'\n",
        {("a",): 3, ("t",): 4, ("t", "k"): 5, ("t", "l"): 6},
        id="comments-look-like-keys",
    ),
    pytest.param(
        'a = ["]", "[", "}", "{", ",", \'#\', "="]\nb = 1\n',
        {
            ("a",): 1,
            ("a", 0): 1,
            ("a", 1): 1,
            ("a", 2): 1,
            ("a", 3): 1,
            ("a", 4): 1,
            ("a", 5): 1,
            ("a", 6): 1,
            ("b",): 2,
        },
        id="brackets-inside-strings",
    ),
    pytest.param(
        'a = "x\\"y\\\\" # "\nb = \'C:\\path\\\'\nc = 1\n',
        {("a",): 1, ("b",): 2, ("c",): 3},
        id="escapes-in-values",
    ),
    pytest.param(
        "a = 1\r\n[t]\r\nb = [\r\n  1,\r\n  2,\r\n]\r\n",
        {("a",): 1, ("t",): 2, ("t", "b"): 3, ("t", "b", 0): 4, ("t", "b", 1): 5},
        id="crlf",
    ),
    pytest.param(
        "d = 1979-05-27 07:32:00Z\nt = 07:32:00\nf = -inf\nn = nan\nh = 0xff\n"
        "o = 0o7\nx = 1_000\ne = 6.626e-34\nb = false\nl = [1979-05-27T00:32:00.999+07:00, 2]\n",
        {
            ("d",): 1,
            ("t",): 2,
            ("f",): 3,
            ("n",): 4,
            ("h",): 5,
            ("o",): 6,
            ("x",): 7,
            ("e",): 8,
            ("b",): 9,
            ("l",): 10,
            ("l", 0): 10,
            ("l", 1): 10,
        },
        id="scalar-values",
    ),
    pytest.param(
        "[a.b]\nx = 1\n[a]\ny = 2\n",
        {("a",): 1, ("a", "b"): 1, ("a", "b", "x"): 2, ("a", "y"): 4},
        id="super-table-keeps-first-line",
    ),
    pytest.param(
        "[a]\nb.c = 1\n[a.b.d]\ne = 2\n",
        {
            ("a",): 1,
            ("a", "b"): 2,
            ("a", "b", "c"): 2,
            ("a", "b", "d"): 3,
            ("a", "b", "d", "e"): 4,
        },
        id="header-extends-dotted-key-table",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_key_lines(text: str, expected: dict[KeyPath, int]) -> None:
    assert key_lines(text) == expected
    assert set(expected) == paths_of(tomllib.loads(text))  # the case is valid TOML, fully covered


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a = 1\nb = [", {("a",): 1, ("b",): 2}, id="unterminated-array"),
        pytest.param('a = 1\nb = "x', {("a",): 1, ("b",): 2}, id="unterminated-string"),
        pytest.param('a = 1\nb = """x\n', {("a",): 1, ("b",): 2}, id="unterminated-multiline"),
        pytest.param("a = 1\n[t", {("a",): 1}, id="unterminated-header"),
        pytest.param("a = 1\n= 2\nb = 3", {("a",): 1}, id="missing-key"),
        pytest.param('"\\u12" = 1', {}, id="short-unicode-escape"),
        pytest.param('"\\UFFFFFFFF" = 1', {}, id="escape-beyond-unicode"),
        pytest.param('"\\uZZZZ" = 1', {}, id="escape-not-hex"),
        pytest.param("a = [}", {("a",): 1, ("a", 0): 1}, id="brace-in-array"),
        pytest.param("a = [ ]]]", {("a",): 1}, id="extra-brackets"),
        pytest.param("a = {b = ]}", {("a",): 1, ("a", "b"): 1}, id="bracket-in-inline-table"),
        pytest.param("a = " + "[" * 5000, {("a",): 1}, id="too-deep"),
        pytest.param("[[", {}, id="bare-brackets"),
        pytest.param("\x00", {}, id="nul"),
    ],
)
def test_key_lines_on_invalid_text_returns_what_it_found(
    text: str, expected: dict[KeyPath, int]
) -> None:
    found = key_lines(text)
    assert {path: found[path] for path in expected if path in found} == expected


@settings(max_examples=200)
@given(st.text())
@example("a = [}")
@example("[[a]]\n[[a]]\n[a")
def test_key_lines_never_raises(text: str) -> None:
    found = key_lines(text)
    assert all(1 <= line <= text.count("\n") + 1 for line in found.values())


toml_ish = st.lists(
    st.sampled_from(
        ["[", "]", "[[", "]]", "{", "}", "=", "a", "b.c", '"', "'", '"""', "'''", "\\", "\\u",
         "\n", ",", ".", "#", " ", "1", "x = ", "[t]\n"]
    ),
    max_size=30,
).map("".join)  # fmt: skip


@settings(max_examples=200)
@given(toml_ish)
def test_key_lines_never_raises_on_toml_like_text(text: str) -> None:
    found = key_lines(text)
    assert all(1 <= line <= text.count("\n") + 1 for line in found.values())


# --- generated documents -------------------------------------------------------------------------

keys = st.text(alphabet="ab_-1 .\"'\\\u00e9\u4e2d\t\n", max_size=4)
scalars = st.one_of(
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(alphabet="ab =#[]{}\"'\\,.\n\t\u00e9", max_size=8),
    st.dates(min_value=date(1, 1, 1)),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=5)


def lines_of(text: str) -> list[str]:
    return text.split("\n")


@settings(max_examples=200)
@given(documents, st.booleans(), st.integers(0, 4))
def test_every_key_of_a_generated_document_has_its_line(
    document: dict[str, Any], multiline_strings: bool, indent: int
) -> None:
    text = tomli_w.dumps(document, multiline_strings=multiline_strings, indent=indent)
    loaded = tomllib.loads(text)
    found = key_lines(text)
    assert set(found) == paths_of(loaded)
    lines = lines_of(text)
    for path, line in found.items():
        assert 1 <= line <= len(lines)
        key = path[-1]
        if isinstance(key, str) and key and set(key) <= BARE:
            assert key in lines[line - 1], (path, line, text)
        if len(path) > 1:
            assert found[path[:-1]] <= line, (path, text)
        if isinstance(key, int) and key > 0:
            assert found[(*path[:-1], key - 1)] <= line, (path, text)
