"""Registry authentication data: WWW-Authenticate challenges and docker ``config.json`` credentials.

Pure parsing; the HTTP exchange lives in :mod:`quayd.images.registry`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from quayd.images.errors import AuthError

_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """Lowercased: ``"bearer"`` or ``"basic"`` (others are reported, not handled)."""
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str) -> Challenge | None:
    """``Bearer realm="https://auth/token",service="reg",scope="repository:x:pull"`` → Challenge."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", scheme):
        return None
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if not match or match.end() == position:
            break
        name, quoted, bare = match.groups()
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[name.lower()] = value
        position = match.end()
    return Challenge(scheme=scheme.lower(), params=params)


def registry_key(text: str) -> str:
    """The registry a config.json key names: ``https://index.docker.io/v1/`` → ``docker.io``."""
    host = re.sub(r"^[a-z]+://", "", text.strip().lower()).split("/")[0]
    return "docker.io" if host in _HUB_KEYS else host


class Credentials:
    """Credentials per registry host, as ``docker login`` / ``podman login`` store them."""

    def __init__(self, entries: dict[str, tuple[str, str]] | None = None) -> None:
        self._entries = {registry_key(k): v for k, v in (entries or {}).items()}

    def lookup(self, registry: str) -> tuple[str, str] | None:
        return self._entries.get(registry_key(registry))

    def __len__(self) -> int:
        return len(self._entries)


def parse_credentials(raw: bytes, source: str = "credentials file") -> Credentials:
    """Parse docker ``config.json``: ``{"auths": {"host": {"auth": base64("user:pass")}}}``."""
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise AuthError(f"{source} is not valid JSON: {error}") from None
    auths = document.get("auths") if isinstance(document, dict) else None
    if auths is None:
        return Credentials()
    if not isinstance(auths, dict):
        raise AuthError(f'{source}: "auths" must be an object')
    entries: dict[str, tuple[str, str]] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise AuthError(f"{source}: the entry for {key!r} must be an object")
        pair = _pair(entry, f"{source}: {key}")
        if pair is not None:
            entries[key] = pair
    return Credentials(entries)


def _pair(entry: dict[str, object], where: str) -> tuple[str, str] | None:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f'{where}: "auth" is not base64 of "user:password"') from None
        if not sep:
            raise AuthError(f'{where}: "auth" must decode to "user:password"')
        return user, password
    username, secret = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(secret, str):
        return username, secret
    return None  # e.g. only "identitytoken" or a credential helper: not supported, skipped


def load_credentials(path: Path | None) -> Credentials:
    if path is None:
        return Credentials()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AuthError(f"credentials file {path} does not exist (registries.auth_file)") from None
    except OSError as error:
        raise AuthError(f"cannot read credentials file {path}: {error.strerror}") from None
    return parse_credentials(raw, str(path))
