"""Errors of the networking layer. Each message says what went wrong and what the user can do."""

from __future__ import annotations


class NetworkError(Exception):
    """Base of every error raised by ``quayd.net``."""


class AddressPoolExhaustedError(NetworkError):
    """The subnet has no free address left for a unit (that unit alone cannot start)."""


class LeaseFileError(NetworkError):
    """The lease file cannot be read or written; the message names it."""


class RulesetError(NetworkError):
    """nftables refused quay's ruleset, or ``nft`` is missing."""


class LinkError(NetworkError):
    """A link, address, route or network namespace cannot be set up or removed."""
