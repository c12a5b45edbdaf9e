"""Errors of the image layer. Each message says what went wrong and what the user can do."""

from __future__ import annotations


class ImageError(Exception):
    """Base of every error raised by ``quayd.images``."""


class RegistryError(ImageError):
    """The registry could not be reached, refused us, or answered nonsense."""


class AuthError(RegistryError):
    """Credentials were missing or refused (HTTP 401/403)."""


class NotFoundError(RegistryError):
    """The repository, tag, manifest or blob does not exist (HTTP 404)."""


class ManifestError(ImageError):
    """A manifest or index is malformed, of an unsupported kind, or inconsistent."""


class PlatformError(ManifestError):
    """An index has no manifest for the platform asked for."""


class VerificationError(ImageError):
    """Content did not match its digest or size; it was discarded."""


class UnpackError(ImageError):
    """A layer could not be applied; nothing of it is used."""


class HostileLayerError(UnpackError):
    """A layer tried something no honest layer does (escaping its directory, a bomb, ...)."""


class StoreError(ImageError):
    """The local content store is damaged or cannot be written."""


class DiskSpaceError(StoreError):
    """Pulling would take the disk below the configured free-space floor."""
