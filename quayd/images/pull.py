"""Pulling an image into the content store, and repairing stored images.

``pull`` resolves the manifest (an index → the manifest for the wanted platform), fetches and
checks the config, then downloads the layers concurrently (a bounded thread pool) while the
calling thread unpacks them in chain order: layer N is applied while N+1, N+2 … download.
Downloads go through ``ingest/*.partial`` and resume with ``Range`` after a broken connection
and after a restart; every blob is checked against its digest and size before it is stored, and
every unpacked layer's diff_id against the config. The image is recorded only when all of it is
stored. Blobs and layers already in the store are not fetched again.

A layer whose download is still running when its turn to unpack comes is unpacked *while* it
downloads: the unpack reads the partial file as it grows (:class:`_FeedReader`, woken by the
downloader through a condition), not from the network and not from memory. Layers still unpack
one at a time in chain order. A streamed layer is committed only once its blob is verified and
stored, the bytes the unpack read hash to the blob's digest and its diff_id is the config's; if
the download fails, the unpack stops, is discarded, and the download's error is raised. If the
partial file is rewritten from its start meanwhile (a registry answering 200 to a ``Range``
request, or a resumed partial that failed verification and was fetched again), what was read
may not be the final bytes: that unpack is discarded and the layer unpacked again from the
verified blob.

``pull = "missing"`` is the caller's: ``store.get(reference)`` says whether an image is there.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

from quayd.images.config import MAX_CONFIG_SIZE, parse_config
from quayd.images.errors import (
    ImageError,
    ManifestError,
    RegistryError,
    UnpackError,
    VerificationError,
)
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
from quayd.images.ratelimit import RateLimiter
from quayd.images.registry import InterruptedTransferError, RegistryClient, RetryPolicy
from quayd.images.store import DEFAULT_MIN_FREE_BYTES, LAYER_ROOT, Ingest, Store, VerifyReport
from quayd.images.unpack import DEFAULT_LIMITS, UnpackLimits, UnpackResult, apply_layer
from quayd.units.reference import ImageReference, parse_reference

MAX_INDEX_DEPTH = 3
UNPACK_ESTIMATE = 2
"""Unpacked bytes per compressed byte assumed by the disk-space check (gzip is usually 2 to 4)."""
_PROGRESS_STEP = 1024 * 1024
_STREAM_READ = 1024 * 1024
"""Most bytes a streamed unpack reads from the partial file at once."""
_STREAM_WAIT = 5.0
"""Seconds a streamed unpack waits for a word from its download before it looks whether the
download is still running (a safety net: every append, rewrite and end wakes it at once)."""


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
    limits: UnpackLimits = DEFAULT_LIMITS,
    max_rate: int | None = None,
) -> ImageRecord:
    """Pull ``reference`` (normalised as Docker does) for ``platform`` (default: this host).

    ``max_rate`` caps the layers' download rate in bytes per second, all threads together (an
    update's background pull, ``[updates] bandwidth``); None: no cap.

    ``resume`` bounds the retries of a blob download that breaks off: each try resumes where
    the last stopped, and only tries that make no progress count against ``attempts``.
    Raises RegistryError/AuthError/NotFoundError, ManifestError/PlatformError,
    VerificationError, UnpackError or DiskSpaceError; nothing is recorded then.
    """
    image = parse_reference(reference)
    wanted = (platform or Platform.host()).normalized()
    name = str(image)
    job = _Job(store, client, image, _Reporter(name, progress), resume, max_concurrent, limits)
    job.limiter = RateLimiter(max_rate) if max_rate is not None else None
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


def resolve_digest(
    reference: str, *, client: RegistryClient, platform: Platform | None = None
) -> str:
    """The digest of the manifest ``reference`` (a tag) points at now for ``platform``: what a
    pull would record as ``manifest_digest``, read without downloading any layer (an update's
    check: through an index, the platform's manifest, as the store keys images)."""
    wanted = (platform or Platform.host()).normalized()
    return _resolve(client, parse_reference(reference), wanted)[2]


def repair(
    store: Store,
    client: RegistryClient,
    *,
    report: VerifyReport | None = None,
    max_concurrent: int = 3,
    progress: ProgressCallback | None = None,
    resume: RetryPolicy = DEFAULT_RESUME,
    limits: UnpackLimits = DEFAULT_LIMITS,
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
        reporter = _Reporter(reference, progress)
        job = _Job(store, client, image, reporter, resume, max_concurrent, limits)
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
    limits: UnpackLimits
    abort: threading.Event = field(default_factory=threading.Event)
    limiter: RateLimiter | None = None

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
        """Download missing blobs in parallel; unpack missing layers in chain order meanwhile.

        A layer whose download is still running when its turn comes is streamed from its
        partial file (:meth:`unpack_streamed`); one whose blob is complete is read from the
        blob file (:meth:`unpack`).
        """
        feeds: dict[int, _Feed] = {}
        try:
            with ThreadPoolExecutor(
                max(1, self.max_concurrent), thread_name_prefix="quay-pull"
            ) as pool:
                downloads: dict[int, Future[None]] = {}
                for index, layer in enumerate(layers):
                    if self.store.has_blob(layer.digest):
                        self.report(self._event(layer, "exists", 0))
                        continue
                    feeds[index] = _Feed(layer.size)
                    downloads[index] = pool.submit(self._download_feeding, layer, feeds[index])
                try:
                    for index, layer in enumerate(layers):
                        download = downloads.get(index)
                        if not self.store.has_layer(layer.chain_id):
                            if download is not None and not download.done():
                                self.unpack_streamed(layers, index, feeds[index], download)
                            else:
                                if download is not None:
                                    download.result()
                                self.unpack(layers, index)
                        if download is not None:
                            download.result()
                            feeds[index].close()
                except BaseException:
                    self.abort.set()
                    for future in downloads.values():
                        future.cancel()
                    raise
        finally:
            for feed in feeds.values():  # every download has ended: none attaches any more
                feed.close()

    def _download_feeding(self, layer: LayerRecord, feed: _Feed) -> None:
        """:meth:`download`, telling ``feed`` how it ends."""
        try:
            self.download(layer, feed)
        except BaseException:
            feed.fail()
            raise
        feed.finish()

    def download(self, layer: LayerRecord, feed: _Feed | None = None) -> None:
        """Fetch one blob into the store, resuming from its partial download.

        ``feed`` (if any) is told where the partial file is, how far it is written and when it
        is rewritten from its start, for an unpack that reads it meanwhile.
        """
        with self.store.ingest(layer.digest, layer.size) as ingest:
            if feed is not None:
                feed.attach(ingest)
            restarted = False
            stalls = 0
            while not ingest.complete:
                if ingest.offset == layer.size:
                    resumed = ingest.resumed_from > 0
                    try:
                        ingest.commit()  # on a mismatch, empties the partial
                    except VerificationError as error:
                        if feed is not None:
                            feed.rewound()
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
                    self._transfer(layer, ingest, feed)
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

    def _transfer(self, layer: LayerRecord, ingest: Ingest, feed: _Feed | None) -> None:
        """One request's worth of a blob, appended to ``ingest``."""
        if self.abort.is_set():
            raise _AbortedError
        with self.client.open_blob(self.image, layer.digest, ingest.offset) as blob:
            if blob.offset != ingest.offset:
                if feed is not None:
                    feed.rewound()  # before the partial is emptied
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
                if feed is not None:
                    feed.grew(ingest.offset)
                if self.limiter is not None:
                    self.limiter.take(len(chunk))
                if ingest.offset - reported >= _PROGRESS_STEP:
                    reported = ingest.offset
                    self.report(self._event(layer, "download", ingest.offset))

    def unpack(self, layers: Sequence[LayerRecord], index: int) -> None:
        """Unpack ``layers[index]`` from its stored blob (once, across concurrent pulls)."""
        layer = layers[index]
        with self.store.layer_lock(layer.chain_id):
            if self.store.has_layer(layer.chain_id):
                return
            self.report(self._event(layer, "unpacking", 0))
            unpack_layer(self.store, layers, index, image=str(self.image), limits=self.limits)
        self.report(self._event(layer, "unpacked", layer.size))

    def unpack_streamed(
        self, layers: Sequence[LayerRecord], index: int, feed: _Feed, download: Future[None]
    ) -> None:
        """Unpack ``layers[index]`` while ``download`` fetches its blob, reading the partial
        file as it grows; on return the blob is stored and the layer unpacked.

        The staged layer is committed only when the download stored the blob and the bytes the
        unpack read are the blob (same size, same digest, no rewrite of the partial in
        between) with the config's diff_id. A failed download raises its own error. A rewrite of
        the partial (rare) discards the streamed unpack, and the layer is unpacked again from
        the stored blob. The layer lock is taken only to commit: a failed pull leaves nothing.
        """
        layer = layers[index]
        self.report(self._event(layer, "unpacking", 0))
        staging = self.store.stage_layer()
        try:
            result = self._apply_streamed(layers, index, feed, download, staging)
            if result is not None:
                _check_diff_id(layer, result.diff_id, image=str(self.image))
                with self.store.layer_lock(layer.chain_id):
                    if self.store.has_layer(layer.chain_id):  # another pull unpacked it
                        self.store.discard_staging(staging)
                    else:
                        self.store.commit_layer(staging, layer.chain_id, _layer_info(layer, result))
        except BaseException:
            self.store.discard_staging(staging)
            raise
        if result is None:
            # Rare: the partial was rewritten under the unpack. Start again from the blob.
            self.store.discard_staging(staging)
            with self.store.layer_lock(layer.chain_id):
                if not self.store.has_layer(layer.chain_id):
                    unpack_layer(
                        self.store, layers, index, image=str(self.image), limits=self.limits
                    )
        self.report(self._event(layer, "unpacked", layer.size))

    def _apply_streamed(
        self,
        layers: Sequence[LayerRecord],
        index: int,
        feed: _Feed,
        download: Future[None],
        staging: Path,
    ) -> UnpackResult | None:
        """Apply ``layers[index]`` into ``staging`` from its growing partial file; wait for
        the download. Its result if what it read is the stored blob, else None. Raises the
        download's error if it failed, and an UnpackError of the blob's own bytes."""
        parents = [self.store.layer_path(below.chain_id) for below in reversed(layers[:index])]
        reader = _FeedReader(feed, download)
        result = None
        try:
            result = apply_layer(
                cast(BinaryIO, reader), staging / LAYER_ROOT, parents=parents, limits=self.limits
            )
        except _StreamBrokenError:
            pass  # the download failed (raised below), or what was read is not final
        except UnpackError:
            download.result()  # a failed download is the better explanation
            if reader.consistent():
                raise  # the verified blob's own bytes do not unpack
        download.result()
        if result is None or not reader.verified(layers[index].digest):
            return None
        return result

    def _event(self, layer: LayerRecord, phase: str, done: int) -> PullProgress:
        return PullProgress(self.report.name, "layer", layer.digest, phase, done, layer.size)


def unpack_layer(
    store: Store,
    layers: Sequence[LayerRecord],
    index: int,
    *,
    image: str,
    limits: UnpackLimits = DEFAULT_LIMITS,
) -> Path:
    """Apply stored blob ``layers[index]`` on its parents (``layers[:index]``, already
    unpacked) into a staging dir; check its diff_id; move it into place. Returns its root.

    ``image`` names the image in error messages; ``limits`` caps what one layer may hold.
    """
    layer = layers[index]
    parents = [store.layer_path(below.chain_id) for below in reversed(layers[:index])]
    staging = store.stage_layer()
    try:
        with store.blob_path(layer.digest).open("rb") as stream:
            result = apply_layer(stream, staging / LAYER_ROOT, parents=parents, limits=limits)
        _check_diff_id(layer, result.diff_id, image=image)
        return store.commit_layer(staging, layer.chain_id, _layer_info(layer, result))
    except BaseException:
        store.discard_staging(staging)
        raise


def _check_diff_id(layer: LayerRecord, diff_id: str, *, image: str) -> None:
    if diff_id != layer.diff_id:
        raise VerificationError(
            f"{image}: layer {layer.digest} unpacks to diff_id {diff_id}, but the "
            f"image config says {layer.diff_id}; the image is inconsistent and was not stored"
        )


def _layer_info(layer: LayerRecord, result: UnpackResult) -> dict[str, object]:
    """What the layer's marker records."""
    return {
        "digest": layer.digest,
        "diff_id": layer.diff_id,
        "media_type": layer.media_type,
        "entries": result.entries,
        "uncompressed_bytes": result.uncompressed_bytes,
    }


# --- streaming a layer from its partial download -------------------------------------------------


class _StreamBrokenError(Exception):
    """A streamed unpack cannot go on: its download failed, or the partial file it reads was
    rewritten from the start (or cannot be read). The download's outcome says which."""


class _Feed:
    """What one layer's download tells the unpack that reads its partial file meanwhile.

    The downloader (a pool thread) calls :meth:`attach` once it holds the ingest, :meth:`grew`
    after each append, :meth:`rewound` when the partial is about to be (or was just) emptied,
    then :meth:`finish` or :meth:`fail`; each wakes the reader waiting on :attr:`changed`. The
    reader reads through its own file descriptor of the partial's inode, which stays valid when
    the verified blob is renamed into ``blobs/``. The pulling thread closes it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.changed = threading.Condition()
        self.attached = False
        self.fd = -1
        """Read-only, of the partial file's inode; -1 when there is none to read (another
        writer stored the blob first, or it could not be opened)."""
        self.written = 0
        """Bytes of the partial file that are written (valid until the next rewind)."""
        self.rewinds = 0
        """How often the partial was emptied to be written again from its start."""
        self.state = "running"
        """``"running"``, ``"done"`` (the blob is stored) or ``"failed"``."""
        self._closed = False

    def attach(self, ingest: Ingest) -> None:
        """Called with the ingest's lock held: the partial at ``ingest.path`` is this
        download's own file (only the lock holder renames or removes it; prune waits for
        pulls), so opening it by name opens the inode being written."""
        with self.changed:
            if self._closed:
                return
            if not ingest.complete:
                try:
                    self.fd = os.open(ingest.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    self.fd = -1  # the unpack waits for the blob instead
                self.written = ingest.offset  # a resumed partial is streamed from byte 0
            self.attached = True
            self.changed.notify_all()

    def grew(self, offset: int) -> None:
        with self.changed:
            self.written = offset
            self.changed.notify_all()

    def rewound(self) -> None:
        with self.changed:
            self.rewinds += 1
            self.written = 0
            self.changed.notify_all()

    def finish(self) -> None:
        self._end("done")

    def fail(self) -> None:
        self._end("failed")

    def _end(self, state: str) -> None:
        with self.changed:
            self.state = state
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self._closed = True
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


class _FeedReader:
    """A read-only binary stream of a blob being downloaded, for :func:`apply_layer`.

    ``read`` returns bytes as soon as the downloader has written past the position (short reads
    are normal), waiting on the feed's condition until then; it ends (``b""``) at the blob's
    size and raises :class:`_StreamBrokenError` when the download fails or rewinds. The bytes
    handed out are hashed, so :meth:`verified` can tell whether they were the blob.
    """

    def __init__(self, feed: _Feed, download: Future[None]) -> None:
        self._feed = feed
        self._download = download
        self._hash = hashlib.sha256()
        self.position = 0
        self._intact = True
        with feed.changed:
            self._rewinds = feed.rewinds

    def read(self, size: int = -1) -> bytes:
        feed = self._feed
        want = _STREAM_READ if size < 0 else min(size, _STREAM_READ)
        if want == 0 or self.position >= feed.size:
            return b""
        with feed.changed:
            while True:
                if feed.rewinds != self._rewinds:
                    self._intact = False
                    raise _StreamBrokenError("the partial download was rewritten")
                if feed.state == "failed":
                    raise _StreamBrokenError("the download failed")
                if feed.attached:
                    if feed.fd < 0:
                        raise _StreamBrokenError("there is no partial download to read")
                    if feed.written > self.position:
                        break
                    if feed.state == "done":  # stored, yet shorter than the position: no
                        raise _StreamBrokenError("the download ended short")
                woken = feed.changed.wait(_STREAM_WAIT)
                if not woken and self._download.done() and feed.state == "running":
                    raise _StreamBrokenError("the download stopped")  # cancelled before it ran
            count = min(want, feed.written - self.position)
            fd = feed.fd
        data = os.pread(fd, count, self.position)
        if len(data) < count:  # emptied under us: a rewind the feed is about to announce
            self._intact = False
            raise _StreamBrokenError("the partial download shrank")
        self._hash.update(data)
        self.position += count
        return data

    def consistent(self) -> bool:
        """Whether what was read is a prefix of the blob's final bytes. Ask once the download
        ended: every rewrite of the partial was announced by then."""
        with self._feed.changed:
            return self._intact and self._feed.rewinds == self._rewinds

    def verified(self, digest: str) -> bool:
        """Whether the bytes read are the whole blob ``digest`` (ask once it is stored)."""
        return (
            self.consistent()
            and self.position == self._feed.size
            and "sha256:" + self._hash.hexdigest() == digest
        )


class _Reporter:
    def __init__(self, name: str, callback: ProgressCallback | None) -> None:
        self.name = name
        self._callback = callback

    def __call__(self, event: PullProgress) -> None:
        if self._callback is not None:
            self._callback(event)
