"""Apply one OCI/Docker image layer, safely, into a fresh directory used as an overlayfs lowerdir.

The layer blob is streamed once: sniff the compression, inflate in bounded chunks, hash the tar
stream (the diff_id) (``layerstream``), read it with our own strict tar reader (``tarstream``)
and apply every entry ourselves (``applier``). Python's ``tarfile`` is not used at all: its
extraction helpers (and PEP 706 filters) follow symlinks or strip the modes, owners and xattrs a
root filesystem needs (notes/oci-images.md §3), and its header parser is private API whose
behaviour changes with the interpreter's security updates -- guards built on it turned off
silently (issue 14).

The core promise is that nothing outside ``target`` is ever written, whatever the archive says:

* Every path is walked from a directory fd, one component at a time, with
  ``O_DIRECTORY|O_NOFOLLOW`` and ``dir_fd=``; every final operation (create, link, chown,
  chmod, utime, mknod, unlink) is fd-relative and does not follow symlinks. Metadata of files,
  FIFOs and directories is set through an fd opened with ``O_NOFOLLOW``.
* A path component that is a symlink is refused (HostileLayerError), even one pointing inside
  the layer: honest layers never put entries below a symlink (CVE-2014-6407, CVE-2014-9356,
  CVE-2025-4517). Symlinks themselves are created verbatim and never followed by us.
* ``..`` components are refused; leading ``/`` and ``./`` are dropped, so ``/etc/x`` is
  ``etc/x`` inside the layer, as Docker and containerd treat them (PAX ``path`` and
  ``linkpath`` and GNU long names alike). An entry that resolves to the root itself must be a
  directory (CVE-2021-29136); its metadata is applied to the root.
* Duplicate names: a later entry replaces an earlier one (a whole directory tree too, unless
  both are directories, in which case the directory stays and takes the later metadata) --
  containerd's rule. Replacing never follows the old entry, so a symlink followed by a file or
  directory of the same name gets a fresh inode (CVE-2021-32760, CVE-2024-12718 shapes).
* Hardlinks must name an existing regular file or FIFO of this layer; hardlinks to symlinks are
  refused.
* Character and block devices from the archive are refused; only whiteouts (char 0:0) are made.
* ``trusted.*`` xattrs from the archive are refused (overlayfs trusts ``trusted.overlay.*``);
  ``security.selinux`` is dropped. ``user.*`` xattrs on FIFOs and symlinks (which Linux cannot
  store) are skipped, as containerd does. Any other xattr failure is an error.
* Limits (:class:`UnpackLimits`): uncompressed bytes, entry count, bytes of extended (PAX /
  GNU long name) headers, PAX records per header and bytes per record, all checked from a
  header before anything it announces is read. Unknown entry types and GNU sparse files are
  refused; a damaged header anywhere (checksum, truncation, malformed PAX) is an error naming
  the entry before it. PAX global headers are ignored, as containerd and Go's archive/tar do.

Overlay whiteouts are converted as containerd's ``OverlayConvertWhiteout`` does (notes §2):
``.wh.NAME`` becomes a char 0:0 device owned by the header's uid/gid and ``.wh..wh..opq``
sets ``trusted.overlay.opaque=y`` on its directory; other ``.wh..wh.*`` names are ignored.

Where the time goes: inflating (ISA-L gzip ~550 MB/s of output here, zstd ~900 MB/s), sha256 of
the tar stream (~1.5 GB/s, in a thread of its own beside the rest), and ~8 syscalls per file;
the tar reader costs a few µs per entry and writes file data straight from the decompressed
chunks. Directory fds are cached in a small LRU keyed by path tuple (cache fds, never resolved
paths). ``python -m bench decompress --unpack`` measures it (issue 14: 100 MB of mixed files at
~290 MB/s gzip, ~410 MB/s zstd into tmpfs; ~38k small files/s). The caller should ``syncfs``
once after a successful apply, before renaming the staging directory into place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from quayd.images.applier import Applier
from quayd.images.entries import archive_xattrs, entry_times_ns, split_entry_name
from quayd.images.errors import UnpackError
from quayd.images.layerstream import Compression, LayerReader, detect_compression
from quayd.images.tarstream import TarReader, parse_pax_records

__all__ = [
    "DEFAULT_LIMITS",
    "LayerReader",
    "UnpackLimits",
    "UnpackResult",
    "apply_layer",
    "archive_xattrs",
    "detect_compression",
    "entry_times_ns",
    "parse_pax_records",
    "split_entry_name",
]


@dataclass(frozen=True)
class UnpackLimits:
    max_uncompressed_bytes: int = 16 * 1024**3
    """Decompression bomb cap on the tar stream (and so on any one entry's size)."""
    max_entries: int = 1_000_000
    max_header_bytes: int = 1024 * 1024
    """Cap on the PAX / GNU long-name headers in front of one entry, and on all PAX global
    headers of the layer together (Go's archive/tar: 1 MiB)."""
    max_pax_records: int = 1024
    """Records in one PAX header (an honest entry has a dozen: times, ids, names, xattrs)."""
    max_pax_record_bytes: int = 90 * 1024
    """Bytes of one PAX record: room for a 64 KiB xattr value, even base64-encoded."""


DEFAULT_LIMITS = UnpackLimits()


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str
    """``sha256:...`` of the uncompressed tar stream, hashed to EOF including trailing padding."""
    entries: int
    uncompressed_bytes: int
    compression: Compression = "none"


def apply_layer(
    stream: BinaryIO,
    target: Path,
    *,
    parents: Sequence[Path] = (),
    limits: UnpackLimits = DEFAULT_LIMITS,
) -> UnpackResult:
    """Apply the layer blob read from ``stream`` into the empty directory ``target``.

    ``parents`` are the unpacked lower layers, top-most first; they are only read, to give
    directories this layer implies (but does not list) the attributes the merged view has.
    On any error UnpackError (HostileLayerError for archives no honest tool makes) is raised
    and ``target`` must be discarded. The caller checks the returned diff_id against the
    image config and caps the compressed bytes at the descriptor size.
    """
    with contextlib.closing(LayerReader(stream, max_bytes=limits.max_uncompressed_bytes)) as reader:
        return _apply(reader, target, parents, limits)


def _apply(
    reader: LayerReader, target: Path, parents: Sequence[Path], limits: UnpackLimits
) -> UnpackResult:
    archive = TarReader(
        reader,
        max_header_bytes=limits.max_header_bytes,
        max_entries=limits.max_entries,
        max_entry_bytes=limits.max_uncompressed_bytes,
        max_pax_records=limits.max_pax_records,
        max_pax_record_bytes=limits.max_pax_record_bytes,
    )
    try:
        applier = Applier(target, parents)
    except OSError as e:
        raise UnpackError(f"cannot unpack a layer into {target}: {e}") from e
    with contextlib.closing(applier):
        try:
            applier.prepare_root()
        except OSError as e:
            raise UnpackError(f"cannot set the attributes of {target}: {e}") from e
        while (info := archive.next()) is not None:
            try:
                applier.apply(archive, info)
            except (OSError, ValueError, OverflowError) as e:
                raise UnpackError(f"layer entry {info.name!r}: {e}") from e
        reader.drain()  # hash the padding after the end-of-archive blocks too
        try:
            applier.finish()
        except OSError as e:
            raise UnpackError(f"setting directory times: {e}") from e
    return UnpackResult(
        diff_id=reader.diff_id,
        entries=archive.entries,
        uncompressed_bytes=reader.total,
        compression=reader.compression,
    )
