"""An update's image versions in a real store, from a real registry (docker-registry on
127.0.0.1): the tag's digest checked without a download, both versions kept through garbage
collection, a rollback pointing the tag back, a version pulled back by digest."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quayd.images.errors import RegistryError
from quayd.images.pull import pull, resolve_digest
from quayd.images.registry import RegistryClient, RetryPolicy
from quayd.images.store import Store
from quayd.images.versions import by_digest_reference, point_at, remove_versions, versions
from tests.support.images import PushTarget, unique_image
from tests.support.registry import Registry, running_registry

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.05)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with running_registry(tmp_path / "registry") as running:
        yield running


def test_versions_of_a_moving_tag(tmp_path: Path, registry: Registry) -> None:
    target = PushTarget(registry.host)
    reference = f"{registry.host}/team/app:stable"
    store = Store(tmp_path / "images")
    with RegistryClient(None, retry=FAST) as client:
        v1 = unique_image(tmp_path, target, "team/app", b"v1" * 1000, tag="stable")
        assert resolve_digest(reference, client=client) == v1.digest
        pull(reference, store=store, client=client)
        v2 = unique_image(tmp_path / "v2", target, "team/app", b"v2" * 1000, tag="stable")
        layer_gets = len(registry.responses("/blobs/"))
        assert resolve_digest(reference, client=client) == v2.digest
        assert len(registry.responses("/blobs/")) == layer_gets  # the check downloads nothing
        pull(reference, store=store, client=client)
        assert set(versions(store, reference)) == {v1.digest, v2.digest}

        # Garbage collection keeping the unit's reference keeps the version a rollback needs.
        store.prune(keep=[reference])
        kept = versions(store, reference)
        assert set(kept) == {v1.digest, v2.digest}
        assert all(store.has_layer(layer.chain_id) for layer in kept[v1.digest].layers)

        # A rollback points the tag back at v1; v2 becomes the previous one.
        point_at(store, reference, kept[v1.digest])
        current, previous = store.get(reference), store.previous(reference)
        assert current is not None
        assert previous is not None
        assert (current.manifest_digest, previous.manifest_digest) == (v1.digest, v2.digest)
        assert current.reference == reference

        # replace-then-download removes every version (and its content): v1 comes back by
        # digest, and is removed with the rest the next time.
        remove_versions(store, reference)
        assert versions(store, reference) == {}
        assert not any(store.has_layer(layer.chain_id) for layer in kept[v1.digest].layers)
        pull(by_digest_reference(reference, v1.digest), store=store, client=client)
        assert set(versions(store, reference)) == {v1.digest}
        remove_versions(store, reference)
        assert versions(store, reference) == {}
        assert store.images() == {}


def test_the_check_of_an_unreachable_registry_fails_with_its_address() -> None:
    with RegistryClient(None, retry=FAST) as client, pytest.raises(RegistryError) as caught:
        resolve_digest("127.0.0.1:1/team/app:stable", client=client)
    assert "127.0.0.1:1" in str(caught.value)


def test_an_update_pull_is_held_to_its_bandwidth_cap(tmp_path: Path, registry: Registry) -> None:
    """``[updates] bandwidth``: 1 MiB of incompressible layer at 256 KiB/s takes its 4 s."""
    target = PushTarget(registry.host)
    image = unique_image(tmp_path, target, "team/big", os.urandom(1 << 20))
    reference = f"{registry.host}/team/big:1"
    with RegistryClient(None, retry=FAST) as client:
        began = time.monotonic()
        pull(reference, store=Store(tmp_path / "fast"), client=client)
        uncapped = time.monotonic() - began
        began = time.monotonic()
        record = pull(reference, store=Store(tmp_path / "capped"), client=client,
                      max_rate=256 << 10)  # fmt: skip
        capped = time.monotonic() - began
    assert record.manifest_digest == image.digest
    size = sum(layer.size for layer in record.layers)
    assert size > 1 << 20
    expected = size / (256 << 10) - 0.25  # less the limiter's burst allowance
    assert expected <= capped < expected + 3, (capped, uncapped)
    assert uncapped < 1.5, uncapped
    print(f"uncapped {uncapped:.2f} s, capped at 256 KiB/s {capped:.2f} s")
