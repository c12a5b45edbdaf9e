"""The versions of an image reference the store holds, by digest: what an update can start or
roll back to without the registry.

A reference (``registry.lan:5000/app:stable``) names one image in the store and keeps the one
it named before (``Store.previous``), and :meth:`Store.prune` keeps both: the previous digest of
an update stays until the next one, whatever garbage collection runs in between. An image
pulled by digest for a rollback is stored under ``REPOSITORY@DIGEST``.
"""

from __future__ import annotations

import dataclasses

from quayd.images.model import ImageRecord
from quayd.images.store import Store
from quayd.units.reference import parse_reference


def by_digest_reference(reference: str, digest: str) -> str:
    """``REPOSITORY@DIGEST`` of ``reference``'s repository, normalised as the store keys it."""
    image = parse_reference(reference)
    return str(parse_reference(f"{image.registry}/{image.repository}@{digest}"))


def versions(store: Store, reference: str) -> dict[str, ImageRecord]:
    """The stored images of ``reference`` by manifest digest: what it names, what it named
    before, and what ``by_digest_reference`` holds for either."""
    found: dict[str, ImageRecord] = {}
    for record in (store.previous(reference), store.get(reference)):
        if record is not None:
            found[record.manifest_digest] = record
    prefix = by_digest_reference(reference, "sha256:" + "0" * 64).rsplit("@", 1)[0] + "@"
    for key, record in store.images().items():
        if key.startswith(prefix):
            found.setdefault(record.manifest_digest, record)
    return found


def point_at(store: Store, reference: str, record: ImageRecord) -> None:
    """Make ``reference`` name ``record`` (a rollback: the failed image becomes the previous
    one, so the digest that runs stays where garbage collection keeps it)."""
    normalized = str(parse_reference(reference))
    store.put_image(dataclasses.replace(record, reference=normalized))


def remove_versions(store: Store, reference: str) -> None:
    """Forget every stored version of ``reference`` (the tag's, its previous one, those pulled
    by digest) and delete the content no other image uses: room for the next one on a small
    disk (``replace-then-download``). Call it with no container running them."""
    prefix = by_digest_reference(reference, "sha256:" + "0" * 64).rsplit("@", 1)[0] + "@"
    store.remove(reference)
    for key in [key for key in store.images() if key.startswith(prefix)]:
        store.remove(key)
    store.prune()
