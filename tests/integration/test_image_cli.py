"""`quayctl image …` as a user runs it, against a real registry; and quay's tree against umoci's.

The acceptance check of the image store: `quayctl image pull 127.0.0.1:PORT/test/multi:1` leaves
a verified image whose overlay-mounted tree equals what `skopeo copy` + `umoci unpack` make of
the same image.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quayd.images.store import Store
from tests.support import images
from tests.support.registry import Registry, running_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root (owners, xattrs)"),
]

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("images")
    target = images.PushTarget(registry.host)
    busybox = images.busybox_image(work, target)
    # test/multi:1 is gzip throughout, so umoci 0.4.7 (Debian 12) can unpack it for comparison;
    # its twin with a zstd top layer checks the CLI on zstd too.
    multi = images.multi_image(work, target, repository="test/multi", zstd=False)
    zstd = images.multi_image(work / "zstd", target, repository="test/multi-zstd")
    return {
        "busybox": busybox.reference(registry.host),
        "multi": multi.reference(registry.host),
        "multi-zstd": zstd.reference(registry.host),
    }


class Quayctl:
    def __init__(self, work: Path) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.settings = work / "quayd.toml"
        self.settings.write_text("")
        self.state = work / "state"

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable, "-m", "quayd.cli.quayctl",
            "--config", str(self.settings), "--state-dir", str(self.state), *args,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stderr}")
        return result

    @property
    def store(self) -> Store:
        return Store(self.state / "images")


@pytest.fixture
def quayctl(tmp_path: Path) -> Quayctl:
    return Quayctl(tmp_path)


def test_pull_ls_rm_prune(quayctl: Quayctl, pushed: dict[str, str]) -> None:
    result = quayctl("image", "pull", pushed["busybox"])
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    reference, digest, platform = result.stdout.split()
    assert reference == pushed["busybox"]
    assert digest.startswith("sha256:")
    listing = json.loads(quayctl("image", "ls", "--json").stdout)
    assert [image["reference"] for image in listing] == [pushed["busybox"]]
    assert listing[0]["manifest_digest"] == digest
    assert listing[0]["platform"] == platform
    table = quayctl("image", "ls").stdout.splitlines()
    assert table[0].split() == ["REFERENCE", "DIGEST", "PLATFORM", "SIZE", "STORED"]
    assert table[1].startswith(pushed["busybox"])

    assert quayctl("image", "rm", pushed["busybox"]).stdout.startswith(
        f"removed {pushed['busybox']}"
    )
    assert quayctl.store.images() == {}
    assert not any(quayctl.store.blobs.iterdir())  # rm frees what only that image used
    missing = quayctl("image", "rm", pushed["busybox"], check=False)
    assert missing.returncode == 1
    assert "no image" in missing.stderr


def test_prune_unused_keeps_what_units_name(
    quayctl: Quayctl, pushed: dict[str, str], tmp_path: Path
) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (units / "app.toml").write_text(f'[container]\nimage = "{pushed["busybox"]}"\n')
    # An invalid unit's image is kept too: its last good version may still be running.
    (units / "bad.toml").write_text(f'[container]\nimage = "{pushed["multi-zstd"]}"\nbogus = 1\n')
    quayctl("image", "pull", pushed["busybox"])
    quayctl("image", "pull", pushed["multi-zstd"])
    quayctl("image", "pull", pushed["multi"])
    result = quayctl("--config-dir", str(units), "image", "prune", "--unused")
    assert f"removed {pushed['multi']}" in result.stdout
    assert sorted(quayctl.store.images()) == sorted([pushed["busybox"], pushed["multi-zstd"]])


def test_verify_detects_and_repairs_a_truncated_layer_blob(
    quayctl: Quayctl, pushed: dict[str, str]
) -> None:
    quayctl("image", "pull", pushed["busybox"])
    assert "all stored content verifies" in quayctl("image", "verify").stdout
    record = quayctl.store.get(pushed["busybox"])
    assert record is not None
    blob = quayctl.store.blob_path(record.layers[0].digest)
    blob.write_bytes(b"")  # what a power cut can leave behind
    damaged = quayctl("image", "verify", check=False)
    assert damaged.returncode == 1
    assert f"damaged blob removed: {record.layers[0].digest}" in damaged.stdout
    assert "--repair" in damaged.stderr
    repaired = quayctl("image", "verify", "--repair")
    assert f"repaired: {pushed['busybox']}" in repaired.stdout
    assert quayctl.store.has_blob(record.layers[0].digest)
    assert "all stored content verifies" in quayctl("image", "verify").stdout


def test_pull_errors_are_clear_and_exit_1(quayctl: Quayctl, registry: Registry) -> None:
    result = quayctl("image", "pull", f"{registry.host}/test/nothing:1", check=False)
    assert result.returncode == 1
    assert f"pulling {registry.host}/test/nothing:1" in result.stderr
    bad = quayctl("image", "pull", "Not A Reference", check=False)
    assert bad.returncode == 1
    assert "spaces" in bad.stderr


# --- loading archives ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "name_given"),
    [
        pytest.param("oci-archive", True, id="oci-archive"),
        pytest.param("docker-archive", True, id="docker-archive"),
        pytest.param("oci", False, id="oci-layout-tag-only"),
    ],
)
def test_load_an_archive_gives_the_same_image_as_a_pull(
    quayctl: Quayctl, pushed: dict[str, str], tmp_path: Path, transport: str, name_given: bool
) -> None:
    source = pushed["multi"]
    archive = tmp_path / f"image.{transport}"
    destination = f"{transport}:{archive}:" + ("test/multi:1" if name_given else "1")
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{source}", destination],
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    loader = Quayctl(tmp_path / "loader")
    if not name_given:
        refused = loader("image", "load", str(archive), check=False)
        assert refused.returncode == 1
        assert "--reference" in refused.stderr
    args = ["--reference", "test/multi:1"] if not name_given else []
    loaded = loader("image", "load", str(archive), *args)
    assert loaded.stdout.startswith("loaded docker.io/test/multi:1 sha256:")

    quayctl("image", "pull", source)
    pulled = quayctl.store.get(source)
    stored = loader.store.get("docker.io/test/multi:1")
    assert pulled is not None
    assert stored is not None
    # docker save re-encodes layers uncompressed; what must agree is what they unpack to.
    assert [layer.diff_id for layer in stored.layers] == [layer.diff_id for layer in pulled.layers]
    assert [layer.chain_id for layer in stored.layers] == [
        layer.chain_id for layer in pulled.layers
    ]
    assert tree(loader.store.layer_path(stored.layers[-1].chain_id)) == tree(
        quayctl.store.layer_path(pulled.layers[-1].chain_id)
    )
    assert "all stored content verifies" in loader("image", "verify").stdout


def test_load_refuses_what_is_not_an_image_archive(quayctl: Quayctl, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all")
    result = quayctl("image", "load", str(junk), check=False)
    assert result.returncode == 1
    assert "cannot read it as a tar archive" in result.stderr


# --- quay's tree equals umoci's ------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: type, mode, owner, link target, content hash, xattrs."""
    entries: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(directory) / name
            info = path.lstat()
            relative = str(path.relative_to(root))
            kind = stat.S_IFMT(info.st_mode)
            content: object = None
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
                # Hardlinks: name the first path of each inode, so both trees are comparable.
                content = (content, inodes.setdefault(info.st_ino, relative))
            xattrs = (
                {}
                if stat.S_ISLNK(info.st_mode)
                else {
                    key: os.getxattr(path, key)
                    for key in os.listxattr(path)
                    if key.startswith(("user.", "security.capability"))
                }
            )
            mtime = None if stat.S_ISDIR(info.st_mode) else int(info.st_mtime)
            entries[relative] = (
                kind,
                stat.S_IMODE(info.st_mode),
                info.st_uid,
                info.st_gid,
                content,
                tuple(sorted(xattrs.items())),
                mtime,
            )
    return entries


@pytest.fixture
def overlay_of(tmp_path: Path) -> Iterator[object]:
    mounted: list[Path] = []

    def mount(layers: list[Path]) -> Path:
        target = tmp_path / f"merged{len(mounted)}"
        upper, work = tmp_path / f"upper{len(mounted)}", tmp_path / f"work{len(mounted)}"
        for directory in (target, upper, work):
            directory.mkdir()
        lower = ":".join(str(layer) for layer in reversed(layers))  # top-most first
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={upper},workdir={work}", str(target)],
            check=True,
        )  # fmt: skip
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


def test_quays_overlay_tree_equals_umocis_unpack(
    quayctl: Quayctl, pushed: dict[str, str], tmp_path: Path, overlay_of: object
) -> None:
    source = pushed["multi"]
    assert source.endswith("/test/multi:1")
    quayctl("image", "pull", source)
    record = quayctl.store.get(source)
    assert record is not None
    assert "all stored content verifies" in quayctl("image", "verify").stdout
    layers = [quayctl.store.layer_path(layer.chain_id) for layer in record.layers]
    merged = overlay_of(layers)  # type: ignore[operator]

    layout = tmp_path / "umoci-layout"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{source}",
         f"oci:{layout}:1"],
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:1", str(bundle)], check=True)

    ours, theirs = tree(merged), tree(bundle / "rootfs")
    assert ours.keys() == theirs.keys()
    assert ours == theirs
    # The test image is worth comparing: it has deletions, links, setuid and xattrs.
    kinds = {entry[0] for entry in ours.values()}
    assert {stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK} <= kinds
    assert any(isinstance(mode := entry[1], int) and mode & stat.S_ISUID for entry in ours.values())
    assert any(entry[5] for entry in ours.values())


def test_an_updated_tag_keeps_the_previous_image_for_rollback(
    quayctl: Quayctl, registry: Registry, tmp_path: Path
) -> None:
    target = images.PushTarget(registry.host)
    first = images.busybox_image(tmp_path / "v1", target, repository="test/moving")
    reference = first.reference(registry.host)
    quayctl("image", "pull", reference)
    # The tag moves to other content (the multi image, pushed under the same name).
    images.multi_image(tmp_path / "v2", target, repository="test/moving", zstd=False)
    quayctl("image", "pull", reference)
    store = quayctl.store
    current, previous = store.get(reference), store.previous(reference)
    assert current is not None
    assert previous is not None
    assert previous.manifest_digest == first.digest
    assert current.manifest_digest != first.digest
    # prune keeps what the previous version needs; rm lets both go.
    quayctl("image", "prune")
    assert all(store.has_blob(layer.digest) for layer in previous.layers)
    assert all(store.has_layer(layer.chain_id) for layer in previous.layers)
    quayctl("image", "rm", reference)
    assert store.previous(reference) is None
    assert not any(store.blobs.iterdir())


def test_layer_caps_from_the_settings_are_enforced(
    quayctl: Quayctl, pushed: dict[str, str]
) -> None:
    quayctl.settings.write_text('[images]\nmax_layer_size = "64K"\n')
    result = quayctl("image", "pull", pushed["busybox"], check=False)
    assert result.returncode == 1
    assert "the limit on a layer's uncompressed size" in result.stderr
    assert quayctl.store.images() == {}
    assert not any(quayctl.store.layers.glob("[!.]*"))  # nothing half-unpacked left behind
