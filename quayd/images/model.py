"""Plain values the image layer passes around: digests, descriptors, platforms, image configs.

Everything here is pure. Digests are validated before they are ever used as a path or in a URL
(CVE-2024-3727: digests used unchecked as paths).
"""

from __future__ import annotations

import hashlib
import platform as host_platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from quayd.images.errors import ManifestError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(text: object) -> str:
    """``text`` if it is a sha256 digest (the only algorithm quay accepts), else ManifestError."""
    if not isinstance(text, str) or not _DIGEST.fullmatch(text):
        raise ManifestError(f"not a sha256 digest: {str(text)[:80]!r}")
    return text


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of a checked digest: safe to use as a file name."""
    return check_digest(digest).removeprefix("sha256:")


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI ChainIDs: L0's is its DiffID; Ln's is sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chain: list[str] = []
    for diff_id in diff_ids:
        check_digest(diff_id)
        chain.append(diff_id if not chain else sha256_digest(f"{chain[-1]} {diff_id}".encode()))
    return chain


# --- platforms -----------------------------------------------------------------------------------

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                 "armel": "arm", "i386": "386", "i686": "386"}  # fmt: skip
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``"linux/arm64/v8"``, ``"linux/amd64"``; normalised (``aarch64`` → ``arm64/v8``)."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"not a platform: {text!r} (expected OS/ARCH or OS/ARCH/VARIANT)")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None).normalized()

    @classmethod
    def host(cls) -> Platform:
        machine = host_platform.machine().lower()
        variant = None
        if machine.startswith("armv"):  # armv7l, armv6l
            machine, variant = "arm", "v" + machine[4]
        return cls("linux", machine, variant).normalized()

    def normalized(self) -> Platform:
        arch = _ARCH_ALIASES.get(self.architecture, self.architecture)
        variant = self.variant
        if self.architecture == "armhf":
            variant = variant or "v7"
        elif self.architecture == "armel":
            variant = variant or "v6"
        variant = variant or _DEFAULT_VARIANT.get(arch)
        return Platform(self.os, arch, variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# --- descriptors and image configs ---------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: what it is, its digest and its exact size."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Healthcheck:
    """Docker's HEALTHCHECK from an image config (the OCI spec has none)."""

    test: tuple[str, ...]
    """``("CMD", "/bin/check")``, ``("CMD-SHELL", "curl -f localhost")`` or ``("NONE",)``."""
    interval: timedelta | None = None
    timeout: timedelta | None = None
    start_period: timedelta | None = None
    retries: int | None = None


@dataclass(frozen=True)
class ImageConfig:
    """What the rest of quayd needs from an image's config blob."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    """``("80/tcp", "53/udp")``."""
    stop_signal: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()
    healthcheck: Healthcheck | None = None
    diff_ids: tuple[str, ...] = ()
    os: str = "linux"
    architecture: str = ""
    variant: str | None = None


@dataclass(frozen=True)
class LayerRecord:
    digest: str
    """Digest of the blob as stored (usually compressed)."""
    size: int
    media_type: str
    diff_id: str
    """Digest of the uncompressed tar."""
    chain_id: str
    """Names the unpacked directory: this layer applied on all layers below it."""


@dataclass(frozen=True)
class ImageRecord:
    """A pulled or loaded image: everything needed to run it without the registry."""

    reference: str
    """Normalised, e.g. ``docker.io/library/busybox:latest``."""
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerRecord, ...]
    platform: Platform
    created: str
    """When quay stored it (RFC 3339, UTC)."""
