"""The local content store: verified blobs, unpacked layers and image records.

Layout under ``<state_dir>/images/``::

    blobs/sha256/<hex>        complete blobs whose sha256 was checked while writing
    ingest/<hex>.partial      downloads in progress, kept across restarts to resume with Range
    layers/<chain-hex>/root/  a layer applied on its parents: an overlay lower dir
    layers/<chain-hex>/layer.json   the completion marker, written before the rename
    layers/.staging-*/        layers being unpacked (renamed into place when complete)
    images.json               reference → image record, replaced atomically
    .gc.lock, .images.lock    flock files (pulls share .gc.lock; prune and verify take it alone)

Invariants: a blob is in ``blobs/`` only once its digest and size were checked and it was
fsynced; a layer directory is renamed into place only after ``syncfs`` and with its marker; an
image record is written only when every blob and layer it names is in place. So nothing ever
points at content that is not complete and verified, even after a power cut; ``verify()``
re-hashes everything anyway, since disks and people are not perfect.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from quayd.atomicfile import fsync_directory, replace_file, write_all
from quayd.images.config import parse_config
from quayd.images.errors import DiskSpaceError, ImageError, StoreError, VerificationError
from quayd.images.model import (
    ImageConfig,
    ImageRecord,
    LayerRecord,
    Platform,
    check_digest,
    digest_hex,
    sha256_digest,
)
from quayd.units.reference import parse_reference
from quayd.units.settings import Settings

DEFAULT_MIN_FREE_BYTES = 512 * 1024 * 1024
"""Free space a pull leaves on the state filesystem (not in the settings yet)."""
LAYER_MARKER = "layer.json"
LAYER_ROOT = "root"
_FORMAT_VERSION = 1
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`Store.verify` found and removed."""

    checked_blobs: int = 0
    bad_blobs: tuple[str, ...] = ()
    """Digests of blobs whose content did not match (truncated, empty, altered): removed."""
    bad_layers: tuple[str, ...] = ()
    """Chain IDs of layer directories without a completion marker: removed."""
    missing: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per damaged image: the blob digests and layer chain IDs it lacks now."""
    removed_leftovers: tuple[str, ...] = ()
    """Staging directories and temporary files of interrupted writes."""

    @property
    def damaged_images(self) -> tuple[str, ...]:
        """References that need :func:`quayd.images.pull.repair` (or a new pull) to run."""
        return tuple(sorted(self.missing))

    @property
    def ok(self) -> bool:
        return not (self.bad_blobs or self.bad_layers or self.missing)


@dataclass(frozen=True)
class PruneReport:
    removed_images: tuple[str, ...] = ()
    removed_blobs: tuple[str, ...] = ()
    removed_layers: tuple[str, ...] = ()
    removed_partials: tuple[str, ...] = ()
    freed_bytes: int = 0


@dataclass
class _Index:
    """images.json: the image each reference names, and the one it named before."""

    images: dict[str, ImageRecord]
    previous: dict[str, ImageRecord]


class Store:
    """The content store under ``root`` (``<state_dir>/images``). Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"
        self.layers = root / "layers"
        self.index = root / "images.json"
        for directory in (self.blobs, self.ingest_dir, self.layers):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> Store:
        return cls(Path(settings.state_dir) / "images")

    # --- paths and presence --------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def layer_dir(self, chain_id: str) -> Path:
        return self.layers / digest_hex(chain_id)

    def layer_path(self, chain_id: str) -> Path:
        """The unpacked layer: mount it as an overlay lower dir."""
        return self.layer_dir(chain_id) / LAYER_ROOT

    def has_layer(self, chain_id: str) -> bool:
        return (self.layer_dir(chain_id) / LAYER_MARKER).is_file()

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"blob {digest} is missing from {self.blobs}; run verify and repair, or pull again"
            ) from None

    def image_config(self, record: ImageRecord) -> ImageConfig:
        return parse_config(self.read_blob(record.config_digest))

    # --- image records -------------------------------------------------------------------------

    def images(self) -> dict[str, ImageRecord]:
        return self._read_index().images

    def previous(self, reference: str) -> ImageRecord | None:
        """The image ``reference`` named before its last update, kept for a rollback."""
        return self._read_index().previous.get(str(parse_reference(reference)))

    def _read_index(self) -> _Index:
        try:
            raw = self.index.read_bytes()
        except FileNotFoundError:
            return _Index({}, {})
        try:
            document = json.loads(raw)
            return _Index(
                {ref: _record_from(entry) for ref, entry in document["images"].items()},
                {ref: _record_from(e) for ref, e in document.get("previous", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError, ImageError) as error:
            raise StoreError(
                f"{self.index} is damaged ({error}); move it away and pull the images again"
            ) from None

    def get(self, reference: str) -> ImageRecord | None:
        """The stored image for ``reference`` (normalised: ``busybox`` finds
        ``docker.io/library/busybox:latest``), or None."""
        return self.images().get(str(parse_reference(reference)))

    def put_image(self, record: ImageRecord) -> None:
        """Record an image. Everything it names must already be stored (else StoreError)."""
        missing = [d for d in _blob_digests(record) if not self.has_blob(d)]
        missing += [layer.chain_id for layer in record.layers if not self.has_layer(layer.chain_id)]
        if missing:
            raise StoreError(f"refusing to record {record.reference}: missing {missing}")
        with self._index_locked() as index:
            replaced = index.images.get(record.reference)
            if replaced is not None and replaced.manifest_digest != record.manifest_digest:
                # Kept (content too) until the next update, so a failed update can roll back.
                index.previous[record.reference] = replaced
            index.images[record.reference] = record

    def remove(self, reference: str) -> bool:
        """Forget an image and its previous version (their content goes at the next
        :meth:`prune`). False if unknown."""
        key = str(parse_reference(reference))
        with self._index_locked() as index:
            index.previous.pop(key, None)
            return index.images.pop(key, None) is not None

    @contextlib.contextmanager
    def _index_locked(self) -> Iterator[_Index]:
        """Read-modify-write of images.json, under a thread lock and a flock."""
        with self._lock, _flocked(self.root / ".images.lock", fcntl.LOCK_EX):
            index = self._read_index()
            before = (dict(index.images), dict(index.previous))
            yield index
            if (index.images, index.previous) != before:
                self._write_index(index)

    def _write_index(self, index: _Index) -> None:
        images, previous = index.images, index.previous
        document = {
            "version": _FORMAT_VERSION,
            "images": {ref: record_to_json(images[ref]) for ref in sorted(images)},
            "previous": {ref: record_to_json(previous[ref]) for ref in sorted(previous)},
        }
        data = json.dumps(document, indent=1).encode() + b"\n"
        replace_file(self.index, data)

    # --- blobs ---------------------------------------------------------------------------------

    def put_blob(self, data: bytes, digest: str) -> Path:
        """Store a small blob held in memory, after checking its digest."""
        actual = sha256_digest(data)
        if actual != check_digest(digest):
            raise VerificationError(f"blob {digest} hashes to {actual}; it was not stored")
        path = self.blob_path(digest)
        if not path.is_file():
            replace_file(path, data, mode=0o600)
        return path

    def ingest(self, digest: str, size: int) -> Ingest:
        """Open (or resume) the partial download of blob ``digest`` of ``size`` bytes."""
        return Ingest(self, check_digest(digest), size)

    # --- layers --------------------------------------------------------------------------------

    def stage_layer(self) -> Path:
        """A fresh staging directory; unpack into its ``root`` subdirectory (created here)."""
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.layers))
        (staging / LAYER_ROOT).mkdir(mode=0o755)
        return staging

    def commit_layer(self, staging: Path, chain_id: str, info: Mapping[str, Any]) -> Path:
        """Make a staged layer durable and move it into place; returns its root.

        The marker is written inside the staging dir, the filesystem synced (``syncfs``), then
        the dir renamed and the parent fsynced: a renamed dir with a marker is complete.
        """
        target = self.layer_dir(chain_id)
        marker = dict(info, chain_id=chain_id, stored=_now())
        _write_synced(staging / LAYER_MARKER, json.dumps(marker, indent=1).encode() + b"\n")
        syncfs(staging)
        try:
            os.rename(staging, target)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if self.has_layer(chain_id):  # another pull stored it meanwhile
                self.discard_staging(staging)
                return self.layer_path(chain_id)
            _remove_tree(target)  # a damaged one (no marker): replace it
            os.rename(staging, target)
        fsync_directory(self.layers)
        return self.layer_path(chain_id)

    @contextlib.contextmanager
    def layer_lock(self, chain_id: str) -> Iterator[None]:
        """Held while unpacking ``chain_id``, so concurrent pulls unpack a layer once."""
        with _flocked(self.layers / f".lock-{digest_hex(chain_id)}", fcntl.LOCK_EX):
            yield

    def discard_staging(self, staging: Path) -> None:
        if staging.parent == self.layers and staging.name.startswith(".staging-"):
            _remove_tree(staging)

    # --- guards --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def pull_guard(self) -> Iterator[None]:
        """Held by pulls (shared): prune and verify (exclusive) wait for them, across processes."""
        with _flocked(self.root / ".gc.lock", fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with _flocked(self.root / ".gc.lock", fcntl.LOCK_EX):
            yield

    def sweep_leftovers(self) -> list[str]:
        """Remove what a process killed mid-pull left (layer staging dirs, temporary files),
        unless a pull runs now in another process (``quayctl image pull --local``): then the
        next sweep or verify removes them. The paths removed. The agent calls it at its start,
        before its own pulls: a kill -9 or a power cut mid-unpack leaves a staging dir behind
        for every layer it was unpacking (found by tests/faults/crashes.py)."""
        try:
            with _flocked(self.root / ".gc.lock", fcntl.LOCK_EX | fcntl.LOCK_NB):
                return self._remove_leftovers()
        except BlockingIOError:
            return []

    def check_free_space(
        self, needed: int = 0, *, floor: int = DEFAULT_MIN_FREE_BYTES, what: str = "the pull"
    ) -> None:
        """DiskSpaceError if storing ``needed`` more bytes would leave less than ``floor`` free."""
        usage = shutil.disk_usage(self.root)
        if usage.free - needed < floor:
            need = f", {what} needs about {_size(needed)} more" if needed else ""
            raise DiskSpaceError(
                f"not enough disk space for {what}: {self.root} has {_size(usage.free)} free"
                f"{need}, and quay keeps at least {_size(floor)} free; remove unused images "
                "(prune) or free space on that filesystem"
            )

    # --- maintenance ---------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Re-hash every blob and check every layer marker; remove what is bad.

        Returns which images are now damaged; :func:`quayd.images.pull.repair` re-fetches and
        re-unpacks what they lack. Waits for running pulls.
        """
        with self._exclusive():
            leftovers = self._remove_leftovers()
            bad_blobs: list[str] = []
            checked = 0
            for path in sorted(self.blobs.iterdir()):
                checked += 1
                if not _is_hex_name(path.name) or _hash_file(path) != path.name:
                    bad_blobs.append(f"sha256:{path.name}")
                    _unlink(path)
            if bad_blobs:
                fsync_directory(self.blobs)
            bad_layers: list[str] = []
            for path in sorted(self.layers.iterdir()):
                if path.name.startswith("."):
                    continue
                if not _is_hex_name(path.name) or not _marker_ok(path):
                    bad_layers.append(f"sha256:{path.name}")
                    _remove_tree(path)
            self._drop_damaged_previous()
            missing: dict[str, tuple[str, ...]] = {}
            for reference, record in self.images().items():
                lacking = [d for d in _blob_digests(record) if not self.has_blob(d)]
                lacking += [x.chain_id for x in record.layers if not self.has_layer(x.chain_id)]
                if lacking:
                    missing[reference] = tuple(lacking)
            return VerifyReport(
                checked_blobs=checked,
                bad_blobs=tuple(bad_blobs),
                bad_layers=tuple(bad_layers),
                missing=missing,
                removed_leftovers=tuple(leftovers),
            )

    def prune(self, keep: Iterable[str] | None = None) -> PruneReport:
        """Delete blobs, layers and partial downloads that no image record references.

        With ``keep``, image records whose reference is not in it are removed first (the caller
        passes what units and running containers use). Waits for running pulls. Layers still
        mounted by a container must be kept by the caller (by keeping its image).
        """
        with self._exclusive():
            removed_images: list[str] = []
            if keep is not None:
                wanted = {str(parse_reference(r)) for r in keep}
                with self._index_locked() as index:
                    for reference in [r for r in index.images if r not in wanted]:
                        del index.images[reference]
                        index.previous.pop(reference, None)
                        removed_images.append(reference)
            current = self._read_index()
            records = [*current.images.values(), *current.previous.values()]
            blobs = {digest_hex(d) for r in records for d in _blob_digests(r)}
            chains = {digest_hex(x.chain_id) for r in records for x in r.layers}
            freed = 0
            removed_blobs: list[str] = []
            for path in sorted(self.blobs.iterdir()):
                if path.name not in blobs:
                    freed += _tree_size(path)
                    _unlink(path)
                    removed_blobs.append(f"sha256:{path.name}")
            removed_layers: list[str] = []
            for path in sorted(self.layers.iterdir()):
                if path.name not in chains:
                    freed += _tree_size(path)
                    _remove_tree(path)
                    if not path.name.startswith("."):
                        removed_layers.append(f"sha256:{path.name}")
            partials: list[str] = []
            for path in sorted(self.ingest_dir.iterdir()):
                freed += _tree_size(path)
                _unlink(path)
                partials.append(path.name)
            return PruneReport(
                removed_images=tuple(removed_images),
                removed_blobs=tuple(removed_blobs),
                removed_layers=tuple(removed_layers),
                removed_partials=tuple(partials),
                freed_bytes=freed,
            )

    def _drop_damaged_previous(self) -> None:
        """A previous version whose content is damaged can no longer serve a rollback."""
        with self._index_locked() as index:
            for reference, record in list(index.previous.items()):
                lacking = [d for d in _blob_digests(record) if not self.has_blob(d)]
                if lacking or not all(self.has_layer(x.chain_id) for x in record.layers):
                    del index.previous[reference]

    def _remove_leftovers(self) -> list[str]:
        removed: list[str] = []
        for path in self.layers.glob(".staging-*"):
            _remove_tree(path)
            removed.append(str(path))
        for directory in (self.root, self.blobs):
            for path in directory.glob(".*.tmp"):
                _unlink(path)
                removed.append(str(path))
        return removed


class Ingest:
    """The partial download of one blob under ``ingest/``, locked against other writers.

    The bytes already there are trusted as a prefix (and re-hashed) so a download resumes after
    a restart; :meth:`commit` checks digest and size and only then moves the blob into
    ``blobs/``. Use it as a context manager; it closes (keeping the partial) on exit.
    """

    def __init__(self, store: Store, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.path = store.ingest_dir / f"{digest_hex(digest)}.partial"
        self.complete = False
        """The blob is already in the store (another writer finished it): nothing to do."""
        self._hash = hashlib.sha256()
        self.offset = 0
        self.resumed_from = 0
        self._fd = -1 if store.has_blob(digest) else self._open_locked()
        if self._fd < 0 or store.has_blob(digest):
            self.complete = True
            return
        length = os.fstat(self._fd).st_size
        if length > size:
            length = 0
        self._rehash(length)
        self.resumed_from = self.offset

    def _open_locked(self) -> int:
        """The partial file's fd under an exclusive flock; -1 if another writer committed it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # The previous holder may have committed or discarded (unlinked) the file.
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if self.store.has_blob(self.digest):
                return -1

    def _rehash(self, length: int) -> None:
        self._hash = hashlib.sha256()
        self.offset = 0
        os.lseek(self._fd, 0, os.SEEK_SET)
        while self.offset < length:
            chunk = os.read(self._fd, min(_HASH_CHUNK, length - self.offset))
            if not chunk:
                break
            self._hash.update(chunk)
            self.offset += len(chunk)
        os.ftruncate(self._fd, self.offset)
        os.lseek(self._fd, self.offset, os.SEEK_SET)

    def restart(self) -> None:
        """Drop what was downloaded: the next bytes written are the blob's first."""
        self._rehash(0)
        self.resumed_from = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``. VerificationError if the blob grows past its size (what was
        downloaded is dropped)."""
        if self.offset + len(chunk) > self.size:
            self.restart()
            raise VerificationError(
                f"blob {self.digest} is longer than the {self.size} bytes its descriptor says; "
                "the download was dropped"
            )
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self._hash.update(chunk)
        self.offset += len(chunk)

    def commit(self) -> Path:
        """Check size and digest; fsync and move the blob into the store.

        VerificationError if it does not match; the partial is then emptied (call
        :meth:`discard` to remove it, or write it again from the start)."""
        if self.complete:
            return self.store.blob_path(self.digest)
        actual = "sha256:" + self._hash.hexdigest()
        if self.offset != self.size or actual != self.digest:
            problem = (
                f"is {self.offset} bytes, not {self.size}"
                if self.offset != self.size
                else f"hashes to {actual}"
            )
            self.restart()
            raise VerificationError(f"blob {self.digest} {problem}; nothing was stored")
        os.fsync(self._fd)
        target = self.store.blob_path(self.digest)
        os.rename(self.path, target)
        fsync_directory(self.store.blobs)
        fsync_directory(self.store.ingest_dir)
        self.complete = True
        return target

    def discard(self) -> None:
        """Delete the partial download (while still holding its lock); the Ingest is done."""
        if not self.complete:
            _unlink(self.path)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1

    def __enter__(self) -> Ingest:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- durability ----------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """``syncfs(2)`` on the filesystem holding ``path`` (``os.sync`` if libc lacks it)."""
    function = getattr(_libc, "syncfs", None)
    if function is None:  # pragma: no cover - glibc has had it since 2.14
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise StoreError(f"syncfs({path}) failed: {os.strerror(code)}")
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flocked(path: Path, operation: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)


# --- helpers -------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _is_hex_name(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_ok(layer: Path) -> bool:
    try:
        marker = json.loads((layer / LAYER_MARKER).read_bytes())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("chain_id") == f"sha256:{layer.name}"
        and (layer / LAYER_ROOT).is_dir()
    )


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_tree(path: Path) -> None:
    def retry_writable(function: Any, name: str, _excinfo: Any) -> None:
        # A read-only directory from an image (mode 0555) is still removable by root; others
        # need the write bit back first.
        parent = os.path.dirname(name)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            function(name)

    if path.is_symlink() or path.is_file():
        _unlink(path)
    elif path.exists():
        shutil.rmtree(path, onerror=retry_writable)


def _tree_size(path: Path) -> int:
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except FileNotFoundError:
        return 0
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _blob_digests(record: ImageRecord) -> list[str]:
    return [record.manifest_digest, record.config_digest, *(x.digest for x in record.layers)]


def record_to_json(record: ImageRecord) -> dict[str, Any]:
    """An image record as plain JSON (images.json, ``quayctl image ls --json``)."""
    return {
        "reference": record.reference,
        "manifest_digest": record.manifest_digest,
        "config_digest": record.config_digest,
        "platform": str(record.platform),
        "created": record.created,
        "layers": [
            {
                "digest": x.digest,
                "size": x.size,
                "media_type": x.media_type,
                "diff_id": x.diff_id,
                "chain_id": x.chain_id,
            }
            for x in record.layers
        ],
    }


def _record_from(entry: Mapping[str, Any]) -> ImageRecord:
    layers = tuple(
        LayerRecord(
            digest=check_digest(x["digest"]),
            size=int(x["size"]),
            media_type=str(x["media_type"]),
            diff_id=check_digest(x["diff_id"]),
            chain_id=check_digest(x["chain_id"]),
        )
        for x in entry["layers"]
    )
    return ImageRecord(
        reference=str(entry["reference"]),
        manifest_digest=check_digest(entry["manifest_digest"]),
        config_digest=check_digest(entry["config_digest"]),
        layers=layers,
        platform=Platform.parse(str(entry["platform"])),
        created=str(entry["created"]),
    )


__all__ = [
    "DEFAULT_MIN_FREE_BYTES",
    "Ingest",
    "PruneReport",
    "Store",
    "VerifyReport",
    "record_to_json",
    "syncfs",
]
