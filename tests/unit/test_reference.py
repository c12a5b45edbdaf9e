"""Image references: Docker's grammar and normalisation."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quayd.units.reference import (
    DOCKER_HUB,
    MAX_NAME_LENGTH,
    ImageReference,
    ImageReferenceError,
    parse_reference,
)

SHA = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "ab" * 64


def ref(
    registry: str, repository: str, tag: str | None = "latest", digest: str | None = None
) -> ImageReference:
    return ImageReference(registry=registry, repository=repository, tag=tag, digest=digest)


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        # --- Docker Hub normalisation ---
        pytest.param(
            "busybox",
            ref(DOCKER_HUB, "library/busybox"),
            "docker.io/library/busybox:latest",
            id="bare-name",
        ),
        pytest.param(
            "busybox:1.36",
            ref(DOCKER_HUB, "library/busybox", "1.36"),
            "docker.io/library/busybox:1.36",
            id="bare-name-tag",
        ),
        pytest.param(
            "library/busybox",
            ref(DOCKER_HUB, "library/busybox"),
            "docker.io/library/busybox:latest",
            id="library-prefix",
        ),
        pytest.param(
            "docker.io/busybox",
            ref(DOCKER_HUB, "library/busybox"),
            "docker.io/library/busybox:latest",
            id="hub-one-part",
        ),
        pytest.param(
            "docker.io/library/busybox:latest",
            ref(DOCKER_HUB, "library/busybox"),
            "docker.io/library/busybox:latest",
            id="already-canonical",
        ),
        pytest.param(
            "index.docker.io/busybox",
            ref(DOCKER_HUB, "library/busybox"),
            "docker.io/library/busybox:latest",
            id="index-alias",
        ),
        pytest.param(
            "registry-1.docker.io/team/app:v1",
            ref(DOCKER_HUB, "team/app", "v1"),
            "docker.io/team/app:v1",
            id="registry-1-alias",
        ),
        pytest.param(
            "team/app", ref(DOCKER_HUB, "team/app"), "docker.io/team/app:latest", id="hub-user"
        ),
        pytest.param(
            "team/group/app",
            ref(DOCKER_HUB, "team/group/app"),
            "docker.io/team/group/app:latest",
            id="hub-three-parts",
        ),
        pytest.param(
            "localhost",
            ref(DOCKER_HUB, "library/localhost"),
            "docker.io/library/localhost:latest",
            id="localhost-alone-is-an-image",
        ),
        pytest.param(
            "localhost:5000",
            ref(DOCKER_HUB, "library/localhost", "5000"),
            "docker.io/library/localhost:5000",
            id="localhost-port-alone-is-a-tag",
        ),
        # --- other registries ---
        pytest.param(
            "registry.example:5000/team/app:v2",
            ref("registry.example:5000", "team/app", "v2"),
            "registry.example:5000/team/app:v2",
            id="registry-port-tag",
        ),
        pytest.param(
            "registry.example/app",
            ref("registry.example", "app"),
            "registry.example/app:latest",
            id="registry-one-part-no-library",
        ),
        pytest.param(
            "quay.io/a/b/c/d",
            ref("quay.io", "a/b/c/d"),
            "quay.io/a/b/c/d:latest",
            id="deep-path",
        ),
        pytest.param(
            "localhost/app", ref("localhost", "app"), "localhost/app:latest", id="localhost"
        ),
        pytest.param(
            "localhost:5000/app:v1",
            ref("localhost:5000", "app", "v1"),
            "localhost:5000/app:v1",
            id="localhost-port",
        ),
        pytest.param(
            "[::1]:5000/app:v1",
            ref("[::1]:5000", "app", "v1"),
            "[::1]:5000/app:v1",
            id="ipv6-port",
        ),
        pytest.param(
            "[fe80::1]/app", ref("[fe80::1]", "app"), "[fe80::1]/app:latest", id="ipv6-no-port"
        ),
        pytest.param(
            "10.0.0.1:5000/app",
            ref("10.0.0.1:5000", "app"),
            "10.0.0.1:5000/app:latest",
            id="ipv4-port",
        ),
        pytest.param(
            "Registry.Example/app",
            ref("Registry.Example", "app"),
            "Registry.Example/app:latest",
            id="registry-case-kept",
        ),
        pytest.param(
            "Foo/bar", ref("Foo", "bar"), "Foo/bar:latest", id="uppercase-first-part-is-a-host"
        ),
        pytest.param(
            "a-b.example/x", ref("a-b.example", "x"), "a-b.example/x:latest", id="host-dash"
        ),
        pytest.param(
            "docker.io:443/app",
            ref("docker.io:443", "app"),
            "docker.io:443/app:latest",
            id="hub-with-port-is-not-hub",
        ),
        # --- repository separators ---
        pytest.param(
            "team/my-app_x__y.z--w",
            ref(DOCKER_HUB, "team/my-app_x__y.z--w"),
            "docker.io/team/my-app_x__y.z--w:latest",
            id="separators",
        ),
        pytest.param("0/1", ref(DOCKER_HUB, "0/1"), "docker.io/0/1:latest", id="digit-components"),
        # --- tags ---
        pytest.param(
            "app:_tag", ref(DOCKER_HUB, "library/app", "_tag"), None, id="tag-starts-underscore"
        ),
        pytest.param(
            "app:V1.0-rc_1", ref(DOCKER_HUB, "library/app", "V1.0-rc_1"), None, id="tag-mixed"
        ),
        pytest.param(
            "app:" + "t" * 128,
            ref(DOCKER_HUB, "library/app", "t" * 128),
            None,
            id="tag-128-chars",
        ),
        # --- digests ---
        pytest.param(
            "app@" + SHA,
            ref(DOCKER_HUB, "library/app", None, SHA),
            f"docker.io/library/app@{SHA}",
            id="digest-no-latest",
        ),
        pytest.param(
            "app:v1@" + SHA,
            ref(DOCKER_HUB, "library/app", "v1", SHA),
            f"docker.io/library/app:v1@{SHA}",
            id="tag-and-digest",
        ),
        pytest.param(
            "reg.example:5000/app@" + SHA,
            ref("reg.example:5000", "app", None, SHA),
            f"reg.example:5000/app@{SHA}",
            id="registry-port-digest",
        ),
        pytest.param(
            "app@" + SHA512, ref(DOCKER_HUB, "library/app", None, SHA512), None, id="sha512"
        ),
        pytest.param(
            "app@multihash+base58:" + "A" * 32,
            ref(DOCKER_HUB, "library/app", None, "multihash+base58:" + "A" * 32),
            None,
            id="other-algorithm",
        ),
    ],
)
def test_parse_reference(text: str, expected: ImageReference, canonical: str | None) -> None:
    parsed = parse_reference(text)
    assert parsed == expected
    assert ImageReference.parse(text) == expected
    assert parsed.name == f"{expected.registry}/{expected.repository}"
    if canonical is not None:
        assert str(parsed) == canonical
    assert parse_reference(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # --- empty and spaces ---
        pytest.param("", "an image reference cannot be empty", id="empty"),
        pytest.param("   ", "an image reference cannot be empty", id="blank"),
        pytest.param(" busybox", "an image reference cannot contain spaces", id="leading-space"),
        pytest.param("busybox\n", "an image reference cannot contain spaces", id="newline"),
        pytest.param("busy box", "an image reference cannot contain spaces", id="inner-space"),
        pytest.param("busybox:\t1", "an image reference cannot contain spaces", id="tab"),
        pytest.param("busy\u00a0box", "cannot contain spaces", id="no-break-space"),
        # --- repository ---
        pytest.param("Busybox", "repository name 'Busybox' must be lowercase", id="uppercase-bare"),
        pytest.param(
            "team/App", "repository name 'team/App' must be lowercase", id="uppercase-path"
        ),
        pytest.param(
            "reg.example/Team/app:v1",
            "repository name 'Team/app' must be lowercase",
            id="uppercase-after-registry",
        ),
        pytest.param("/busybox", "'/busybox' is not a repository name", id="leading-slash"),
        pytest.param("docker.io/", "'' is not a repository name", id="registry-only"),
        pytest.param(":latest", "'' is not a repository name", id="tag-only"),
        pytest.param("@" + SHA, "'' is not a repository name", id="digest-only"),
        pytest.param("team//app", "'team//app' is not a repository name", id="double-slash"),
        pytest.param("team/", "'team/' is not a repository name", id="trailing-slash"),
        pytest.param("a___b", "'a___b' is not a repository name", id="triple-underscore"),
        pytest.param("a..b", "'a..b' is not a repository name", id="double-dot"),
        pytest.param("a._b", "'a._b' is not a repository name", id="dot-underscore"),
        pytest.param("-app", "'-app' is not a repository name", id="leading-dash"),
        pytest.param(
            "my_app.example/app",
            "'my_app.example' is not a registry host[:port]",
            id="dotted-first-part-is-a-host",
        ),
        pytest.param("app-", "'app-' is not a repository name", id="trailing-dash"),
        pytest.param("app_", "'app_' is not a repository name", id="trailing-underscore"),
        pytest.param("team/.app", "'team/.app' is not a repository name", id="component-dot"),
        pytest.param("caf\u00e9", "'caf\u00e9' is not a repository name", id="non-ascii"),
        pytest.param(
            "app!", "(lowercase letters, digits and separators . _ __ - between them", id="bang"
        ),
        # --- registry ---
        pytest.param(
            "reg_istry.example/app",
            "'reg_istry.example' is not a registry host[:port]",
            id="underscore-host",
        ),
        pytest.param(
            "reg.example:123456/app",
            "'reg.example:123456' is not a registry host[:port]",
            id="port-six-digits",
        ),
        pytest.param(
            "reg.example:/app", "'reg.example:' is not a registry host[:port]", id="empty-port"
        ),
        pytest.param(
            "-reg.example/app", "'-reg.example' is not a registry host[:port]", id="leading-dash"
        ),
        pytest.param("reg..example/app", "is not a registry host[:port]", id="empty-label"),
        pytest.param("[::1/app", "'[::1' is not a registry host[:port]", id="unclosed-bracket"),
        pytest.param(
            "[::1]:port/app", "'[::1]:port' is not a registry host[:port]", id="named-port"
        ),
        pytest.param(
            "busybox:a/b", "'busybox:a' is not a registry host[:port]", id="slash-after-tag"
        ),
        pytest.param(
            "localhost:\u0665\u0660\u0660\u0660/app",
            "is not a registry host[:port]",
            id="non-ascii-port-digits",
        ),
        # --- tags ---
        pytest.param("busybox:", "'' is not a tag", id="empty-tag"),
        pytest.param("busybox:.v1", "'.v1' is not a tag (up to 128 letters", id="tag-dot"),
        pytest.param("busybox:-v1", "'-v1' is not a tag", id="tag-dash"),
        pytest.param("busybox:v1+2", "'v1+2' is not a tag", id="tag-plus"),
        pytest.param("busybox:" + "t" * 129, "is not a tag", id="tag-129-chars"),
        pytest.param("busybox:t\u00e4g", "'t\u00e4g' is not a tag", id="tag-non-ascii"),
        pytest.param("busybox:\u0661", "is not a tag", id="tag-non-ascii-digit"),
        pytest.param("busybox:a:b", "'busybox:a' is not a repository name", id="two-colons"),
        # --- digests ---
        pytest.param(
            "busybox@sha256:abc",
            "'sha256:abc' is not a digest (expected ALGORITHM:HEX)",
            id="short-digest",
        ),
        pytest.param("busybox@", "'' is not a digest", id="empty-digest"),
        pytest.param("busybox@latest", "'latest' is not a digest", id="digest-no-algorithm"),
        pytest.param("busybox@:" + "a" * 64, "is not a digest", id="digest-empty-algorithm"),
        pytest.param("busybox@SHA256:" + "a" * 64, "is not a digest", id="algorithm-uppercase"),
        pytest.param("busybox@sha256:" + "g" * 64, "is not a digest", id="not-hex"),
        pytest.param(f"busybox@{SHA}@{SHA}", "is not a digest", id="two-digests"),
        pytest.param(
            "busybox@sha256:" + "A" * 64,
            "a sha256 digest is 64 lowercase hex digits",
            id="sha256-uppercase",
        ),
        pytest.param(
            "busybox@sha256:" + "a" * 63,
            "a sha256 digest is 64 lowercase hex digits",
            id="sha256-63",
        ),
        pytest.param(
            "busybox@sha256:" + "a" * 65,
            "a sha256 digest is 64 lowercase hex digits",
            id="sha256-65",
        ),
        pytest.param(f"busybox@{SHA}:v1", "is not a digest", id="tag-after-digest"),
        # --- length ---
        pytest.param(
            "reg.io/" + "a" * 249,
            f"the repository name is longer than {MAX_NAME_LENGTH} characters",
            id="registry-256",
        ),
        pytest.param("a" * 256, "longer than 255 characters", id="bare-256"),
        pytest.param("a" * 238, "longer than 255 characters", id="hub-255-before-library-prefix"),
        pytest.param("docker.io/library/" + "a" * 238, "longer than 255 characters", id="hub-256"),
    ],
)
def test_parse_reference_rejects(text: str, message: str) -> None:
    with pytest.raises(ImageReferenceError) as caught:
        parse_reference(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "name_length"),
    [
        pytest.param("reg.io/" + "a" * 248, 255, id="registry-255"),
        pytest.param("a" * 237, 255, id="hub-255-with-library-prefix"),
        pytest.param("team/" + "a" * 240, 255, id="hub-255-user"),
        pytest.param("index.docker.io/team/" + "a" * 240, 255, id="alias-counted-as-docker-io"),
    ],
)
def test_name_length_limit_counts_the_normalised_name(text: str, name_length: int) -> None:
    parsed = parse_reference(text)
    assert len(parsed.name) == name_length
    assert parse_reference(str(parsed)) == parsed


def test_non_string_is_refused() -> None:
    with pytest.raises(ImageReferenceError, match="cannot be empty"):
        parse_reference(None)  # type: ignore[arg-type]


def test_error_is_a_value_error() -> None:
    assert issubclass(ImageReferenceError, ValueError)


def test_str_without_tag_or_digest() -> None:
    assert str(ref("reg.example", "app", None)) == "reg.example/app"


# --- properties ----------------------------------------------------------------------------------

alnum = st.text(alphabet="abcxyz0189", min_size=1, max_size=6)
components = st.builds(
    lambda first, rest: first + "".join(separator + part for separator, part in rest),
    alnum,
    st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--"]), alnum), max_size=2),
)
hosts = st.one_of(
    st.sampled_from(
        [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "localhost",
            "quay.io",
            "Registry.Example",
            "[::1]",
            "[fe80::a:1]",
            "10.1.2.3",
        ]
    ),
    st.lists(alnum, min_size=2, max_size=3).map(".".join),
)
registries = st.one_of(
    st.none(),
    hosts,
    st.builds(lambda host, port: f"{host}:{port}", hosts, st.integers(1, 65535)),
)
tags = st.builds(
    str.__add__,
    st.sampled_from("aZ9_"),
    st.text(alphabet="abXY09_.-", max_size=20),
)
digests = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=32, max_size=40).map(
        lambda h: f"sha1+x.y:{h}"
    ),
)


@st.composite
def reference_texts(draw: st.DrawFn) -> str:
    long = draw(st.none() | st.integers(200, 260))  # a component that nears the length limit
    parts = draw(st.lists(components, min_size=0 if long else 1, max_size=4))
    if long is not None:
        parts.append("a" * long)
    registry = draw(registries)
    if registry is None and len(parts) > 1:
        parts[0] = parts[0].replace(".", "-")  # a dot would make the first part a registry host
    path = "/".join(parts)
    text = path if registry is None else f"{registry}/{path}"
    tag = draw(st.none() | tags)
    if tag is not None:
        text += f":{tag}"
    digest = draw(st.none() | digests)
    if digest is not None:
        text += f"@{digest}"
    return text


@settings(max_examples=200)
@given(reference_texts())
@example("a" * 240)
@example("docker.io/" + "a" * 245)
def test_str_is_a_fixed_point(text: str) -> None:
    try:
        parsed = parse_reference(text)
    except ImageReferenceError as error:
        refused = str(error)
    else:
        refused = ""
    if refused:
        assert "longer than" in refused  # every generated reference is valid but for its length
        return
    canonical = str(parsed)
    again = parse_reference(canonical)
    assert again == parsed
    assert str(again) == canonical
    assert len(parsed.name) <= MAX_NAME_LENGTH
    assert parsed.registry not in ("index.docker.io", "registry-1.docker.io")
    assert parsed.tag is not None or parsed.digest is not None


@settings(max_examples=200)
@given(
    st.one_of(
        st.text(max_size=30),
        st.text(alphabet="abAB09:/@._-[]sha256 ", max_size=30),
    )
)
def test_any_text_parses_to_a_fixed_point_or_is_refused(text: str) -> None:
    try:
        parsed = parse_reference(text)
    except ImageReferenceError:
        return
    assert parse_reference(str(parsed)) == parsed
    assert text.strip() == text
