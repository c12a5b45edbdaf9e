"""Manifests as YAML text: documents separated by ``---``, notes as trailing comments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """No anchors and aliases: a manifest repeats a value rather than point at it."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002 (the overridden signature)
        return True


class ManifestSyntaxError(ValueError):
    """The text is not YAML, or a document is not a mapping."""


def dump_documents(documents: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> str:
    text = yaml.dump_all(
        documents,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        explicit_start=True,
        width=100,
    )
    return text + "".join(f"# {line}\n" for note in notes for line in note.splitlines())


def load_documents(text: str, origin: str) -> list[dict[str, Any]]:
    """Every non-empty document of ``text``; ``origin`` (a file name) is for the messages."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise ManifestSyntaxError(f"{origin}: not YAML: {error}") from None
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise ManifestSyntaxError(
                f"{origin}: document {index + 1} is not a mapping (a Kubernetes object)"
            )
    return documents
