"""Env files (Docker's --env-file format, literal values) and the image/files/unit merge order."""

from __future__ import annotations

from pathlib import Path

import pytest

from quayd.isolation.environment import (
    MAX_ENV_FILE_SIZE,
    container_env,
    image_env,
    merge_env,
    parse_env_file,
    read_env_files,
)
from quayd.isolation.errors import EnvFileError, SpecError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\nB=2\n", {"A": "1", "B": "2"}),
        ("A=1\nA=2\n", {"A": "2"}),
        ("# comment\n\n   \n  # indented comment\nA=1", {"A": "1"}),
        ("A=\n", {"A": ""}),
        ("A=x=y==\n", {"A": "x=y=="}),
        ('A="quoted"\n', {"A": '"quoted"'}),  # literal, as Docker's --env-file
        ("A='single'\n", {"A": "'single'"}),
        ("A=$HOME/x ${B}\n", {"A": "$HOME/x ${B}"}),  # no expansion
        ("A=value # not a comment\n", {"A": "value # not a comment"}),
        ("A= spaced \n", {"A": " spaced "}),
        ("  A=1\n", {"A": "1"}),
        ("export A=1\nexport\tB=2\n", {"A": "1", "B": "2"}),
        ("export=1\n", {"export": "1"}),
        ("exportA=1\n", {"exportA": "1"}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
        ("\ufeffA=1\n", {"A": "1"}),
        ("A=1", {"A": "1"}),
        ("", {}),
        ("lower.case-name=1\n", {"lower.case-name": "1"}),
        ("A=ünïcode\n", {"A": "ünïcode"}),
    ],
)
def test_parse_env_file(text: str, expected: dict[str, str]) -> None:
    assert parse_env_file(text, source="/etc/quay/app.env") == expected


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("A=1\nJUSTNAME\n", 2, "is not NAME=value"),
        ("export B\n", 1, "is not NAME=value"),
        ("=value\n", 1, "name is missing"),
        ("MY VAR=1\n", 1, "whitespace"),
        ("A\0B=1\n", 1, "whitespace or NUL"),
        ("A=1\n\n# c\nB=x\0y\n", 4, "NUL"),
    ],
)
def test_parse_env_file_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(EnvFileError, match=message) as caught:
        parse_env_file(text, source="/etc/quay/app.env")
    assert str(caught.value).startswith(f"/etc/quay/app.env:{line}: ")


def test_read_env_files_in_order_later_wins(tmp_path: Path) -> None:
    first = tmp_path / "a.env"
    second = tmp_path / "b.env"
    first.write_text("A=1\nB=1\n")
    second.write_text("B=2\nC=2\n")
    assert read_env_files([first, str(second)]) == {"A": "1", "B": "2", "C": "2"}
    assert read_env_files([second, first]) == {"B": "1", "C": "2", "A": "1"}


def test_read_env_file_missing(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match=r"missing\.env cannot be read"):
        read_env_files([tmp_path / "missing.env"])


def test_read_env_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.env"
    path.write_bytes(b"A=1\nB=caf\xe9\n")
    with pytest.raises(EnvFileError, match=r"latin1\.env:2: not UTF-8"):
        read_env_files([path])


def test_read_env_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.env"
    path.write_bytes(b"#" * (MAX_ENV_FILE_SIZE + 1))
    with pytest.raises(EnvFileError, match="over"):
        read_env_files([path])


def test_read_env_file_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.env"
    path.write_text("A=1\nB\n")
    with pytest.raises(EnvFileError, match=rf"^{path}:2: "):
        read_env_files([path])


def test_image_env() -> None:
    assert image_env(["A=1", "B=x=y", "C=", "A=2"]) == {"A": "2", "B": "x=y", "C": ""}


@pytest.mark.parametrize("entry", ["NOEQUALS", "=value", "A=b\0c"])
def test_image_env_refuses_malformed_entries(entry: str) -> None:
    with pytest.raises(SpecError, match="image's Env"):
        image_env([entry])


def test_merge_env_later_wins_first_position_kept() -> None:
    assert merge_env({"A": "1", "B": "1"}, {}, {"B": "2", "C": "2"}, {"A": "3"}) == [
        "A=3",
        "B=2",
        "C=2",
    ]


def test_container_env_order() -> None:
    env = container_env(
        ["PATH=/image/bin", "A=image", "B=image", "C=image"],
        {"B": "file", "D": "file"},
        {"C": "unit", "D": "unit"},
        defaults={"PATH": "/default", "HOSTNAME": "web"},
    )
    assert env == ["PATH=/image/bin", "HOSTNAME=web", "A=image", "B=file", "C=unit", "D=unit"]


def test_container_env_without_defaults() -> None:
    assert container_env([], {}, {"A": "1"}) == ["A=1"]
