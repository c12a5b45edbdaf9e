"""The config directory: which files count, drop-ins and their order, rules across units."""

from __future__ import annotations

from pathlib import Path

import pytest

from quayd.units.directory import ConfigDirError, load_directory
from quayd.units.findings import Severity
from tests.support.units import MINIMAL, write_tree


def unit_text(*extra: str) -> str:
    return MINIMAL + "\n".join(extra) + "\n"


# --- which files are units -----------------------------------------------------------------------


def test_only_toml_files_are_units_and_dot_files_are_ignored_silently(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": MINIMAL,
            ".web.toml.swp": "garbage",
            ".hidden.toml": "garbage [",
            "web.toml~": "garbage",
            "notes.txt": "hello",
        },
    )
    snapshot = load_directory(tmp_path)
    assert list(snapshot.units) == ["web"]
    assert snapshot.valid
    warned = sorted(f.file.name for f in snapshot.warnings)
    assert warned == ["notes.txt", "web.toml~"]
    assert all(f.severity is Severity.WARNING for f in snapshot.warnings)
    assert all("ignored: not a *.toml file" in f.message for f in snapshot.warnings)


@pytest.mark.parametrize(
    ("filename", "valid"),
    [
        pytest.param("web.toml", True, id="plain"),
        pytest.param("web-1.v2_x.toml", True, id="separators"),
        pytest.param("0web.toml", True, id="leading-digit"),
        pytest.param(f"{'a' * 63}.toml", True, id="63-chars"),
        pytest.param(f"{'a' * 64}.toml", False, id="64-chars"),
        pytest.param("Web.toml", False, id="uppercase"),
        pytest.param("-web.toml", False, id="leading-dash"),
        pytest.param("_web.toml", False, id="leading-underscore"),
        pytest.param("we b.toml", False, id="space"),
    ],
)
def test_unit_names_come_from_file_names(tmp_path: Path, filename: str, valid: bool) -> None:
    write_tree(tmp_path, {filename: MINIMAL})
    snapshot = load_directory(tmp_path)
    name = filename.removesuffix(".toml")
    assert (name in snapshot.units) is valid
    if not valid:
        (finding,) = snapshot.invalid[name].findings
        assert f'"{name}" is not a valid unit name' in finding.message
        assert finding.accepted is not None
        assert "lowercase letters" in finding.accepted


def test_a_missing_config_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigDirError, match="does not exist"):
        load_directory(tmp_path / "nope")


def test_an_unreadable_or_binary_file_is_an_invalid_unit(tmp_path: Path) -> None:
    write_tree(tmp_path, {"ok.toml": MINIMAL})
    (tmp_path / "bin.toml").write_bytes(b'[container]\nimage = "\xff"\n')
    (tmp_path / "big.toml").write_text("# " + "x" * (1024 * 1024) + "\n")
    snapshot = load_directory(tmp_path)
    assert list(snapshot.units) == ["ok"]
    (binary,) = snapshot.invalid["bin"].findings
    assert (binary.line, binary.message) == (2, "the file is not UTF-8 text")
    (big,) = snapshot.invalid["big"].findings
    assert "larger than 1024 KiB" in big.message


# --- drop-ins ------------------------------------------------------------------------------------


def test_dropins_merge_in_lexical_order_tables_deep_and_arrays_replaced(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": """\
                [container]
                image = "busybox"
                command = ["httpd"]
                env = { A = "main", B = "main" }
                [[mounts]]
                type = "tmpfs"
                target = "/a"
                [[mounts]]
                type = "tmpfs"
                target = "/b"
                """,
            "web.toml.d/20-late.toml": '[container.env]\nB = "late"\n',
            "web.toml.d/10-early.toml": """\
                [container]
                command = ["sh"]
                env = { B = "early", C = "early" }
                [[mounts]]
                type = "tmpfs"
                target = "/c"
                """,
            "web.toml.d/.hidden.toml": '[container]\nimage = "ignored"\n',
            "web.toml.d/README": "ignored with a warning",
        },
    )
    snapshot = load_directory(tmp_path)
    loaded = snapshot.units["web"]
    assert [p.name for p in loaded.dropins] == ["10-early.toml", "20-late.toml"]
    container = loaded.unit.container
    assert container.image == "busybox"
    assert container.command == ["sh"]
    assert container.env == {"A": "main", "B": "late", "C": "early"}
    assert [m.target for m in loaded.unit.mounts] == ["/c"]
    assert [f.file.name for f in snapshot.warnings] == ["README"]


def test_an_error_in_a_dropin_names_the_dropin_file_and_its_line(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": unit_text("[resources]", 'memory = "64M"'),
            "web.toml.d/10-mem.toml": '# more memory\n[resources]\nmemory = "lots"\n',
            "web.toml.d/20-typo.toml": '[container]\nimagee = "x"\n',
        },
    )
    findings = load_directory(tmp_path).invalid["web"].findings
    assert [(f.file.name, f.line, f.key) for f in findings] == [
        ("10-mem.toml", 3, "resources.memory"),
        ("20-typo.toml", 2, "container.imagee"),
    ]


def test_a_syntax_error_in_a_dropin_names_the_dropin(tmp_path: Path) -> None:
    write_tree(tmp_path, {"web.toml": MINIMAL, "web.toml.d/a.toml": "[x\n"})
    (finding,) = load_directory(tmp_path).invalid["web"].findings
    assert finding.file.name == "a.toml"
    assert finding.line == 1
    assert finding.message.startswith("TOML syntax error")


def test_a_key_the_dropin_does_not_touch_is_still_located_in_the_main_file(
    tmp_path: Path,
) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": unit_text("[ready]", 'mode = "tcp"'),
            "web.toml.d/a.toml": '[ready]\ntimeout = "5s"\n',
        },
    )
    (finding,) = load_directory(tmp_path).invalid["web"].findings
    assert (finding.file.name, finding.line, finding.key) == ("web.toml", 4, "ready.mode")


def test_a_replaced_array_is_located_in_the_dropin(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": unit_text("[network]", 'ports = ["1:1", "2:2"]'),
            "web.toml.d/a.toml": '[network]\nports = [\n  "3:3",\n  "4:4:4",\n]\n',
        },
    )
    (finding,) = load_directory(tmp_path).invalid["web"].findings
    assert (finding.file.name, finding.line, finding.key) == ("a.toml", 4, "network.ports[1]")


def test_dropins_without_a_unit_are_reported(tmp_path: Path) -> None:
    write_tree(tmp_path, {"web.toml.d/a.toml": MINIMAL})
    snapshot = load_directory(tmp_path)
    assert not snapshot.units
    assert snapshot.valid  # a warning, not an error
    (warning,) = snapshot.warnings
    assert "there is no web.toml" in warning.message


# --- rules across units --------------------------------------------------------------------------


def test_requires_must_name_an_existing_unit(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": unit_text("[depends]", 'requires = ["db", "cache"]'),
            "db.toml": MINIMAL,
        },
    )
    snapshot = load_directory(tmp_path)
    assert list(snapshot.units) == ["db"]
    (finding,) = snapshot.invalid["web"].findings
    assert finding.key == "depends.requires[1]"
    assert finding.line == 4
    assert finding.value == '"cache"'
    assert 'there is no unit "cache" (cache.toml)' in finding.message


def test_requiring_a_unit_whose_file_is_invalid_is_allowed(tmp_path: Path) -> None:
    # The invalid unit's last good version may still run; its dependents are not invalid.
    write_tree(
        tmp_path,
        {"web.toml": unit_text("[depends]", 'requires = ["db"]'), "db.toml": "[container]\n"},
    )
    snapshot = load_directory(tmp_path)
    assert list(snapshot.units) == ["web"]
    assert list(snapshot.invalid) == ["db"]


def test_a_unit_cannot_require_itself(tmp_path: Path) -> None:
    write_tree(tmp_path, {"web.toml": unit_text("[depends]", 'requires = ["web"]')})
    (finding,) = load_directory(tmp_path).invalid["web"].findings
    assert finding.message == "a unit cannot require itself"


def test_dependency_cycles_invalidate_every_unit_on_them(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "a.toml": unit_text("[depends]", 'requires = ["b"]'),
            "b.toml": unit_text("[depends]", 'requires = ["c"]'),
            "c.toml": unit_text("[depends]", 'requires = ["a"]'),
            "d.toml": unit_text("[depends]", 'requires = ["a"]'),
        },
    )
    snapshot = load_directory(tmp_path)
    assert sorted(snapshot.invalid) == ["a", "b", "c"]
    assert list(snapshot.units) == ["d"]
    for name in "abc":
        (finding,) = snapshot.invalid[name].findings
        assert finding.message == "requires forms a cycle: a → b → c → a"
        assert finding.key == "depends.requires"
        assert finding.file.name == f"{name}.toml"


@pytest.mark.parametrize(
    ("web_port", "api_port", "clash"),
    [
        pytest.param("8080:80", "8080:81", True, id="same-port"),
        pytest.param("8080:80", "127.0.0.1:8080:80", True, id="any-address-vs-one"),
        pytest.param("127.0.0.1:8080:80", "127.0.0.2:8080:80", False, id="different-addresses"),
        pytest.param("8080:80", "8080:80/udp", False, id="different-protocols"),
        pytest.param("8000-8010:9000-9010", "8005:80", True, id="inside-a-range"),
        pytest.param("[::1]:8080:80", "8080:80", True, id="ipv6-vs-any"),
    ],
)
def test_the_same_host_port_in_two_units_invalidates_both(
    tmp_path: Path, web_port: str, api_port: str, clash: bool
) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": unit_text("[network]", f'ports = ["{web_port}"]'),
            "api.toml": unit_text("[network]", f'ports = ["{api_port}"]'),
        },
    )
    snapshot = load_directory(tmp_path)
    if not clash:
        assert snapshot.valid
        return
    assert sorted(snapshot.invalid) == ["api", "web"]
    (web,) = snapshot.invalid["web"].findings
    assert web.key == "network.ports[0]"
    assert web.line == 4
    assert 'also published by unit "api"' in web.message
    (api,) = snapshot.invalid["api"].findings
    assert 'also published by unit "web"' in api.message


def test_an_alias_cannot_take_another_units_name(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "web.toml": unit_text("[network]", 'aliases = ["www", "db"]'),
            "db.toml": MINIMAL,
            "cms.toml": unit_text("[network]", 'aliases = ["WWW"]'),
        },
    )
    snapshot = load_directory(tmp_path)
    found = {
        name: [(f.key, f.message) for f in invalid.findings]
        for name, invalid in snapshot.invalid.items()
    }
    # A shared alias invalidates every unit that claims it, as a shared host port does.
    assert found == {
        "cms": [("network.aliases[0]", '"WWW" is also an alias of unit "web"')],
        "web": [
            ("network.aliases[0]", '"www" is also an alias of unit "cms"'),
            ("network.aliases[1]", '"db" already names unit "db"'),
        ],
    }


def test_an_alias_cannot_take_the_name_of_an_invalid_unit(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {"web.toml": unit_text("[network]", 'aliases = ["DB"]'), "db.toml": "[container]\n"},
    )
    (finding,) = load_directory(tmp_path).invalid["web"].findings
    assert finding.message == '"DB" already names unit "db"'


def test_the_bundled_examples_are_valid() -> None:
    examples = Path(__file__).parents[2] / "examples" / "etc-quay.d"
    snapshot = load_directory(examples)
    assert snapshot.findings == []
    assert sorted(snapshot.units) == ["clock", "job", "web", "worker"]
    assert snapshot.units["worker"].unit.container.env == {"LOG_LEVEL": "debug"}
