"""Loading images without a registry: ``docker save`` tarballs, OCI layouts and OCI archives.

Air-gapped appliances are preloaded this way. Everything read from an archive is verified as a
pull verifies it (manifest, config and layer digests and sizes, diff_ids) and stored through the
same store and unpacker; an archive is as untrusted as a registry.

- **OCI layout**: a directory with ``oci-layout``, ``index.json`` and ``blobs/sha256/…``
  (``skopeo copy … oci:DIR:TAG``, ``umoci``, BuildKit).
- **OCI archive**: the same, as a tar (``podman save --format oci-archive``, ``docker save`` of
  Docker 25 and later).
- **Docker archive**: ``manifest.json`` listing ``Config``, ``RepoTags`` and uncompressed
  ``Layers`` (``docker save`` before Docker 25, ``podman save``).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from quayd.images.config import MAX_CONFIG_SIZE, parse_config
from quayd.images.errors import ImageError, ManifestError, VerificationError
from quayd.images.manifest import (
    MAX_MANIFEST_SIZE,
    OCI_CONFIG,
    OCI_MANIFEST,
    Index,
    Manifest,
    parse_manifest,
    select_platform,
)
from quayd.images.model import (
    ImageRecord,
    LayerRecord,
    Platform,
    chain_ids,
    check_digest,
    digest_hex,
    sha256_digest,
)
from quayd.images.pull import unpack_layer
from quayd.images.store import Store
from quayd.images.unpack import DEFAULT_LIMITS, UnpackLimits
from quayd.units.reference import ImageReferenceError, parse_reference

_CHUNK = 1024 * 1024
_REF_NAME = "org.opencontainers.image.ref.name"
_CONTAINERD_NAME = "io.containerd.image.name"
_PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"

Opener = Callable[[str], IO[bytes]]
"""Opens a member of the archive by its path inside the archive."""


class ArchiveError(ImageError):
    """The file is not an image archive quay understands, or it is inconsistent."""


@dataclass(frozen=True)
class _Candidate:
    names: tuple[str, ...]
    """Full references the archive gives this image (none when it names only a tag)."""
    manifest: bytes
    digest: str
    paths: Mapping[str, str] = field(default_factory=dict)
    """Where a blob lies in the archive, when not at ``blobs/sha256/HEX`` (docker save)."""

    def member(self, digest: str) -> str:
        return self.paths.get(digest) or _blob_name(digest)


def load_archive(
    path: Path,
    *,
    store: Store,
    reference: str | None = None,
    platform: Platform | None = None,
    limits: UnpackLimits = DEFAULT_LIMITS,
) -> list[ImageRecord]:
    """Store every image of the archive at ``path``; ``reference`` names an image that has none."""
    wanted = (platform or Platform.host()).normalized()
    with _open(path) as (opener, names):
        candidates = _oci_candidates(opener, names) if "oci-layout" in names else []
        if not candidates and "manifest.json" in names:
            candidates = _docker_candidates(opener)
        if not candidates:
            raise ArchiveError(
                f"{path}: not an image archive (no oci-layout with index.json, no manifest.json)"
            )
        records = []
        with store.pull_guard():
            for candidate in candidates:
                resolved = _resolve(opener, candidate, wanted)
                for name in _references(candidate, reference, path):
                    records.append(
                        _store(
                            opener, candidate, store, name=name, resolved=resolved, limits=limits
                        )
                    )
        return records


@contextmanager
def _open(path: Path) -> Iterator[tuple[Opener, set[str]]]:
    if path.is_dir():
        names = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}

        def open_file(name: str) -> IO[bytes]:
            member = (path / name).resolve()
            if not member.is_relative_to(path.resolve()):
                raise ArchiveError(f"{path}: {name!r} points outside the layout")
            return member.open("rb")

        yield open_file, names
        return
    try:
        archive = tarfile.open(path, "r:*")  # noqa: SIM115 - closed below, after the yield
    except (OSError, tarfile.TarError) as error:
        raise ArchiveError(f"{path}: cannot read it as a tar archive: {error}") from None
    try:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}

        def open_member(name: str) -> IO[bytes]:
            member = members.get(name)
            handle = archive.extractfile(member) if member else None
            if handle is None:
                raise ArchiveError(f"{path}: the archive has no file {name!r}")
            return handle

        yield open_member, set(members)
    finally:
        archive.close()


def _read(opener: Opener, name: str, cap: int) -> bytes:
    with opener(name) as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise ArchiveError(f"{name} is larger than {cap} bytes")
    return data


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{digest_hex(digest)}"


# --- OCI layouts and archives --------------------------------------------------------------------


def _oci_candidates(opener: Opener, names: set[str]) -> list[_Candidate]:
    if "index.json" not in names:
        raise ArchiveError("an OCI layout without index.json")
    index = parse_manifest(
        _read(opener, "index.json", MAX_MANIFEST_SIZE), content_type=None, expected_digest=None
    )
    if not isinstance(index, Index):
        raise ArchiveError("index.json is not an image index")
    candidates = []
    for descriptor in index.manifests:
        raw = _read(opener, _blob_name(descriptor.digest), MAX_MANIFEST_SIZE)
        if sha256_digest(raw) != descriptor.digest:
            raise VerificationError(f"blob {descriptor.digest} does not match its digest")
        # containerd's annotation holds a full name; the OCI one often only a tag (skopeo's
        # oci:DIR:TAG, Docker 25's docker save), which names no repository.
        full = descriptor.annotations.get(_CONTAINERD_NAME)
        ref_name = descriptor.annotations.get(_REF_NAME, "")
        if not full and ("/" in ref_name or ":" in ref_name):
            full = ref_name
        candidates.append(_Candidate((full,) if full else (), raw, descriptor.digest))
    return candidates


# --- docker save ---------------------------------------------------------------------------------


def _docker_candidates(opener: Opener) -> list[_Candidate]:
    try:
        entries = json.loads(_read(opener, "manifest.json", MAX_MANIFEST_SIZE))
    except ValueError as error:
        raise ArchiveError(f"manifest.json is not JSON: {error}") from None
    if not isinstance(entries, list):
        raise ArchiveError("manifest.json is not a list of images")
    return [_docker_candidate(opener, entry) for entry in entries]


def _docker_candidate(opener: Opener, entry: Any) -> _Candidate:
    """Describe a docker-save image as an OCI manifest (config and layers by their digests)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise ArchiveError("manifest.json entry without a Config")
    layers = entry.get("Layers")
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise ArchiveError("manifest.json entry without a list of Layers")
    config = _read(opener, entry["Config"], MAX_CONFIG_SIZE)
    paths = {sha256_digest(config): entry["Config"]}
    described = []
    for name in layers:
        digest, size = _hash_member(opener, name)
        paths[digest] = name
        described.append({"mediaType": _PLAIN_LAYER, "digest": digest, "size": size})
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": described,
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    tags = tuple(t for t in entry.get("RepoTags") or [] if isinstance(t, str))
    return _Candidate(tags, raw, sha256_digest(raw), paths)


def _hash_member(opener: Opener, name: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with opener(name) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


# --- resolving and storing -----------------------------------------------------------------------


def _resolve(
    opener: Opener, candidate: _Candidate, wanted: Platform
) -> tuple[Manifest, bytes, str]:
    raw, digest = candidate.manifest, candidate.digest
    for _ in range(3):  # an index may point at an index
        parsed = parse_manifest(raw, content_type=None, expected_digest=digest)
        if isinstance(parsed, Manifest):
            return parsed, raw, digest
        digest = select_platform(parsed, wanted).digest
        raw = _read(opener, candidate.member(digest), MAX_MANIFEST_SIZE)
    raise ManifestError("image indexes nested more than 3 deep")


def _references(candidate: _Candidate, given: str | None, path: Path) -> list[str]:
    names = [given] if given else list(candidate.names)
    if not names:
        raise ArchiveError(
            f"{path}: an image in the archive has no full name (only a tag, or none); "
            "give one with --reference NAME[:TAG]"
        )
    try:
        return [str(parse_reference(n)) for n in names]
    except ImageReferenceError as error:
        raise ArchiveError(f"{path}: bad image name: {error}") from None


def _store(
    opener: Opener,
    candidate: _Candidate,
    store: Store,
    *,
    name: str,
    resolved: tuple[Manifest, bytes, str],
    limits: UnpackLimits,
) -> ImageRecord:
    manifest, manifest_raw, manifest_digest = resolved
    config_raw = _read(opener, candidate.member(manifest.config.digest), MAX_CONFIG_SIZE)
    if sha256_digest(config_raw) != manifest.config.digest:
        raise VerificationError(f"{name}: config {manifest.config.digest} does not match")
    config = parse_config(config_raw)
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(f"{name}: the config lists {len(config.diff_ids)} diff_ids "
                            f"for {len(manifest.layers)} layers")  # fmt: skip
    chains = chain_ids(config.diff_ids)
    layers = [
        LayerRecord(d.digest, d.size, d.media_type, diff_id, chain)
        for d, diff_id, chain in zip(manifest.layers, config.diff_ids, chains, strict=True)
    ]
    for layer in layers:
        _ingest(opener, store, candidate.member(layer.digest), layer.digest, layer.size)
    store.put_blob(manifest_raw, manifest_digest)
    store.put_blob(config_raw, manifest.config.digest)
    for index, layer in enumerate(layers):
        if not store.has_layer(layer.chain_id):
            unpack_layer(store, layers, index, image=name, limits=limits)
    record = ImageRecord(
        reference=name,
        manifest_digest=manifest_digest,
        config_digest=manifest.config.digest,
        layers=tuple(layers),
        platform=Platform(config.os, config.architecture or "unknown", config.variant).normalized(),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    store.put_image(record)
    return record


def _ingest(opener: Opener, store: Store, member: str, digest: str, size: int) -> None:
    """Copy a blob from the archive into the store; the store checks digest and size."""
    check_digest(digest)
    with store.ingest(digest, size) as ingest:
        if ingest.complete:
            return
        ingest.restart()
        with opener(member) as handle:
            while chunk := handle.read(_CHUNK):
                ingest.write(chunk)
        ingest.commit()
