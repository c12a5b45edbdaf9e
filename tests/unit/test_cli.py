"""quayctl validate / render and quayd --check, run in-process as a user would call them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quayd.cli import quayctl, quayd_main
from quayd.units.directory import LoadedUnit, UnitFiles, load_files
from quayd.units.loader import SourceFile, load_unit
from tests.support.units import MINIMAL, write_tree

EXAMPLES = Path(__file__).parents[2] / "examples" / "etc-quay.d"


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    """An empty settings file, so the machine's /etc/quay/quayd.toml never leaks into a test."""
    path = tmp_path / "quayd.toml"
    path.write_text("")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = quayctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


BAD_MEMORY = '[container]\nimage = "busybox"\n[resources]\nmemory = "lots"\n'


def test_validate_the_examples(capsys: pytest.CaptureFixture[str], settings: Path) -> None:
    code, out, err = run(capsys, "--config", str(settings), "validate", str(EXAMPLES))
    assert (code, err) == (0, "")
    assert out == "4 unit(s) checked, all valid\n"


def test_validate_with_no_path_checks_the_config_dir(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    write_tree(tmp_path / "units", {"web.toml": BAD_MEMORY, "ok.toml": MINIMAL})
    code, _, err = run(
        capsys, "--config", str(settings), "--config-dir", str(tmp_path / "units"), "validate"
    )
    assert code == 1
    web = tmp_path / "units" / "web.toml"
    assert err.splitlines() == [
        f'{web}:4: resources.memory = "lots": not a size; accepted: a size such as "512K", '
        '"256M", "1G" or a whole number of bytes',
        "2 unit(s) checked, 1 error(s)",
    ]


def test_validate_a_missing_config_dir_fails(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "--config", str(settings), "--config-dir", str(tmp_path / "no"), "validate"
    )
    assert code == 1
    assert "the config directory does not exist" in err


def test_validate_a_file_whatever_it_is_called(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    # Ansible's `validate: quayctl validate %s` passes a temporary name without .toml.
    good = tmp_path / "tmpa8x_Q3"
    good.write_text(MINIMAL)
    bad = tmp_path / ".ansible_tmp"
    bad.write_text('[container]\nimagee = "x"\n')
    assert run(capsys, "--config", str(settings), "validate", str(good))[0] == 0
    code, _, err = run(capsys, "--config", str(settings), "validate", str(bad))
    assert code == 1
    assert f'{bad}:2: container.imagee = "x": unknown key; did you mean "image"?' in err


def test_validate_a_toml_file_with_a_bad_unit_name(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    path = tmp_path / "My App.toml"
    path.write_text(MINIMAL)
    code, _, err = run(capsys, "--config", str(settings), "validate", str(path))
    assert code == 1
    assert '"My App" is not a valid unit name' in err


def test_validate_json(capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path) -> None:
    write_tree(tmp_path / "units", {"web.toml": BAD_MEMORY, "ok.toml": MINIMAL, "x.bak": ""})
    code, out, err = run(
        capsys, "--config", str(settings), "validate", "--json", str(tmp_path / "units")
    )
    assert (code, err) == (1, "")
    report = json.loads(out)
    assert report["valid"] is False
    assert report["units"] == {"ok": True, "web": False}
    error, warning = report["findings"]
    assert error == {
        "file": str(tmp_path / "units" / "web.toml"),
        "line": 4,
        "column": None,
        "key": "resources.memory",
        "value": '"lots"',
        "message": "not a size",
        "accepted": 'a size such as "512K", "256M", "1G" or a whole number of bytes',
        "severity": "error",
    }
    assert warning["severity"] == "warning"
    assert warning["file"].endswith("x.bak")


def test_warnings_alone_do_not_fail_validation(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    units = write_tree(tmp_path / "units", {"ok.toml": MINIMAL, "ok.toml.orig": "x"})
    code, out, err = run(capsys, "--config", str(settings), "validate", str(units))
    assert code == 0
    assert "warning: ignored: not a *.toml file" in err
    assert out == "1 unit(s) checked, all valid\n"


def test_validate_as_checks_rules_across_units(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    units = write_tree(
        tmp_path / "units",
        {"api.toml": MINIMAL + '[network]\nports = ["8080:80"]\n', "db.toml": MINIMAL},
    )
    candidate = tmp_path / "candidate"
    common = ["--config", str(settings), "--config-dir", str(units), "validate"]

    candidate.write_text(MINIMAL + '[network]\nports = ["8080:80"]\n')
    code, _, err = run(capsys, *common, "--as", "web", str(candidate))
    assert code == 1
    assert (
        f'{candidate}:4: network.ports[0] = "8080:80": host port 8080/tcp is also published' in err
    )

    candidate.write_text(MINIMAL + '[depends]\nrequires = ["db"]\n')
    assert run(capsys, *common, "--as", "web", str(candidate))[0] == 0
    # Replacing api itself by a version with the same port is fine: it does not clash with itself.
    candidate.write_text(MINIMAL + '[network]\nports = ["8080:80"]\n')
    assert run(capsys, *common, "--as", "api", str(candidate))[0] == 0


def test_validate_checks_the_settings_file_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = tmp_path / "quayd.toml"
    settings.write_text(f'config_dir = "{EXAMPLES}"\nruntime = "docker"\n')
    code, _, err = run(capsys, "--config", str(settings), "validate")
    assert code == 1
    assert f'{settings}:2: runtime = "docker": not a known OCI runtime' in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        quayctl.main(["validate", "--bogus"])
    assert caught.value.code == 2
    assert quayctl.main(["validate", "--as", "web", "a", "b"]) == 2
    assert "--as NAME takes exactly one FILE" in capsys.readouterr().err


# --- render --------------------------------------------------------------------------------------


def test_render_prints_the_effective_unit(
    capsys: pytest.CaptureFixture[str], settings: Path
) -> None:
    code, out, _ = run(
        capsys, "--config", str(settings), "--config-dir", str(EXAMPLES), "render", "worker"
    )
    assert code == 0
    assert out.startswith("# Effective unit 'worker': ")
    assert 'LOG_LEVEL = "debug"' in out  # from the drop-in
    assert 'memory = "32M"' in out
    assert 'backoff_max = "5m"' in out  # a default, filled in


@pytest.mark.parametrize("name", ["web", "worker", "clock", "job"])
def test_rendered_units_validate_to_the_same_unit(
    capsys: pytest.CaptureFixture[str], settings: Path, name: str
) -> None:
    code, out, _ = run(
        capsys, "--config", str(settings), "--config-dir", str(EXAMPLES), "render", name
    )
    assert code == 0
    rendered, _ = load_unit(SourceFile(Path("rendered.toml"), out))
    original = load_files(
        UnitFiles(
            name=name,
            path=EXAMPLES / f"{name}.toml",
            dropins=tuple(sorted((EXAMPLES / f"{name}.toml.d").glob("*.toml"))),
        )
    )
    assert isinstance(original, LoadedUnit)
    assert original.unit == rendered


def test_render_an_invalid_unit_fails_with_its_findings(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    path = tmp_path / "web.toml"
    path.write_text(BAD_MEMORY)
    code, out, err = run(capsys, "--config", str(settings), "render", str(path))
    assert (code, out) == (1, "")
    assert "resources.memory" in err


def test_render_an_unknown_unit(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "--config", str(settings), "--config-dir", str(tmp_path), "render", "nope"
    )
    assert code == 1
    assert f"there is no unit file {tmp_path / 'nope.toml'}" in err


# --- quayd ---------------------------------------------------------------------------------------


def test_quayd_check(capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path) -> None:
    assert (
        quayd_main.main(["--config", str(settings), "--config-dir", str(EXAMPLES), "--check"]) == 0
    )
    assert "4 valid unit(s), 0 invalid" in capsys.readouterr().out
    write_tree(tmp_path / "u", {"web.toml": BAD_MEMORY})
    args = ["--config", str(settings), "--config-dir", str(tmp_path / "u"), "--check"]
    assert quayd_main.main(args) == 1
    assert "resources.memory" in capsys.readouterr().err


def test_help_texts_name_the_global_options(capsys: pytest.CaptureFixture[str]) -> None:
    for main in (quayctl.main, quayd_main.main):
        with pytest.raises(SystemExit) as caught:
            main(["--help"])
        assert caught.value.code == 0
        out = capsys.readouterr().out
        for option in ("--config FILE", "--config-dir DIR", "--state-dir DIR", "--run-dir DIR"):
            assert option in out


def test_render_a_file_names_the_unit_after_the_file(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    path = tmp_path / "web.toml"
    path.write_text(MINIMAL)
    code, out, _ = run(capsys, "--config", str(settings), "render", str(path))
    assert code == 0
    assert out.startswith(f"# Effective unit 'web': {path}\n")


def test_render_a_bare_toml_name_means_the_config_dir_unit(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    units = write_tree(tmp_path / "units", {"web.toml": MINIMAL})
    code, out, _ = run(
        capsys, "--config", str(settings), "--config-dir", str(units), "render", "web.toml"
    )
    assert code == 0
    assert out.startswith("# Effective unit 'web': ")


def test_validate_json_names_units_after_their_files(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    path = tmp_path / "web.toml"
    path.write_text(MINIMAL)
    code, out, _ = run(capsys, "--config", str(settings), "validate", "--json", str(path))
    assert code == 0
    assert json.loads(out)["units"] == {"web": True}
