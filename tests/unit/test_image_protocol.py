"""Pure protocol parts of the image layer: manifests, platforms, configs, auth data, chain IDs."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from quayd.images.auth import Challenge, load_credentials, parse_challenge, parse_credentials
from quayd.images.config import parse_config
from quayd.images.errors import AuthError, ManifestError, PlatformError, VerificationError
from quayd.images.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
    Manifest,
    candidates,
    parse_manifest,
    select_platform,
)
from quayd.images.model import Platform, chain_ids, check_digest, sha256_digest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def manifest_doc(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D1,
            "size": 7,
        },
        "layers": [{"mediaType": GZ, "digest": D2, "size": 100}],
        **extra,
    }


def index_doc(*platforms: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": "sha256:" + f"{i:x}" * 64, "size": 10,
             "platform": p, **(extra or {})}
            for i, p in enumerate(platforms, start=4)
        ],
    }  # fmt: skip


# --- manifests -----------------------------------------------------------------------------------


def test_a_manifest_is_parsed_and_verified_over_its_raw_bytes() -> None:
    body = raw(manifest_doc())
    parsed = parse_manifest(body, content_type=OCI_MANIFEST, expected_digest=sha256_digest(body))
    assert isinstance(parsed, Manifest)
    assert parsed.config.digest == D1
    assert [(layer.digest, layer.size) for layer in parsed.layers] == [(D2, 100)]


def test_the_digest_covers_the_exact_bytes_not_reserialised_json() -> None:
    body = raw(manifest_doc())
    spaced = body.replace(b":", b": ")  # the same JSON, other bytes
    with pytest.raises(VerificationError, match="manifest digest mismatch"):
        parse_manifest(spaced, content_type=None, expected_digest=sha256_digest(body))


@pytest.mark.parametrize(
    ("document", "content_type", "message"),
    [
        pytest.param(
            {**manifest_doc(), "manifests": []},
            None,
            "both an index and a manifest",
            id="cve-2021-41190",
        ),
        pytest.param(manifest_doc(), OCI_INDEX, "disagrees with Content-Type", id="type-mismatch"),
        pytest.param({"schemaVersion": 1, "fsLayers": []}, None, "schema1", id="schema1"),
        pytest.param(
            manifest_doc(mediaType=None),
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "schema1",
            id="schema1-by-header",
        ),
        pytest.param(manifest_doc(schemaVersion=3), None, "schemaVersion", id="schema3"),
        pytest.param(
            manifest_doc(layers=[{"mediaType": GZ, "digest": "sha256:../../etc", "size": 1}]),
            None,
            "not a sha256 digest",
            id="path-in-digest",
        ),
        pytest.param(
            manifest_doc(layers=[{"mediaType": GZ, "digest": D2, "size": -1}]),
            None,
            "invalid size",
            id="negative-size",
        ),
        pytest.param(
            manifest_doc(layers=[{"mediaType": "text/html", "digest": D2, "size": 1}]),
            None,
            "unsupported layer media type",
            id="layer-type",
        ),
        pytest.param(
            {"mediaType": "x/y", "schemaVersion": 2}, None, "unsupported manifest", id="unknown"
        ),
    ],
)
def test_suspicious_manifests_are_refused(
    document: dict[str, Any], content_type: str | None, message: str
) -> None:
    document = {k: v for k, v in document.items() if v is not None}
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw(document), content_type=content_type, expected_digest=None)


def test_oversized_and_non_json_manifests_are_refused() -> None:
    with pytest.raises(ManifestError, match="cap"):
        parse_manifest(b" " * (MAX_MANIFEST_SIZE + 1), content_type=None, expected_digest=None)
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"<html>", content_type=None, expected_digest=None)


def test_docker_types_and_generic_content_types_are_accepted() -> None:
    document = manifest_doc(mediaType=DOCKER_MANIFEST)
    document["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    document["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    parsed = parse_manifest(raw(document), content_type="application/json", expected_digest=None)
    assert isinstance(parsed, Manifest)
    assert parsed.media_type == DOCKER_MANIFEST
    listing = index_doc({"os": "linux", "architecture": "amd64"})
    listing["mediaType"] = DOCKER_LIST
    assert isinstance(
        parse_manifest(raw(listing), content_type=DOCKER_LIST, expected_digest=None), Index
    )


# --- platforms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64/v8"),
        ("linux/arm64", "linux/arm64/v8"),
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
        ("Linux/AMD64", "linux/amd64"),
    ],
)
def test_platforms_are_normalised(text: str, expected: str) -> None:
    assert str(Platform.parse(text)) == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "a/b/c/d", ""])
def test_bad_platforms_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a platform"):
        Platform.parse(text)


def test_host_platform_is_normalised() -> None:
    assert Platform.host() == Platform.host().normalized()
    assert Platform.host().os == "linux"


INDEX = parse_manifest(
    raw(
        index_doc(
            {"os": "linux", "architecture": "amd64"},
            {"os": "linux", "architecture": "arm64", "variant": "v8"},
            {"os": "linux", "architecture": "arm", "variant": "v6"},
            {"os": "linux", "architecture": "arm", "variant": "v7"},
            {"os": "unknown", "architecture": "unknown"},
        )
    ),
    content_type=OCI_INDEX,
    expected_digest=None,
)


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        pytest.param("linux/amd64", "linux/amd64", id="amd64"),
        pytest.param("linux/arm64/v8", "linux/arm64/v8", id="arm64-v8"),
        pytest.param("linux/arm64", "linux/arm64/v8", id="arm64-defaults-v8"),
        pytest.param("linux/arm/v7", "linux/arm/v7", id="arm-v7-exact-first"),
        pytest.param("linux/arm/v8", "linux/arm/v7", id="arm-v8-falls-back-to-v7"),
        pytest.param("linux/arm/v6", "linux/arm/v6", id="arm-v6"),
    ],
)
def test_select_platform(wanted: str, expected: str) -> None:
    assert isinstance(INDEX, Index)
    chosen = select_platform(INDEX, Platform.parse(wanted))
    assert chosen.platform is not None
    assert str(chosen.platform.normalized()) == expected


def test_select_platform_explains_what_is_offered() -> None:
    assert isinstance(INDEX, Index)
    with pytest.raises(PlatformError) as caught:
        select_platform(INDEX, Platform.parse("linux/riscv64"))
    assert str(caught.value) == (
        "the image has no variant for linux/riscv64; it offers: "
        "linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8"
    )


def test_attestation_manifests_are_never_selected() -> None:
    document = index_doc(
        {"os": "linux", "architecture": "amd64"},
        extra={"annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
    )
    index = parse_manifest(raw(document), content_type=None, expected_digest=None)
    assert isinstance(index, Index)
    with pytest.raises(PlatformError):
        select_platform(index, Platform.parse("linux/amd64"))


def test_amd64_may_run_386_only_as_a_fallback() -> None:
    assert [str(p) for p in candidates(Platform.parse("linux/amd64"))] == [
        "linux/amd64",
        "linux/386",
    ]


# --- image config --------------------------------------------------------------------------------


def test_image_config_fields() -> None:
    config = parse_config(
        raw(
            {
                "architecture": "arm",
                "variant": "v7",
                "os": "linux",
                "config": {
                    "Entrypoint": ["/init"],
                    "Cmd": ["serve", "--port", "80"],
                    "Env": ["PATH=/usr/bin", "A=b"],
                    "WorkingDir": "/srv",
                    "User": "www:www",
                    "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
                    "StopSignal": "SIGQUIT",
                    "Labels": {"org.opencontainers.image.version": "1.2"},
                    "Volumes": {"/data": {}},
                    "Healthcheck": {
                        "Test": ["CMD-SHELL", "wget -q localhost"],
                        "Interval": 5_000_000_000,
                        "Timeout": 0,
                        "Retries": 4,
                    },
                },
                "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
            }
        )
    )
    assert config.entrypoint == ("/init",)
    assert config.cmd == ("serve", "--port", "80")
    assert config.env == ("PATH=/usr/bin", "A=b")
    assert (config.working_dir, config.user, config.stop_signal) == ("/srv", "www:www", "SIGQUIT")
    assert config.exposed_ports == ("53/udp", "80/tcp")
    assert config.volumes == ("/data",)
    assert config.labels == {"org.opencontainers.image.version": "1.2"}
    assert config.healthcheck is not None
    assert config.healthcheck.test == ("CMD-SHELL", "wget -q localhost")
    assert config.healthcheck.interval == timedelta(seconds=5)
    assert config.healthcheck.timeout is None
    assert config.healthcheck.retries == 4
    assert config.diff_ids == (D1, D2)
    assert (config.architecture, config.variant) == ("arm", "v7")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Cmd": "sh"}},
                     "config.Cmd must be a list of strings", id="cmd-string"),
        pytest.param({"rootfs": {"type": "tar"}}, "rootfs.type must be 'layers'", id="rootfs-type"),
        pytest.param({"rootfs": {"type": "layers", "diff_ids": ["md5:x"]}}, "not a sha256 digest",
                     id="bad-diff-id"),
        pytest.param({"rootfs": {"type": "layers", "diff_ids": []},
                      "config": {"Healthcheck": {"Test": ["RUN", "x"]}}}, "unknown 'RUN'",
                     id="bad-healthcheck"),
        pytest.param({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"User": 0}},
                     "'User' must be a string", id="numeric-user"),
    ],
)  # fmt: skip
def test_bad_image_configs_name_the_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_config(raw(document))


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:library/busybox:pull"',
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.example/token",
                    "service": "registry.example",
                    "scope": "repository:library/busybox:pull",
                },
            ),
            id="bearer",
        ),
        pytest.param(
            'Basic realm="Registry Realm"',
            Challenge("basic", {"realm": "Registry Realm"}),
            id="basic",
        ),
        pytest.param(
            'bearer realm = "a\\"b" , error="insufficient_scope"',
            Challenge("bearer", {"realm": 'a"b', "error": "insufficient_scope"}),
            id="spaces-and-escapes",
        ),
        pytest.param("Bearer", Challenge("bearer", {}), id="no-params"),
        pytest.param("", None, id="empty"),
        pytest.param("=broken", None, id="garbage"),
    ],
)
def test_parse_challenge(header: str, expected: Challenge | None) -> None:
    assert parse_challenge(header) == expected


def test_credentials_from_a_docker_config_file(tmp_path: Path) -> None:
    auth = base64.b64encode(b"alice:s3cr:et").decode()
    path = tmp_path / "auth.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": auth},
                    "registry.lan:5000": {"username": "bob", "password": "pw"},
                    "token-only.example": {"identitytoken": "x"},
                }
            }
        )
    )
    credentials = load_credentials(path)
    assert credentials.lookup("docker.io") == ("alice", "s3cr:et")
    assert credentials.lookup("registry-1.docker.io") == ("alice", "s3cr:et")
    assert credentials.lookup("registry.lan:5000") == ("bob", "pw")
    assert credentials.lookup("registry.lan") is None
    assert credentials.lookup("token-only.example") is None
    assert len(load_credentials(None)) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{", "not valid JSON", id="json"),
        pytest.param('{"auths": {"x": {"auth": "!!!"}}}', "not base64", id="base64"),
        pytest.param('{"auths": {"x": {"auth": "dXNlcg=="}}}', "must decode to", id="no-colon"),
        pytest.param('{"auths": []}', '"auths" must be an object', id="auths-list"),
    ],
)
def test_bad_credentials_files_are_explained(text: str, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        parse_credentials(text.encode())


def test_a_missing_credentials_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="does not exist"):
        load_credentials(tmp_path / "nope.json")


# --- digests and chain IDs -----------------------------------------------------------------------


def test_chain_ids_follow_the_oci_definition() -> None:
    # ChainID(L0) = DiffID(L0); ChainID(L1) = sha256(ChainID(L0) + " " + DiffID(L1)); ...
    first = chain_ids([D1])
    assert first == [D1]
    two = chain_ids([D1, D2])
    assert two[1] == sha256_digest(f"{D1} {D2}".encode())
    three = chain_ids([D1, D2, D3])
    assert three[:2] == two
    assert three[2] == sha256_digest(f"{two[1]} {D3}".encode())


@pytest.mark.parametrize(
    "text", ["sha256:abc", "sha512:" + "a" * 128, "sha256:" + "A" * 64, "../" + "a" * 64, 5]
)
def test_only_sha256_digests_are_accepted(text: object) -> None:
    with pytest.raises(ManifestError, match="not a sha256 digest"):
        check_digest(text)
