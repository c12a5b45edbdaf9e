"""A container's environment: env files parsed, then image env, env files and unit env merged.

Env files follow Docker's ``--env-file`` format, not a shell's: ``NAME=value`` lines, ``#``
comment lines and blank lines. Values are taken literally (no quotes removed, no ``$VAR``
expansion, no escapes), so what is in the file is what the process sees. Two tolerances, both
harmless: an ``export`` prefix (files shared with shell scripts) and a trailing CR (files edited
on Windows). A line without ``=`` is an error naming the file and line: Docker would take such a
variable from the agent's own environment, which a host agent must not leak into containers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from quayd.isolation.errors import EnvFileError, SpecError

# Docker's default PATH (moby's DefaultPathEnv), added when neither the image nor the unit sets one.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Far beyond any honest env file; a cap keeps a mistaken path (a log file, a disk image) cheap.
MAX_ENV_FILE_SIZE = 1 << 20

_EXPORT = re.compile(r"export[ \t]+")
_BAD_NAME = re.compile(r"[\s=\0]")


def parse_env_file(text: str, *, source: str) -> dict[str, str]:
    """The variables of one env file, in file order; a later line wins over an earlier one.

    ``source`` names the file in error messages (``/etc/quay/app.env:3: ...``).
    """
    variables: dict[str, str] = {}
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.removesuffix("\r")
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        export = _EXPORT.match(stripped)
        if export:
            stripped = stripped[export.end() :]
        name, sep, value = stripped.partition("=")
        where = f"{source}:{number}"
        if not sep:
            raise EnvFileError(
                f"{where}: {_shorten(stripped)!r} is not NAME=value "
                "(quay does not take variables from its own environment)"
            )
        if not name:
            raise EnvFileError(f"{where}: a variable name is missing before '='")
        if _BAD_NAME.search(name):
            raise EnvFileError(
                f"{where}: variable name {_shorten(name)!r} contains whitespace or NUL"
            )
        if "\0" in value:
            raise EnvFileError(f"{where}: the value of {name} contains a NUL character")
        variables[name] = value
    return variables


def read_env_files(paths: Iterable[str | Path]) -> dict[str, str]:
    """Read the unit's ``env_files`` in order and merge them (a later file wins per name)."""
    merged: dict[str, str] = {}
    for path in paths:
        merged.update(read_env_file(Path(path)))
    return merged


def read_env_file(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_ENV_FILE_SIZE + 1)
    except OSError as error:
        raise EnvFileError(f"env file {path} cannot be read: {error.strerror}") from None
    if len(data) > MAX_ENV_FILE_SIZE:
        raise EnvFileError(f"env file {path} is over {MAX_ENV_FILE_SIZE} bytes; is it an env file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise EnvFileError(f"{path}:{line}: not UTF-8 text") from None
    return parse_env_file(text, source=str(path))


def image_env(entries: Sequence[str]) -> dict[str, str]:
    """The image config's ``Env`` (``["NAME=value", ...]``) as a mapping, checked."""
    variables: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name or "\0" in entry:
            raise SpecError(
                f"the image's Env has an entry that is not NAME=value: {_shorten(entry)!r}"
            )
        variables[name] = value
    return variables


def merge_env(*layers: Mapping[str, str]) -> list[str]:
    """``NAME=value`` strings from layers applied in order: a later layer wins per name.

    A variable keeps the position where it first appeared (as Docker's
    ReplaceOrAppendEnvValues), so the result is stable when only values change.
    """
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    return [f"{name}={value}" for name, value in merged.items()]


def container_env(
    image: Sequence[str],
    env_files: Mapping[str, str],
    unit: Mapping[str, str],
    *,
    defaults: Mapping[str, str] | None = None,
) -> list[str]:
    """The image's Env, then the env files, then the unit's env, over ``defaults``."""
    return merge_env(defaults or {}, image_env(image), env_files, unit)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
