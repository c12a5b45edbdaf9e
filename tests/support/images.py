"""Test images built in Python from Debian's static busybox, pushed with skopeo.

Layers are tar archives written with :mod:`tarfile` (PAX, numeric owners, fixed times),
compressed with gzip (one with zstd), laid out as an OCI image layout directory (``oci-layout``,
``index.json``, ``blobs/sha256``) and pushed with ``skopeo copy oci:DIR:TAG docker://…``.

* :func:`busybox_image`: one layer, busybox and its applet links.
* :func:`multi_image`: three layers with a whiteout, an opaque directory, hardlinks, symlinks,
  a setuid file and a user xattr; the last layer is zstd-compressed.
* :func:`platforms_image`: an index for linux/amd64, linux/arm64/v8, linux/arm/v7 and
  linux/arm/v6; the host's entry has busybox, every entry a file ``etc/platform`` naming it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from quayd.images.model import Platform

BUSYBOX = Path("/bin/busybox")
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MTIME = 1_700_000_000
APPLETS = ("sh", "ls", "cat", "echo", "true", "sleep", "id")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- tar entries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, kind: bytes, mode: int, **extra: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(_info(name, tarfile.DIRTYPE, mode))


def file(
    name: str, data: bytes, mode: int = 0o644, *, xattrs: dict[str, str] | None = None
) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode, size=len(data))
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return Entry(info, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(_info(name, tarfile.SYMTYPE, 0o777, linkname=target))


def hardlink(name: str, target: str) -> Entry:
    return Entry(_info(name, tarfile.LNKTYPE, 0o644, linkname=target))


def whiteout(path: str) -> Entry:
    parent, _, base = path.rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")


def opaque(path: str) -> Entry:
    return file(f"{path}/.wh..wh..opq", b"")


def tar_bytes(entries: Sequence[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            archive.addfile(entry.info, io.BytesIO(entry.data) if entry.data else None)
    return buffer.getvalue()


def busybox_entries() -> list[Entry]:
    return [
        directory("bin"),
        file("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        *(symlink(f"bin/{applet}", "busybox") for applet in APPLETS),
        directory("etc"),
        file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
        file("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
        directory("root", 0o700),
        directory("tmp", 0o1777),
    ]


# --- layers, images, layouts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    tar: bytes
    blob: bytes
    media_type: str

    @property
    def diff_id(self) -> str:
        return sha256(self.tar)

    @property
    def digest(self) -> str:
        return sha256(self.blob)

    @classmethod
    def of(cls, entries: Sequence[Entry], *, zstd: bool = False) -> Layer:
        tar = tar_bytes(entries)
        if zstd:
            return cls(tar, zstandard.ZstdCompressor(level=3).compress(tar), OCI_LAYER_ZSTD)
        return cls(tar, gzip.compress(tar, compresslevel=6, mtime=0), OCI_LAYER_GZIP)


@dataclass
class BuiltImage:
    """A built image and the digests a pull must reproduce."""

    repository: str
    """``test/busybox``."""
    tag: str
    digest: str
    """Of what the tag points at: a manifest, or an index."""
    layers: list[Layer] = field(default_factory=list)
    manifests: dict[str, str] = field(default_factory=dict)
    """For an index: platform (``linux/arm/v7``) → manifest digest."""
    config_digest: str = ""

    def reference(self, registry: str, *, by_digest: bool = False) -> str:
        if by_digest:
            return f"{registry}/{self.repository}@{self.digest}"
        return f"{registry}/{self.repository}:{self.tag}"


class OciLayout:
    """An OCI image layout directory being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self._tags: list[dict[str, Any]] = []

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def image(
        self, layers: Sequence[Layer], platform: Platform, *, cmd: Sequence[str] = ("/bin/sh",)
    ) -> tuple[dict[str, Any], str]:
        """Write config, layers and manifest; the manifest's descriptor and the config digest."""
        config: dict[str, Any] = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": "2024-01-01T00:00:00Z"} for _ in layers],
        }
        if platform.variant:
            config["variant"] = platform.variant
        config_descriptor = self.blob(_canonical(config), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": [self.blob(layer.blob, layer.media_type) for layer in layers],
        }
        platform_field = {"os": platform.os, "architecture": platform.architecture}
        if platform.variant:
            platform_field["variant"] = platform.variant
        descriptor = self.blob(_canonical(manifest), OCI_MANIFEST, platform=platform_field)
        return descriptor, config_descriptor["digest"]

    def index(self, manifests: Sequence[dict[str, Any]]) -> dict[str, Any]:
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}
        return self.blob(_canonical(document), OCI_INDEX)

    def tag(self, descriptor: dict[str, Any], tag: str) -> None:
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self._tags.append(entry)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self._tags}
        (self.root / "index.json").write_text(json.dumps(index, indent=1))


def _canonical(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class PushTarget:
    """Where and how skopeo pushes."""

    registry: str
    creds: tuple[str, str] | None = None
    cert_dir: Path | None = None
    """A dir with ``ca.crt`` for a TLS registry (skopeo's --dest-cert-dir)."""


def push(layout: OciLayout, tag: str, repository: str, target: PushTarget) -> None:
    command = ["skopeo", "copy", "--quiet", "--preserve-digests", "--all"]
    if target.cert_dir is not None:
        command += ["--dest-cert-dir", str(target.cert_dir), "--dest-tls-verify=true"]
    else:
        command.append("--dest-tls-verify=false")
    if target.creds is not None:
        command += ["--dest-creds", f"{target.creds[0]}:{target.creds[1]}"]
    command += [f"oci:{layout.root}:{tag}", f"docker://{target.registry}/{repository}:{tag}"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HOME": str(layout.root.parent)},  # no one's auth.json
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")


# --- the test images -----------------------------------------------------------------------------


def busybox_image(work: Path, target: PushTarget, repository: str = "test/busybox") -> BuiltImage:
    layout = OciLayout(work / f"layout-{repository.replace('/', '-')}")
    layer = Layer.of(busybox_entries())
    descriptor, config = layout.image([layer], Platform.host())
    layout.tag(descriptor, "1")
    push(layout, "1", repository, target)
    return BuiltImage(repository, "1", descriptor["digest"], [layer], config_digest=config)


MULTI_LAYERS_DOC = """\
layer 0: busybox (as in busybox_image), plus
         opt/keep/a, opt/gone.txt, opt/opaque/{old1,sub/old2}, etc/motd "layer 0"
layer 1: opt/.wh.gone.txt (whiteout), opt/opaque made opaque with opt/opaque/new,
         opt/hard-src + opt/hard-link (hardlink), opt/link -> keep/a, opt/abs -> /etc/motd,
         usr/bin/suid (04755), opt/xattr.txt (user.quay=layer-one), etc/motd "layer 1"
layer 2 (zstd): etc/motd "layer 2", opt/keep/b
"""


def multi_layers(*, zstd: bool = True) -> list[Layer]:
    """The layers of MULTI_LAYERS_DOC; ``zstd=False`` keeps the top one gzip (for umoci 0.4.7)."""
    zero = [
        *busybox_entries(),
        file("etc/motd", b"layer 0\n"),
        directory("opt"),
        directory("opt/keep"),
        file("opt/keep/a", b"a\n"),
        file("opt/gone.txt", b"to be deleted\n"),
        directory("opt/opaque", 0o750),
        file("opt/opaque/old1", b"old1\n"),
        directory("opt/opaque/sub"),
        file("opt/opaque/sub/old2", b"old2\n"),
    ]
    one = [
        directory("etc"),
        file("etc/motd", b"layer 1\n"),
        directory("opt"),
        whiteout("opt/gone.txt"),
        opaque("opt/opaque"),  # its directory is implied: attributes come from layer 0
        file("opt/opaque/new", b"new\n"),
        file("opt/hard-src", b"one inode, two names\n"),
        hardlink("opt/hard-link", "opt/hard-src"),
        symlink("opt/link", "keep/a"),
        symlink("opt/abs", "/etc/motd"),
        file("opt/xattr.txt", b"has an xattr\n", xattrs={"user.quay": "layer-one"}),
        directory("usr"),
        directory("usr/bin"),
        file("usr/bin/suid", b"#!/bin/sh\necho suid\n", 0o4755),
    ]
    two = [
        directory("etc"),
        file("etc/motd", b"layer 2\n"),
        directory("opt"),
        directory("opt/keep"),
        file("opt/keep/b", b"b\n"),
    ]
    return [Layer.of(zero), Layer.of(one), Layer.of(two, zstd=zstd)]


def multi_image(
    work: Path, target: PushTarget, repository: str = "test/multi", *, zstd: bool = True
) -> BuiltImage:
    layout = OciLayout(work / f"layout-{repository.replace('/', '-')}")
    layers = multi_layers(zstd=zstd)
    descriptor, config = layout.image(layers, Platform.host())
    layout.tag(descriptor, "1")
    push(layout, "1", repository, target)
    return BuiltImage(repository, "1", descriptor["digest"], layers, config_digest=config)


PLATFORMS = ("linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/arm/v6")


def platforms_image(
    work: Path, target: PushTarget, repository: str = "test/platforms"
) -> BuiltImage:
    layout = OciLayout(work / f"layout-{repository.replace('/', '-')}")
    host = Platform.host()
    descriptors = []
    built = BuiltImage(repository, "1", "")
    for name in PLATFORMS:
        platform = Platform.parse(name)
        text = file("etc/platform", f"{platform}\n".encode())
        entries = [*busybox_entries(), text] if platform == host else [directory("etc"), text]
        descriptor, _ = layout.image([Layer.of(entries)], platform)
        descriptors.append(descriptor)
        built.manifests[str(platform)] = descriptor["digest"]
    index = layout.index(descriptors)
    layout.tag(index, "1")
    push(layout, "1", repository, target)
    built.digest = index["digest"]
    return built


def unique_image(
    work: Path, target: PushTarget, repository: str, payload: bytes, tag: str = "1"
) -> BuiltImage:
    """A one-layer image whose layer no other image shares (safe to tamper with)."""
    layout = OciLayout(work / f"layout-{repository.replace('/', '-')}-{tag}")
    layer = Layer.of([directory("data"), file("data/payload.bin", payload)])
    descriptor, config = layout.image([layer], Platform.host())
    layout.tag(descriptor, tag)
    push(layout, tag, repository, target)
    return BuiltImage(repository, tag, descriptor["digest"], [layer], config_digest=config)
