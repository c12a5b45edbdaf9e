"""Image references, as Docker spells them: ``[REGISTRY/]REPOSITORY[:TAG][@DIGEST]``.

The grammar follows the distribution project's reference package. Normalisation is Docker's:
no registry means ``docker.io``, a one-part repository on Docker Hub gets ``library/``, and no tag
and no digest means ``latest``. The value type lives with the unit format (a unit names an image);
``quayd.images`` builds on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])"
_DOMAIN = re.compile(rf"{_HOST}(?::\d{{1,5}})?", re.ASCII)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # Go's \w: ASCII only
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
MAX_NAME_LENGTH = 255

REFERENCE_ACCEPTED = (
    'an image reference such as "busybox", "busybox:1.36", "registry.example:5000/team/app:v2" '
    'or "app@sha256:<64 hex digits>"'
)


class ImageReferenceError(ValueError):
    """The text is not an image reference; the message says which part is wrong."""


@dataclass(frozen=True)
class ImageReference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        return parse_reference(text)

    @property
    def name(self) -> str:
        """``registry/repository``, the part that names a repository."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def normalize_registry(host: str) -> str | None:
    """``host[:port]`` as references spell registries (Docker Hub's aliases → ``docker.io``).

    None when ``host`` is not a registry host with an optional port from 1 to 65535.
    """
    if not _DOMAIN.fullmatch(host):
        return None
    _, colon, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        return None
    return DOCKER_HUB if host.lower() in _HUB_ALIASES else host


def parse_reference(text: str) -> ImageReference:
    """Parse and normalise ``text``; :class:`ImageReferenceError` says why it cannot be."""
    if not isinstance(text, str) or not text.strip():
        raise ImageReferenceError("an image reference cannot be empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise ImageReferenceError("an image reference cannot contain spaces")
    rest, digest = _split_digest(text)
    rest, tag = _split_tag(rest)
    registry, repository = _split_registry(rest)
    if not _REPOSITORY.fullmatch(repository):
        if repository.lower() != repository:
            raise ImageReferenceError(f"repository name {repository!r} must be lowercase")
        raise ImageReferenceError(
            f"{repository!r} is not a repository name "
            "(lowercase letters, digits and separators . _ __ - between them, parts joined by /)"
        )
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    # Counted after normalisation, as Docker does, so that str() of a reference parses again.
    if len(registry) + 1 + len(repository) > MAX_NAME_LENGTH:
        raise ImageReferenceError(
            f"the repository name is longer than {MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository=repository, tag=tag, digest=digest)


def _split_digest(text: str) -> tuple[str, str | None]:
    name, at, digest = text.partition("@")
    if not at:
        return text, None
    if not _DIGEST.fullmatch(digest):
        raise ImageReferenceError(f"{digest!r} is not a digest (expected ALGORITHM:HEX)")
    if digest.startswith("sha256:") and not _SHA256.fullmatch(digest):
        raise ImageReferenceError("a sha256 digest is 64 lowercase hex digits")
    return name, digest


def _split_tag(text: str) -> tuple[str, str | None]:
    # A colon after the last slash is a tag; one before it belongs to a registry's port.
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon <= slash:
        return text, None
    name, tag = text[:colon], text[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise ImageReferenceError(
            f"{tag!r} is not a tag (up to 128 letters, digits, _ . -, not starting with . or -)"
        )
    return name, tag


def _split_registry(text: str) -> tuple[str, str]:
    first, slash, remainder = text.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if not slash or not looks_like_host:
        return DOCKER_HUB, text
    if not _DOMAIN.fullmatch(first):
        raise ImageReferenceError(f"{first!r} is not a registry host[:port]")
    return (DOCKER_HUB if first in _HUB_ALIASES else first), remainder
