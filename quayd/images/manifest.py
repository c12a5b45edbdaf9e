"""Manifests and indexes: parsed from their raw bytes, verified, and checked for the known tricks.

Pure. The digest is computed over the exact bytes received, never over re-serialised JSON.
Refused: Docker schema1 (unsigned, no content addressing of the config), documents that are
both an index and a manifest (CVE-2021-41190), a ``mediaType`` that disagrees with the HTTP
``Content-Type``, and anything larger than :data:`MAX_MANIFEST_SIZE`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quayd.images.errors import ManifestError, PlatformError, VerificationError
from quayd.images.model import Descriptor, Platform, check_digest, sha256_digest

MAX_MANIFEST_SIZE = 4 * 1024 * 1024

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

# Index entries that are not runnable images (BuildKit attestations, in-toto provenance).
_ATTESTATION = ("vnd.docker.reference.type", "attestation-manifest")


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_manifest(
    raw: bytes, *, content_type: str | None, expected_digest: str | None
) -> Index | Manifest:
    """Verify and parse a manifest or index exactly as received."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_SIZE} cap")
    if expected_digest is not None:
        actual = sha256_digest(raw)
        if actual != check_digest(expected_digest):
            raise VerificationError(
                f"manifest digest mismatch: expected {expected_digest}, got {actual}"
            )
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ManifestError(f"manifest is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ManifestError("manifest is not a JSON object")
    media_type = _media_type(document, content_type)
    if "manifests" in document and ("layers" in document or "config" in document):
        raise ManifestError(
            "document is both an index and a manifest (has 'manifests' and 'layers'/'config'); "
            "refused as ambiguous (CVE-2021-41190)"
        )
    if document.get("schemaVersion") == 1 or media_type in DOCKER_SCHEMA1:
        raise ManifestError(
            "Docker schema1 manifests are not supported (deprecated and unverifiable); "
            "re-push the image with a current Docker, Podman or skopeo"
        )
    if document.get("schemaVersion") != 2:
        raise ManifestError(f"unsupported schemaVersion {document.get('schemaVersion')!r}")
    return _index_or_manifest(document, media_type)


def _index_or_manifest(document: Mapping[str, Any], media_type: str | None) -> Index | Manifest:
    if media_type in INDEX_TYPES or (media_type is None and "manifests" in document):
        return Index(
            media_type=media_type or OCI_INDEX,
            manifests=tuple(_descriptor(d, "manifests[]") for d in _list(document, "manifests")),
        )
    if media_type in MANIFEST_TYPES or (media_type is None and "layers" in document):
        config = _descriptor(document.get("config"), "config")
        if config.media_type not in CONFIG_TYPES:
            raise ManifestError(f"unsupported config media type {config.media_type!r}")
        layers = tuple(_descriptor(d, "layers[]") for d in _list(document, "layers"))
        for layer in layers:
            if layer.media_type not in LAYER_TYPES:
                raise ManifestError(f"unsupported layer media type {layer.media_type!r}")
        return Manifest(media_type=media_type or OCI_MANIFEST, config=config, layers=layers)
    raise ManifestError(f"unsupported manifest media type {media_type!r}")


def _media_type(document: Mapping[str, Any], content_type: str | None) -> str | None:
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError("manifest mediaType is not a string")
    header = (content_type or "").split(";")[0].strip().lower() or None
    if header in ("application/json", "application/octet-stream", "text/plain"):
        header = None  # generic types some registries send: the document decides
    if declared and header and declared != header:
        raise ManifestError(
            f"manifest mediaType {declared!r} disagrees with Content-Type {header!r} "
            "(refused: CVE-2021-41190)"
        )
    if header in DOCKER_SCHEMA1:
        return header
    return declared or header


def _list(document: Mapping[str, Any], key: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise ManifestError(f"manifest field {key!r} is missing or not a list")
    return value


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestError(f"manifest {where} is not a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str):
        raise ManifestError(f"manifest {where} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"manifest {where} has an invalid size {size!r}")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ManifestError(f"manifest {where} has invalid annotations")
    return Descriptor(
        media_type=media_type,
        digest=_checked(digest, where),
        size=size,
        platform=_platform(value.get("platform"), where),
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def _checked(digest: Any, where: str) -> str:
    try:
        return check_digest(digest)
    except ManifestError as error:
        raise ManifestError(f"manifest {where}: {error}") from None


def _platform(value: Any, where: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f"manifest {where} has an invalid platform")
    os_name, arch, variant = value.get("os"), value.get("architecture"), value.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        raise ManifestError(f"manifest {where} platform lacks os or architecture")
    if variant is not None and not isinstance(variant, str):
        raise ManifestError(f"manifest {where} platform variant is not a string")
    return Platform(os_name.lower(), arch.lower(), variant.lower() if variant else None)


# --- platform selection --------------------------------------------------------------------------

# What each platform can also run, best first (containerd's platforms/compare.go).
_FALLBACKS: dict[tuple[str, str | None], tuple[tuple[str, str | None], ...]] = {
    ("arm64", "v8"): (("arm64", "v8"), ("arm64", None), ("arm", "v8"), ("arm", "v7"),
                      ("arm", "v6"), ("arm", "v5")),
    ("arm", "v8"): (("arm", "v8"), ("arm", "v7"), ("arm", "v6"), ("arm", "v5")),
    ("arm", "v7"): (("arm", "v7"), ("arm", "v6"), ("arm", "v5")),
    ("arm", "v6"): (("arm", "v6"), ("arm", "v5")),
    ("amd64", None): (("amd64", None), ("386", None)),
}  # fmt: skip


def candidates(wanted: Platform) -> list[Platform]:
    """The platforms an image may have to run on ``wanted``, best first."""
    wanted = wanted.normalized()
    options = _FALLBACKS.get((wanted.architecture, wanted.variant))
    if options is None:
        return [wanted]
    return [Platform(wanted.os, arch, variant).normalized() for arch, variant in options]


def select_platform(index: Index, wanted: Platform) -> Descriptor:
    """The first manifest of ``index`` for the best platform matching ``wanted``."""
    runnable = [
        d
        for d in index.manifests
        if d.media_type in MANIFEST_TYPES | INDEX_TYPES
        and d.annotations.get(_ATTESTATION[0]) != _ATTESTATION[1]
        and not (d.platform and d.platform.os == "unknown")
    ]
    for candidate in candidates(wanted):
        for descriptor in runnable:
            if descriptor.platform and descriptor.platform.normalized() == candidate:
                return descriptor
    offered = sorted({str(d.platform.normalized()) for d in runnable if d.platform})
    raise PlatformError(
        f"the image has no variant for {wanted.normalized()}; it offers: "
        + (", ".join(offered) or "no platforms")
    )
