"""Pulling an image into the content store, and repairing stored images.

``pull`` resolves the manifest (an index → the manifest for the wanted platform), fetches and
checks the config, then downloads the layers concurrently (a bounded thread pool) while the
calling thread unpacks them in chain order: layer N is applied while N+1, N+2 … download.
Downloads go through ``ingest/*.partial`` and resume with ``Range`` after a broken connection
and after a restart; every blob is checked against its digest and size before it is stored, and
every unpacked layer's diff_id against the config. The image is recorded only when all of it is
stored. Blobs and layers already in the store are not fetched again.

``pull = "missing"`` is the caller's: ``store.get(reference)`` says whether an image is there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from quayd.images.config import MAX_CONFIG_SIZE, parse_config
from quayd.images.errors import ImageError, ManifestError, RegistryError, VerificationError
from quayd.images.manifest import Index, Manifest, parse_manifest, select_platform
from quayd.images.model import (
    Descriptor,
    ImageConfig,
    ImageRecord,
    LayerRecord,
    Platform,
    chain_ids,
    sha256_digest,
)
from quayd.images.registry import InterruptedTransferError, RegistryClient, RetryPolicy
from quayd.images.store import DEFAULT_MIN_FREE_BYTES, LAYER_ROOT, Ingest, Store, VerifyReport
from quayd.images.unpack import apply_layer
from quayd.units.reference import ImageReference, parse_reference

MAX_INDEX_DEPTH = 3
UNPACK_ESTIMATE = 2
"""Unpacked bytes per compressed byte assumed by the disk-space check (gzip is usually 2 to 4)."""
_PROGRESS_STEP = 1024 * 1024


@dataclass(frozen=True)
class PullProgress:
    """One step of a pull. Sent from worker threads too: keep the callback quick."""

    reference: str
    kind: str
    """``"manifest"``, ``"config"`` or ``"layer"``."""
    digest: str
    phase: str
    """``"resolved"``, ``"exists"`` (already stored), ``"download"`` (bytes moving),
    ``"downloaded"``, ``"unpacking"``, ``"unpacked"``."""
    done: int = 0
    total: int = 0


ProgressCallback = Callable[[PullProgress], None]
DEFAULT_RESUME = RetryPolicy(attempts=5)


@dataclass(frozen=True)
class RepairReport:
    repaired: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)
    """Reference → why it could not be repaired (pull it again, or remove it)."""


def pull(
    reference: str,
    *,
    store: Store,
    client: RegistryClient,
    platform: Platform | None = None,
    max_concurrent: int = 3,
    progress: ProgressCallback | None = None,
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    resume: RetryPolicy = DEFAULT_RESUME,
) -> ImageRecord:
    """Pull ``reference`` (normalised as Docker does) for ``platform`` (default: this host).

    ``resume`` bounds the retries of a blob download that breaks off: each try resumes where
    the last stopped, and only tries that make no progress count against ``attempts``.
    Raises RegistryError/AuthError/NotFoundError, ManifestError/PlatformError,
    VerificationError, UnpackError or DiskSpaceError; nothing is recorded then.
    """
    image = parse_reference(reference)
    wanted = (platform or Platform.host()).normalized()
    name = str(image)
    job = _Job(store, client, image, _Reporter(name, progress), resume, max_concurrent)
    store.check_free_space(0, floor=min_free_bytes, what=f"pulling {name}")
    with store.pull_guard():
        manifest, manifest_raw, manifest_digest, from_index = _resolve(client, image, wanted)
        size = len(manifest_raw)
        job.report(PullProgress(name, "manifest", manifest_digest, "resolved", size, size))
        config_raw = job.small_blob(manifest.config, MAX_CONFIG_SIZE)
        config = parse_config(config_raw)
        _check_config(image, manifest, config, wanted, from_index=from_index)
        chains = chain_ids(config.diff_ids)
        needed = 0
        for descriptor, chain in zip(manifest.layers, chains, strict=True):
            if not store.has_blob(descriptor.digest):
                needed += descriptor.size
            if not store.has_layer(chain):
                needed += descriptor.size * UNPACK_ESTIMATE
        store.check_free_space(needed, floor=min_free_bytes, what=f"pulling {name}")
        store.put_blob(manifest_raw, manifest_digest)
        store.put_blob(config_raw, manifest.config.digest)
        layers = [
            LayerRecord(
                digest=d.digest,
                size=d.size,
                media_type=d.media_type,
                diff_id=diff_id,
                chain_id=chain,
            )
            for d, diff_id, chain in zip(manifest.layers, config.diff_ids, chains, strict=True)
        ]
        job.fetch_layers(layers)
        record = ImageRecord(
            reference=name,
            manifest_digest=manifest_digest,
            config_digest=manifest.config.digest,
            layers=tuple(layers),
            platform=Platform(
                config.os or wanted.os, config.architecture or wanted.architecture, config.variant
            ).normalized(),
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        store.put_image(record)
    return record


def repair(
    store: Store,
    client: RegistryClient,
    *,
    report: VerifyReport | None = None,
    max_concurrent: int = 3,
    progress: ProgressCallback | None = None,
    resume: RetryPolicy = DEFAULT_RESUME,
) -> RepairReport:
    """Re-fetch the blobs and re-unpack the layers that damaged images lack.

    ``report`` is what :meth:`Store.verify` returned; without one, verify runs first. Content
    is fetched by digest from the registry (and repository) each image was pulled from.
    """
    report = report if report is not None else store.verify()
    repaired: list[str] = []
    failed: dict[str, str] = {}
    for reference in report.damaged_images:
        record = store.get(reference)
        if record is None:
            continue
        image = parse_reference(record.reference)
        job = _Job(store, client, image, _Reporter(reference, progress), resume, max_concurrent)
        try:
            with store.pull_guard():
                job.restore(record)
        except ImageError as error:
            failed[reference] = str(error)
        else:
            repaired.append(reference)
    return RepairReport(repaired=tuple(repaired), failed=failed)


# --- steps ---------------------------------------------------------------------------------------


def _resolve(
    client: RegistryClient, image: ImageReference, wanted: Platform
) -> tuple[Manifest, bytes, str, bool]:
    """The image manifest for ``wanted``: its document, raw bytes, digest; and whether an
    index was in between."""
    fetched = client.get_manifest(image)
    document = parse_manifest(
        fetched.raw, content_type=fetched.content_type, expected_digest=image.digest
    )
    depth = 0
    while isinstance(document, Index):
        depth += 1
        if depth > MAX_INDEX_DEPTH:
            raise ManifestError(f"{image}: indexes nested more than {MAX_INDEX_DEPTH} deep")
        chosen = select_platform(document, wanted)
        fetched = client.get_manifest(image, chosen.digest)
        if len(fetched.raw) != chosen.size:
            raise VerificationError(
                f"{image}: manifest {chosen.digest} is {len(fetched.raw)} bytes, but the index "
                f"says {chosen.size}"
            )
        document = parse_manifest(
            fetched.raw, content_type=fetched.content_type, expected_digest=chosen.digest
        )
    return document, fetched.raw, fetched.digest, depth > 0


def _check_config(
    image: ImageReference,
    manifest: Manifest,
    config: ImageConfig,
    wanted: Platform,
    *,
    from_index: bool,
) -> None:
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"{image}: the manifest has {len(manifest.layers)} layers but the config lists "
            f"{len(config.diff_ids)} diff_ids; the image is inconsistent"
        )
    if not from_index and config.architecture:
        # A single-platform image must suit the wanted platform as an index entry would.
        offered = Platform(config.os or "linux", config.architecture, config.variant)
        only = Index(
            media_type="application/vnd.oci.image.index.v1+json",
            manifests=(Descriptor(manifest.media_type, sha256_digest(b""), 0, offered),),
        )
        select_platform(only, wanted)


class _AbortedError(Exception):
    """Another part of the pull failed; this download stops (its partial is kept)."""


@dataclass
class _Job:
    """One pull (or repair) of one image: what its steps share."""

    store: Store
    client: RegistryClient
    image: ImageReference
    report: _Reporter
    resume: RetryPolicy
    max_concurrent: int
    abort: threading.Event = field(default_factory=threading.Event)

    def small_blob(self, descriptor: Descriptor, cap: int) -> bytes:
        """A config-sized blob in memory, checked against digest and size."""
        if self.store.has_blob(descriptor.digest):
            return self.store.read_blob(descriptor.digest)
        if descriptor.size > cap:
            raise ManifestError(
                f"{self.image}: blob {descriptor.digest} is over the {cap} byte cap"
            )
        attempt = 0
        while True:
            body = bytearray()
            try:
                with self.client.open_blob(self.image, descriptor.digest) as blob:
                    for chunk in blob.chunks():
                        body += chunk
                        if len(body) > descriptor.size:
                            break
            except InterruptedTransferError:
                attempt += 1
                if attempt >= self.resume.attempts:
                    raise
                time.sleep(self.resume.delay(attempt - 1))
                continue
            data = bytes(body)
            if len(data) != descriptor.size or sha256_digest(data) != descriptor.digest:
                raise VerificationError(
                    f"{self.image}: blob {descriptor.digest} from {self.image.registry} does not "
                    f"match its digest and size ({len(data)} bytes, expected "
                    f"{descriptor.size}); it was discarded"
                )
            return data

    def restore(self, record: ImageRecord) -> None:
        """Fetch and unpack whatever of ``record`` the store lacks."""
        if not self.store.has_blob(record.manifest_digest):
            fetched = self.client.get_manifest(self.image, record.manifest_digest)
            self.store.put_blob(fetched.raw, record.manifest_digest)
        if not self.store.has_blob(record.config_digest):
            raw = self.store.read_blob(record.manifest_digest)
            document = parse_manifest(raw, content_type=None, expected_digest=None)
            if not isinstance(document, Manifest):
                raise ManifestError(f"{record.reference}: the stored manifest is an index")
            config = self.small_blob(document.config, MAX_CONFIG_SIZE)
            self.store.put_blob(config, record.config_digest)
        self.fetch_layers(record.layers)

    def fetch_layers(self, layers: Sequence[LayerRecord]) -> None:
        """Download missing blobs in parallel; unpack missing layers in chain order meanwhile."""
        with ThreadPoolExecutor(
            max(1, self.max_concurrent), thread_name_prefix="quay-pull"
        ) as pool:
            downloads: dict[int, Future[None]] = {}
            for index, layer in enumerate(layers):
                if self.store.has_blob(layer.digest):
                    self.report(self._event(layer, "exists", 0))
                    continue
                downloads[index] = pool.submit(self.download, layer)
            try:
                for index, layer in enumerate(layers):
                    if index in downloads:
                        downloads[index].result()
                    if self.store.has_layer(layer.chain_id):
                        continue
                    with self.store.layer_lock(layer.chain_id):
                        if not self.store.has_layer(layer.chain_id):
                            self.unpack(layers, index)
            except BaseException:
                self.abort.set()
                for future in downloads.values():
                    future.cancel()
                raise

    def download(self, layer: LayerRecord) -> None:
        """Fetch one blob into the store, resuming from its partial download."""
        with self.store.ingest(layer.digest, layer.size) as ingest:
            restarted = False
            stalls = 0
            while not ingest.complete:
                if ingest.offset == layer.size:
                    resumed = ingest.resumed_from > 0
                    try:
                        ingest.commit()  # on a mismatch, empties the partial
                    except VerificationError as error:
                        if resumed and not restarted:
                            # The kept prefix may be what is wrong (a power cut): start over once.
                            restarted = True
                            continue
                        ingest.discard()
                        raise VerificationError(
                            f"{self.image}: layer {error} (fetched from {self.image.registry}, "
                            f"repository {self.image.repository})"
                        ) from None
                    break
                before = ingest.offset
                try:
                    self._transfer(layer, ingest)
                except InterruptedTransferError as error:
                    stalls = 0 if ingest.offset > before else stalls + 1
                    if stalls >= self.resume.attempts:
                        raise RegistryError(
                            f"{error}; gave up on blob {layer.digest} after {stalls} tries "
                            f"without progress ({ingest.offset} of {layer.size} bytes are kept "
                            "to resume)"
                        ) from None
                    time.sleep(self.resume.delay(stalls))
                    continue
                if ingest.offset < layer.size:  # the body ended early without an error
                    stalls = 0 if ingest.offset > before else stalls + 1
                    if stalls >= self.resume.attempts:
                        raise RegistryError(
                            f"{self.image.registry} keeps ending blob {layer.digest} of "
                            f"repository {self.image.repository} early ({ingest.offset} of "
                            f"{layer.size} bytes)"
                        )
                    time.sleep(self.resume.delay(stalls))
        self.report(self._event(layer, "downloaded", layer.size))

    def _transfer(self, layer: LayerRecord, ingest: Ingest) -> None:
        """One request's worth of a blob, appended to ``ingest``."""
        if self.abort.is_set():
            raise _AbortedError
        with self.client.open_blob(self.image, layer.digest, ingest.offset) as blob:
            if blob.offset != ingest.offset:
                ingest.restart()
            reported = ingest.offset
            for chunk in blob.chunks():
                if self.abort.is_set():
                    raise _AbortedError
                try:
                    ingest.write(chunk)
                except VerificationError as error:
                    ingest.discard()
                    raise VerificationError(f"{self.image}: {error} (from {blob.where})") from None
                if ingest.offset - reported >= _PROGRESS_STEP:
                    reported = ingest.offset
                    self.report(self._event(layer, "download", ingest.offset))

    def unpack(self, layers: Sequence[LayerRecord], index: int) -> None:
        layer = layers[index]
        self.report(self._event(layer, "unpacking", 0))
        unpack_layer(self.store, layers, index, image=str(self.image))
        self.report(self._event(layer, "unpacked", layer.size))

    def _event(self, layer: LayerRecord, phase: str, done: int) -> PullProgress:
        return PullProgress(self.report.name, "layer", layer.digest, phase, done, layer.size)


def unpack_layer(store: Store, layers: Sequence[LayerRecord], index: int, *, image: str) -> Path:
    """Apply stored blob ``layers[index]`` on its parents (``layers[:index]``, already
    unpacked) into a staging dir; check its diff_id; move it into place. Returns its root.

    ``image`` names the image in error messages.
    """
    layer = layers[index]
    parents = [store.layer_path(below.chain_id) for below in reversed(layers[:index])]
    staging = store.stage_layer()
    try:
        with store.blob_path(layer.digest).open("rb") as stream:
            result = apply_layer(stream, staging / LAYER_ROOT, parents=parents)
        if result.diff_id != layer.diff_id:
            raise VerificationError(
                f"{image}: layer {layer.digest} unpacks to diff_id {result.diff_id}, but the "
                f"image config says {layer.diff_id}; the image is inconsistent and was not stored"
            )
        return store.commit_layer(
            staging,
            layer.chain_id,
            {
                "digest": layer.digest,
                "diff_id": layer.diff_id,
                "media_type": layer.media_type,
                "entries": result.entries,
                "uncompressed_bytes": result.uncompressed_bytes,
            },
        )
    except BaseException:
        store.discard_staging(staging)
        raise


class _Reporter:
    def __init__(self, name: str, callback: ProgressCallback | None) -> None:
        self.name = name
        self._callback = callback

    def __call__(self, event: PullProgress) -> None:
        if self._callback is not None:
            self._callback(event)
