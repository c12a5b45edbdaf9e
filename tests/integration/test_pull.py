"""Pulling from a real registry (Debian's docker-registry on 127.0.0.1) into a real store.

Test images are built in Python from /bin/busybox and pushed with skopeo (tests/support).
Nothing here mocks the registry: TLS, htpasswd and token auth are the registry's own; the
proxies in tests/support only forward, cut, slow down or redirect real traffic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from quayd.images.errors import (
    AuthError,
    DiskSpaceError,
    NotFoundError,
    PlatformError,
    RegistryError,
    VerificationError,
)
from quayd.images.model import Platform, chain_ids
from quayd.images.pull import PullProgress, pull, repair
from quayd.images.registry import RegistryClient, RetryPolicy
from quayd.images.store import LAYER_MARKER, Store
from quayd.images.unpack import UnpackResult, apply_layer
from quayd.units.settings import RegistrySettings
from tests.support.images import (
    MTIME,
    PLATFORMS,
    BuiltImage,
    Entry,
    Layer,
    OciLayout,
    PushTarget,
    busybox_image,
    file,
    multi_image,
    multi_layers,
    platforms_image,
    push,
    unique_image,
)
from tests.support.registry import (
    CuttingProxy,
    RedirectingFront,
    Registry,
    ThrottlingProxy,
    TlsFiles,
    TokenServer,
    docker_config,
    free_port,
    htpasswd,
    make_tls,
    running_registry,
)

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05)
USER, PASSWORD = "alice", "wonderland"


def client_for(settings: RegistrySettings | None = None) -> RegistryClient:
    return RegistryClient(settings, retry=FAST)


# --- registries ----------------------------------------------------------------------------------


class Plain:
    def __init__(self, registry: Registry, images: dict[str, BuiltImage]) -> None:
        self.registry = registry
        self.images = images
        self.host = registry.host


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plain]:
    """A registry without auth holding busybox, multi and platforms."""
    work = tmp_path_factory.mktemp("plain")
    with running_registry(work / "registry") as registry:
        target = PushTarget(registry.host)
        images = {
            "busybox": busybox_image(work, target),
            "multi": multi_image(work, target),
            "platforms": platforms_image(work, target),
        }
        yield Plain(registry, images)


@pytest.fixture(scope="module")
def tls_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plain, TlsFiles]]:
    """A TLS registry (test CA) with htpasswd Basic auth, holding busybox."""
    work = tmp_path_factory.mktemp("tls")
    tls = make_tls(work / "tls")
    passwords = htpasswd(work / "htpasswd", USER, PASSWORD)
    with running_registry(work / "registry", tls=tls, auth_htpasswd=passwords) as registry:
        cert_dir = work / "certs"
        cert_dir.mkdir()
        shutil.copy(tls.ca, cert_dir / "ca.crt")
        target = PushTarget(registry.host, creds=(USER, PASSWORD), cert_dir=cert_dir)
        yield Plain(registry, {"busybox": busybox_image(work, target)}), tls


@pytest.fixture(scope="module")
def token_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plain, TokenServer]]:
    """A registry with token auth and its token server, holding busybox (private)."""
    work = tmp_path_factory.mktemp("token")
    with (
        TokenServer(work / "token", users={USER: PASSWORD}) as tokens,
        running_registry(work / "registry", token=tokens) as registry,
    ):
        target = PushTarget(registry.host, creds=(USER, PASSWORD))
        yield Plain(registry, {"busybox": busybox_image(work, target)}), tokens


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state" / "images")


# --- helpers -------------------------------------------------------------------------------------


def blob_gets(registry: Registry, digest: str) -> list[dict[str, object]]:
    return [
        e for e in registry.responses(f"/blobs/{digest}") if e.get("http.request.method") == "GET"
    ]


def assert_complete(store: Store, image: BuiltImage, reference: str) -> None:
    record = store.get(reference)
    assert record is not None
    assert [x.digest for x in record.layers] == [x.digest for x in image.layers]
    assert [x.diff_id for x in record.layers] == [x.diff_id for x in image.layers]
    assert [x.chain_id for x in record.layers] == chain_ids([x.diff_id for x in image.layers])
    for layer in record.layers:
        assert store.has_blob(layer.digest)
        assert store.has_layer(layer.chain_id)
    assert store.has_blob(record.manifest_digest)
    assert store.has_blob(record.config_digest)


# --- by tag, by digest, layer contents -----------------------------------------------------------


def test_pull_by_tag_then_by_digest_dedupes(plain: Plain, store: Store) -> None:
    image = plain.images["busybox"]
    reference = image.reference(plain.host)
    with client_for() as client:
        record = pull(reference, store=store, client=client)
        assert record.reference == reference
        assert record.manifest_digest == image.digest
        assert record.config_digest == image.config_digest
        assert record.platform == Platform.host()
        assert_complete(store, image, reference)
        root = store.layer_path(record.layers[0].chain_id)
        assert (root / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
        assert os.readlink(root / "bin/sh") == "busybox"
        assert stat.S_IMODE((root / "tmp").lstat().st_mode) == 0o1777

        fetched = len(blob_gets(plain.registry, image.layers[0].digest))
        by_digest = image.reference(plain.host, by_digest=True)
        again = pull(by_digest, store=store, client=client)
    assert again.manifest_digest == image.digest
    assert again.layers == record.layers
    assert len(blob_gets(plain.registry, image.layers[0].digest)) == fetched  # not fetched again
    assert store.get(by_digest) == again
    assert store.get(reference) == record
    assert store.verify().ok


def test_multi_layer_image_with_whiteouts_links_setuid_and_xattrs(
    plain: Plain, store: Store
) -> None:
    image = plain.images["multi"]
    with client_for() as client:
        record = pull(image.reference(plain.host), store=store, client=client)
    assert_complete(store, image, image.reference(plain.host))
    zero, one, two = (store.layer_path(x.chain_id) for x in record.layers)

    assert (zero / "opt/gone.txt").read_bytes() == b"to be deleted\n"
    gone = (one / "opt/gone.txt").lstat()  # an overlay whiteout: a 0:0 character device
    assert stat.S_ISCHR(gone.st_mode)
    assert os.major(gone.st_rdev) == 0
    assert os.minor(gone.st_rdev) == 0
    assert not (one / "opt/.wh.gone.txt").exists()
    assert os.getxattr(one / "opt/opaque", "trusted.overlay.opaque") == b"y"
    assert not (one / "opt/opaque/.wh..wh..opq").exists()
    assert (one / "opt/opaque/new").read_bytes() == b"new\n"
    assert (one / "opt/hard-src").stat().st_ino == (one / "opt/hard-link").stat().st_ino
    assert os.readlink(one / "opt/link") == "keep/a"
    assert os.readlink(one / "opt/abs") == "/etc/motd"
    assert stat.S_IMODE((one / "usr/bin/suid").stat().st_mode) == 0o4755
    assert os.getxattr(one / "opt/xattr.txt", "user.quay") == b"layer-one"
    # A directory the layer does not list (only its opaque marker) keeps the lower one's mode.
    assert stat.S_IMODE((one / "opt/opaque").stat().st_mode) == 0o750
    assert (two / "etc/motd").read_bytes() == b"layer 2\n"  # the zstd layer
    assert (two / "opt/keep/b").read_bytes() == b"b\n"


# --- platforms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("wanted", [None, "linux/arm64/v8", "linux/arm64", "linux/arm/v7"])
def test_platform_selection(plain: Plain, store: Store, wanted: str | None) -> None:
    image = plain.images["platforms"]
    platform = Platform.parse(wanted) if wanted else None
    expected = str(platform or Platform.host())
    if expected not in PLATFORMS and platform is None:
        pytest.skip(f"the test index has no entry for this host ({expected})")
    with client_for() as client:
        record = pull(image.reference(plain.host), store=store, client=client, platform=platform)
    assert record.manifest_digest == image.manifests[expected]
    assert str(record.platform) == expected
    root = store.layer_path(record.layers[0].chain_id)
    assert (root / "etc/platform").read_text() == f"{expected}\n"
    assert (root / "bin/busybox").exists() == (expected == str(Platform.host()))


def test_missing_platform_says_what_is_offered(plain: Plain, store: Store) -> None:
    image = plain.images["platforms"]
    with client_for() as client, pytest.raises(PlatformError) as caught:
        pull(
            image.reference(plain.host),
            store=store,
            client=client,
            platform=Platform.parse("linux/s390x"),
        )
    assert "linux/s390x" in str(caught.value)
    assert "linux/arm/v7" in str(caught.value)
    assert store.images() == {}


def test_unknown_tag_is_not_found_naming_registry_and_repository(
    plain: Plain, store: Store
) -> None:
    with client_for() as client, pytest.raises(NotFoundError) as caught:
        pull(f"{plain.host}/test/busybox:nope", store=store, client=client)
    message = str(caught.value)
    assert plain.host in message
    assert "test/busybox" in message
    assert "nope" in message


# --- TLS, Basic and Bearer auth ------------------------------------------------------------------


def test_basic_auth_over_tls_with_a_ca_file(
    tls_basic: tuple[Plain, TlsFiles], store: Store, tmp_path: Path
) -> None:
    server, tls = tls_basic
    image = server.images["busybox"]
    reference = image.reference(server.host)
    auth = docker_config(tmp_path / "config.json", server.host, USER, PASSWORD)

    # Without the CA: refused, and the message says what to do.
    no_ca = RegistrySettings(auth_file=str(auth))
    with client_for(no_ca) as client, pytest.raises(RegistryError) as caught:
        pull(reference, store=store, client=client)
    assert "ca_files" in str(caught.value)

    # With the CA but no credentials.
    no_creds = RegistrySettings(ca_files=[str(tls.ca)])
    with client_for(no_creds) as client, pytest.raises(AuthError) as caught:
        pull(reference, store=store, client=client)
    assert "requires credentials" in str(caught.value)
    assert "test/busybox" in str(caught.value)

    # A wrong password.
    wrong = docker_config(tmp_path / "wrong.json", server.host, USER, "guess")
    bad_creds = RegistrySettings(ca_files=[str(tls.ca)], auth_file=str(wrong))
    with client_for(bad_creds) as client, pytest.raises(AuthError) as caught:
        pull(reference, store=store, client=client)
    assert "refused" in str(caught.value)

    settings = RegistrySettings(ca_files=[str(tls.ca)], auth_file=str(auth))
    with client_for(settings) as client:
        record = pull(reference, store=store, client=client)
    assert record.manifest_digest == image.digest
    assert_complete(store, image, reference)


def test_bearer_token_auth(
    token_auth: tuple[Plain, TokenServer], store: Store, tmp_path: Path
) -> None:
    server, tokens = token_auth
    image = server.images["busybox"]
    reference = image.reference(server.host)

    with client_for() as client, pytest.raises(AuthError) as caught:
        pull(reference, store=store, client=client)
    assert "requires credentials" in str(caught.value)
    assert server.host in str(caught.value)
    assert store.images() == {}

    auth = docker_config(tmp_path / "config.json", server.host, USER, PASSWORD)
    tokens.requests.clear()
    with client_for(RegistrySettings(auth_file=str(auth))) as client:
        record = pull(reference, store=store, client=client)
    assert record.manifest_digest == image.digest
    assert_complete(store, image, reference)
    # One token, cached for the manifest, the config and the layer.
    assert [r["user"] for r in tokens.requests] == [(USER, PASSWORD)]
    assert "scope=repository%3Atest%2Fbusybox%3Apull" in str(tokens.requests[0]["path"])

    # Token servers that answer with "access_token" (OAuth2 style) work too.
    tokens.token_field = "access_token"
    other = Store(tmp_path / "other")
    try:
        with client_for(RegistrySettings(auth_file=str(auth))) as client:
            assert pull(reference, store=other, client=client).manifest_digest == image.digest
    finally:
        tokens.token_field = "token"


def test_redirect_to_another_host_gets_no_authorization(
    plain: Plain, store: Store, tmp_path: Path
) -> None:
    image = plain.images["busybox"]
    with RedirectingFront(plain.host, user=USER, password=PASSWORD) as front:
        reference = f"{front.host}/{image.repository}:{image.tag}"
        auth = docker_config(tmp_path / "config.json", front.host, USER, PASSWORD)
        with client_for(RegistrySettings(auth_file=str(auth))) as client:
            record = pull(reference, store=store, client=client)
    assert record.manifest_digest == image.digest
    assert_complete(store, image, reference)
    assert any(r["user"] == (USER, PASSWORD) for r in front.front_requests)
    assert front.blob_requests, "the blobs came from the other host"
    for request in front.blob_requests:
        assert "Authorization" not in request["headers"]


# --- interrupted downloads -----------------------------------------------------------------------


def test_broken_download_resumes_with_range_in_the_same_pull(plain: Plain, store: Store) -> None:
    image = plain.images["multi"]
    big = image.layers[0]
    with CuttingProxy(plain.host, cut_path=f"/blobs/{big.digest}", cut_after=300_000) as proxy:
        reference = f"{proxy.host}/{image.repository}:{image.tag}"
        with client_for() as client:
            record = pull(reference, store=store, client=client)
    assert record.manifest_digest == image.digest
    asks = [r for r in proxy.requests if f"/blobs/{big.digest}" in r.split("\r\n")[0]]
    assert len(asks) == 2
    assert "range:" not in asks[0].lower()
    ranges = [line for line in asks[1].split("\r\n") if line.lower().startswith("range:")]
    assert len(ranges) == 1
    offset = int(ranges[0].split("=")[1].rstrip("-"))
    assert 299_000 < offset < 300_000  # what the proxy let through, less the response head
    assert_complete(store, image, reference)


def test_download_resumes_after_a_restart_fetching_only_the_rest(
    plain: Plain, tmp_path: Path
) -> None:
    image = plain.images["busybox"]
    layer = image.layers[0]
    state = tmp_path / "state" / "images"
    first = Store(state)
    cut = CuttingProxy(plain.host, cut_path=f"/blobs/{layer.digest}", cut_after=400_000, die=True)
    with cut as proxy, client_for() as client, pytest.raises(RegistryError):
        pull(f"{proxy.host}/{image.repository}:1", store=first, client=client)
    partial = state / "ingest" / f"{layer.digest.removeprefix('sha256:')}.partial"
    kept = partial.stat().st_size
    assert 390_000 < kept < 400_000
    assert first.images() == {}
    assert not first.has_blob(layer.digest)

    # A new process: a new store object and client, straight to the registry.
    before = len(blob_gets(plain.registry, layer.digest))
    second = Store(state)
    reference = image.reference(plain.host)
    with client_for() as client:
        pull(reference, store=second, client=client)
    fetched = blob_gets(plain.registry, layer.digest)[before:]
    assert [(e["http.response.status"], e["http.response.written"]) for e in fetched] == [
        (206, len(layer.blob) - kept)
    ]
    assert not partial.exists()
    assert_complete(second, image, reference)
    assert second.verify().ok


# --- corruption, verify and repair ---------------------------------------------------------------


def test_a_blob_that_does_not_match_its_digest_is_refused(
    plain: Plain, store: Store, tmp_path: Path
) -> None:
    target = PushTarget(plain.host)
    image = unique_image(tmp_path, target, "test/corrupt", os.urandom(200_000))
    layer = image.layers[0]
    data = plain.registry.blob_data_path(layer.digest)
    tampered = bytearray(data.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF  # same size, different content
    data.write_bytes(bytes(tampered))

    with client_for() as client, pytest.raises(VerificationError) as caught:
        pull(image.reference(plain.host), store=store, client=client)
    message = str(caught.value)
    assert layer.digest in message
    assert "test/corrupt" in message
    assert not store.has_blob(layer.digest)
    assert list(store.ingest_dir.iterdir()) == []
    assert store.images() == {}
    assert list(store.layers.iterdir()) == []


def test_verify_finds_a_truncated_blob_and_a_layer_without_marker_and_repair_fixes_them(
    plain: Plain, store: Store
) -> None:
    image = plain.images["multi"]
    reference = image.reference(plain.host)
    with client_for() as client:
        record = pull(reference, store=store, client=client)
    assert store.verify().ok

    store.blob_path(record.layers[0].digest).write_bytes(b"")  # a power cut's empty file
    store.blob_path(record.config_digest).write_bytes(b'{"truncat')
    (store.layer_dir(record.layers[2].chain_id) / LAYER_MARKER).unlink()

    report = store.verify()
    assert not report.ok
    assert set(report.bad_blobs) == {record.layers[0].digest, record.config_digest}
    assert report.bad_layers == (record.layers[2].chain_id,)
    assert report.damaged_images == (reference,)
    assert not store.has_blob(record.layers[0].digest)
    assert not store.layer_dir(record.layers[2].chain_id).exists()

    with client_for() as client:
        result = repair(store, client, report=report)
    assert result.repaired == (reference,)
    assert result.failed == {}
    assert store.verify().ok
    assert_complete(store, image, reference)
    top = store.layer_path(record.layers[2].chain_id)
    assert (top / "etc/motd").read_bytes() == b"layer 2\n"


# --- disk space, mirrors -------------------------------------------------------------------------


def test_pull_refused_below_the_disk_floor(plain: Plain, store: Store) -> None:
    free = shutil.disk_usage(store.root).free
    with client_for() as client, pytest.raises(DiskSpaceError) as caught:
        pull(
            plain.images["busybox"].reference(plain.host),
            store=store,
            client=client,
            min_free_bytes=free + 2**40,
        )
    assert "free" in str(caught.value)
    assert store.images() == {}
    assert list(store.blobs.iterdir()) == []


def test_mirrors_are_tried_first_with_ns_and_a_dead_one_is_skipped(
    plain: Plain, store: Store
) -> None:
    image = plain.images["busybox"]
    dead = f"http://127.0.0.1:{free_port()}"
    with CuttingProxy(plain.host, cut_path="never", cut_after=0, cuts=0) as mirror:
        settings = RegistrySettings(mirrors={plain.host: [dead, f"http://{mirror.host}"]})
        with client_for(settings) as client:
            record = pull(image.reference(plain.host), store=store, client=client)
    assert record.manifest_digest == image.digest
    lines = [r.split("\r\n")[0] for r in mirror.requests]
    assert f"GET /v2/test/busybox/manifests/1?ns={plain.host} HTTP/1.1" in lines
    assert any(f"/blobs/{image.layers[0].digest}?ns=" in line for line in lines)


# --- sharing the store ---------------------------------------------------------------------------


def test_concurrent_pulls_of_one_image_share_the_downloads(plain: Plain, store: Store) -> None:
    image = plain.images["multi"]
    reference = image.reference(plain.host)
    results: list[object] = []

    def run() -> None:
        try:
            with client_for() as client:
                results.append(pull(reference, store=store, client=client))
        except Exception as error:  # reported below
            results.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 3
    assert all(not isinstance(r, Exception) for r in results), results
    assert_complete(store, image, reference)
    assert store.verify().ok


def test_remove_and_prune_keep_what_other_images_use(plain: Plain, store: Store) -> None:
    busybox, multi = plain.images["busybox"], plain.images["multi"]
    with client_for() as client:
        kept = pull(busybox.reference(plain.host), store=store, client=client)
        gone = pull(multi.reference(plain.host), store=store, client=client)
    assert store.remove(multi.reference(plain.host))
    assert not store.remove(multi.reference(plain.host))
    assert store.get(multi.reference(plain.host)) is None

    report = store.prune()
    assert set(report.removed_blobs) == {
        gone.manifest_digest,
        gone.config_digest,
        *(x.digest for x in gone.layers),
    }
    assert set(report.removed_layers) == {x.chain_id for x in gone.layers}
    assert report.freed_bytes > 0
    assert_complete(store, busybox, busybox.reference(plain.host))
    assert store.verify().ok

    # Keeping nothing drops the record and then its content.
    report = store.prune(keep=[])
    assert report.removed_images == (kept.reference,)
    assert list(store.blobs.iterdir()) == []
    assert list(store.layers.iterdir()) == []


# --- unpacking while downloading (streamed from the partial download) ---------------------------


class Events:
    """A progress callback that keeps every event (they come from several threads)."""

    def __init__(self) -> None:
        self.events: list[PullProgress] = []
        self._lock = threading.Lock()

    def __call__(self, event: PullProgress) -> None:
        with self._lock:
            self.events.append(event)

    def phases(self, digest: str) -> list[str]:
        with self._lock:
            return [e.phase for e in self.events if e.digest == digest]


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each layer was applied, in order: "streamed" (from the growing partial download) or
    "file" (from the stored blob). A spy around the real apply_layer; nothing is faked."""
    calls: list[str] = []

    def spy(stream: BinaryIO, target: Path, **options: Any) -> UnpackResult:
        calls.append("file" if isinstance(stream, io.BufferedReader) else "streamed")
        return apply_layer(stream, target, **options)

    monkeypatch.setattr("quayd.images.pull.apply_layer", spy)
    return calls


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about every path under ``root`` and ``root`` itself: type, mode, owner, size,
    device numbers, times, link target, content hash, every xattr (``trusted.*`` too), and which
    paths share an inode. Times are compared when they come from an archive (the test images'
    MTIME): an unlisted root and whiteouts get "now", which differs between two unpacks."""
    entries: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    paths = [root]
    for directory, dirs, files in os.walk(root):
        paths += [Path(directory) / name for name in sorted(dirs + files)]
    for path in paths:
        info = path.lstat()
        relative = str(path.relative_to(root))
        content: object = None
        if stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        mtime: object = info.st_mtime_ns
        if mtime != MTIME * 10**9:
            mtime = "not from an archive"
        xattrs = (
            {}
            if stat.S_ISLNK(info.st_mode)
            else {k: os.getxattr(path, k) for k in os.listxattr(path)}
        )
        entries[relative] = (
            stat.S_IFMT(info.st_mode),
            stat.S_IMODE(info.st_mode),
            info.st_uid,
            info.st_gid,
            info.st_size if not stat.S_ISDIR(info.st_mode) else None,
            info.st_rdev,
            mtime,
            content,
            sorted(xattrs.items()),
            inodes.setdefault(info.st_ino, relative) if not stat.S_ISDIR(info.st_mode) else None,
        )
    return entries


def layer_marker(store: Store, chain_id: str) -> dict[str, object]:
    marker: dict[str, object] = json.loads((store.layer_dir(chain_id) / LAYER_MARKER).read_bytes())
    marker.pop("stored")
    return marker


def blob_requests(proxy: CuttingProxy, digest: str) -> list[str]:
    return [r for r in proxy.requests if f"/blobs/{digest}" in r.split("\r\n")[0]]


def range_of(request: str) -> str | None:
    lines = [x for x in request.split("\r\n") if x.lower().startswith("range:")]
    return lines[0].split(":", 1)[1].strip() if lines else None


def staged_bytes(store: Store, name: str) -> int:
    """Bytes of ``name`` in layers being unpacked (staging dirs) right now."""
    total = 0
    for path in store.layers.glob(f".staging-*/root/{name}"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def padded(layer: Layer, name: str, pad: bytes, *, zstd: bool = False) -> Layer:
    """``layer``'s entries again (headers, data, xattrs, links), plus a file ``name`` of
    ``pad``: a layer that takes a while to download through a throttled proxy."""
    entries = []
    with tarfile.open(fileobj=io.BytesIO(layer.tar), mode="r:") as archive:
        for info in archive:
            source = archive.extractfile(info) if info.isreg() else None
            entries.append(Entry(info, source.read() if source else b""))
    return Layer.of([*entries, file(name, pad)], zstd=zstd)


@pytest.fixture(scope="module")
def padded_multi(plain: Plain, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """test/multi's three layers (whiteouts, opaque dir, hardlinks, xattrs, setuid; the top one
    zstd), each with 2 MB of random data added so that every one downloads for a while."""
    work = tmp_path_factory.mktemp("padded")
    layers = [
        padded(layer, f"pad/{index}.bin", os.urandom(2_000_000), zstd=index == 2)
        for index, layer in enumerate(multi_layers())
    ]
    layout = OciLayout(work / "layout")
    descriptor, config = layout.image(layers, Platform.host())
    layout.tag(descriptor, "1")
    push(layout, "1", "test/padded", PushTarget(plain.host))
    return BuiltImage("test/padded", "1", descriptor["digest"], layers, config_digest=config)


def test_streamed_unpack_gives_the_layers_and_record_of_an_unpack_from_stored_blobs(
    plain: Plain, padded_multi: BuiltImage, tmp_path: Path, applied: list[str]
) -> None:
    image = padded_multi
    streamed_store, stored_store = Store(tmp_path / "streamed"), Store(tmp_path / "stored")
    events = Events()
    with ThrottlingProxy(plain.host, throttle_path="/blobs/", rate=1_500_000) as proxy:
        reference = f"{proxy.host}/{image.repository}:{image.tag}"
        # One download at a time, each ~1.4 s: every layer's turn to unpack comes while its
        # blob is still downloading.
        with client_for() as client:
            streamed = pull(
                reference, store=streamed_store, client=client, max_concurrent=1, progress=events
            )
        assert applied == ["streamed"] * 3
        for layer in image.layers:
            phases = events.phases(layer.digest)
            assert phases.index("unpacking") < phases.index("downloaded") < phases.index("unpacked")

        # The same image again into a store that has the layer blobs: unpacked from the files.
        applied.clear()
        for stored in streamed.layers:
            stored_store.put_blob(streamed_store.read_blob(stored.digest), stored.digest)
        with client_for() as client:
            from_files = pull(reference, store=stored_store, client=client)
        assert applied == ["file"] * 3

    assert dataclasses.replace(from_files, created="") == dataclasses.replace(streamed, created="")
    for unpacked in streamed.layers:
        chain = unpacked.chain_id
        assert snapshot(streamed_store.layer_path(chain)) == snapshot(
            stored_store.layer_path(chain)
        )
        assert layer_marker(streamed_store, chain) == layer_marker(stored_store, chain)
    for store in (streamed_store, stored_store):
        assert_complete(store, image, reference)
        assert store.verify().ok
    one = streamed_store.layer_path(streamed.layers[1].chain_id)
    assert stat.S_ISCHR((one / "opt/gone.txt").lstat().st_mode)  # the whiteout came through
    assert os.getxattr(one / "opt/opaque", "trusted.overlay.opaque") == b"y"


def test_a_layer_unpacks_while_it_downloads(
    plain: Plain, store: Store, tmp_path: Path, applied: list[str]
) -> None:
    payload = os.urandom(6_000_000)
    image = unique_image(tmp_path, PushTarget(plain.host), "test/overlap", payload)
    layer = image.layers[0]
    events = Events()
    unpacked_while_downloading: list[int] = []

    def progress(event: PullProgress) -> None:
        events(event)
        if event.digest == layer.digest and event.phase == "download":
            unpacked_while_downloading.append(staged_bytes(store, "data/payload.bin"))

    rate = 4_000_000  # ~1.5 s for the blob
    with ThrottlingProxy(plain.host, throttle_path=f"/blobs/{layer.digest}", rate=rate) as proxy:
        reference = f"{proxy.host}/{image.repository}:{image.tag}"
        with client_for() as client:
            record = pull(reference, store=store, client=client, progress=progress)
    assert proxy.throttled >= len(layer.blob)
    phases = events.phases(layer.digest)
    assert phases.index("unpacking") < phases.index("downloaded") < phases.index("unpacked")
    assert phases.count("unpacking") == 1
    assert applied == ["streamed"]
    # Not just started: megabytes of the file were unpacked before the download ended.
    assert max(unpacked_while_downloading) >= 1_000_000, unpacked_while_downloading
    root = store.layer_path(record.layers[0].chain_id)
    assert (root / "data/payload.bin").read_bytes() == payload
    assert store.verify().ok


@pytest.mark.parametrize("where", ["early", "late"])
def test_a_tampered_blob_is_refused_while_streaming_and_leaves_nothing(
    plain: Plain, store: Store, tmp_path: Path, applied: list[str], where: str
) -> None:
    target = PushTarget(plain.host)
    image = unique_image(tmp_path, target, f"test/tampered-{where}", os.urandom(3_000_000))
    layer = image.layers[0]
    data = plain.registry.blob_data_path(layer.digest)
    tampered = bytearray(data.read_bytes())
    # Early: gzip's header flags (the unpack fails at once, the download goes on); late: in the
    # payload's data (the unpack keeps up with the download until that fails verification).
    tampered[3 if where == "early" else len(tampered) * 3 // 4] ^= 0xFF
    data.write_bytes(bytes(tampered))

    events = Events()
    rate = 3_000_000
    with ThrottlingProxy(plain.host, throttle_path=f"/blobs/{layer.digest}", rate=rate) as proxy:
        reference = f"{proxy.host}/{image.repository}:{image.tag}"
        with client_for() as client, pytest.raises(VerificationError) as caught:
            pull(reference, store=store, client=client, progress=events)
    message = str(caught.value)
    assert layer.digest in message
    assert f"test/tampered-{where}" in message
    assert applied == ["streamed"]
    assert "unpacking" in events.phases(layer.digest)
    assert "downloaded" not in events.phases(layer.digest)
    assert not store.has_blob(layer.digest)
    assert list(store.ingest_dir.iterdir()) == []
    assert store.images() == {}
    assert list(store.layers.iterdir()) == []  # no layer, no staging dir, not even a lock file


def test_a_cut_connection_during_a_streamed_unpack_resumes_and_ends_verified(
    plain: Plain, store: Store, tmp_path: Path, applied: list[str]
) -> None:
    payload = os.urandom(3_000_000)
    image = unique_image(tmp_path, PushTarget(plain.host), "test/cut-streamed", payload)
    layer = image.layers[0]
    path = f"/blobs/{layer.digest}"
    events = Events()
    with ThrottlingProxy(
        plain.host, throttle_path=path, rate=3_000_000, cut_path=path, cut_after=1_000_000, cuts=1
    ) as proxy:
        reference = f"{proxy.host}/{image.repository}:{image.tag}"
        with client_for() as client:
            record = pull(reference, store=store, client=client, progress=events)
    asks = blob_requests(proxy, layer.digest)
    assert len(asks) == 2
    assert range_of(asks[0]) is None
    resumed_at = int(str(range_of(asks[1])).removeprefix("bytes=").rstrip("-"))
    assert 999_000 < resumed_at < 1_000_000
    phases = events.phases(layer.digest)
    assert phases.index("unpacking") < phases.index("downloaded") < phases.index("unpacked")
    assert applied == ["streamed"]  # one unpack, carried on across the resumed download
    assert (store.layer_path(record.layers[0].chain_id) / "data/payload.bin").read_bytes() == (
        payload
    )
    assert_complete(store, image, reference)
    assert store.verify().ok


def test_a_download_failing_under_a_streamed_unpack_fails_the_pull_and_keeps_the_partial(
    plain: Plain, store: Store, tmp_path: Path, applied: list[str]
) -> None:
    image = unique_image(tmp_path, PushTarget(plain.host), "test/dies", os.urandom(3_000_000))
    layer = image.layers[0]
    path = f"/blobs/{layer.digest}"
    events = Events()
    with (
        ThrottlingProxy(
            plain.host,
            throttle_path=path,
            rate=3_000_000,
            cut_path=path,
            cut_after=1_000_000,
            cuts=1,
            die=True,
        ) as proxy,
        client_for() as client,
        pytest.raises(RegistryError),
    ):
        pull(f"{proxy.host}/{image.repository}:1", store=store, client=client, progress=events)
    assert applied == ["streamed"]
    assert "unpacking" in events.phases(layer.digest)
    assert store.images() == {}
    assert list(store.layers.iterdir()) == []
    partial = store.ingest_dir / f"{layer.digest.removeprefix('sha256:')}.partial"
    assert 990_000 < partial.stat().st_size < 1_000_000  # kept to resume


@pytest.mark.parametrize("rewrite", ["range-ignored", "bad-resumed-partial"])
def test_a_partial_rewritten_from_the_start_is_unpacked_again_from_the_verified_blob(
    plain: Plain, store: Store, tmp_path: Path, applied: list[str], rewrite: str
) -> None:
    payload = os.urandom(3_000_000)
    repository = f"test/rewritten-{rewrite}"
    image = unique_image(tmp_path, PushTarget(plain.host), repository, payload)
    layer = image.layers[0]
    path = f"/blobs/{layer.digest}"
    if rewrite == "range-ignored":
        # Cut after 1 MB; the resuming request loses its Range header: a 200 from byte 0.
        proxy = ThrottlingProxy(
            plain.host, throttle_path=path, rate=3_000_000, strip_range=True, cut_path=path,
            cut_after=1_000_000, cuts=1,
        )  # fmt: skip
    else:
        # A partial from an earlier run whose kept prefix is damaged (a power cut): streamed
        # from byte 0, resumed with Range, fails verification, is fetched again from 0.
        proxy = ThrottlingProxy(plain.host, throttle_path=path, rate=3_000_000)
        prefix = bytearray(layer.blob[:1_000_000])
        prefix[500_000] ^= 0xFF
        partial = store.ingest_dir / f"{layer.digest.removeprefix('sha256:')}.partial"
        partial.write_bytes(bytes(prefix))
    events = Events()
    with proxy, client_for() as client:
        record = pull(f"{proxy.host}/{repository}:1", store=store, client=client, progress=events)
    asks = blob_requests(proxy, layer.digest)
    assert len(asks) == 2
    if rewrite == "range-ignored":
        assert range_of(asks[0]) is None
        assert str(range_of(asks[1])).startswith("bytes=")  # asked, but got the whole blob
    else:
        assert range_of(asks[0]) == "bytes=1000000-"
        assert range_of(asks[1]) is None
    # The streamed unpack was discarded; the layer was unpacked again from the stored blob.
    assert applied == ["streamed", "file"]
    phases = events.phases(layer.digest)
    assert phases.index("unpacking") < phases.index("downloaded") < phases.index("unpacked")
    root = store.layer_path(record.layers[0].chain_id)
    assert (root / "data/payload.bin").read_bytes() == payload
    assert [p.name for p in store.layers.iterdir() if p.name.startswith(".staging-")] == []
    assert_complete(store, image, f"{proxy.host}/{repository}:1")
    assert store.verify().ok
