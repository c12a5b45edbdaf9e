"""Errors of the isolation layer. Each message says what went wrong and what the user can do."""

from __future__ import annotations


class IsolationError(Exception):
    """Base of every error raised by ``quayd.isolation``."""


class SpecError(IsolationError):
    """The unit and the image's config cannot make a runtime spec (nothing to run, a bad mount)."""


class UserLookupError(IsolationError):
    """The user or group to run as cannot be resolved in the image."""


class EnvFileError(IsolationError):
    """An env file cannot be read or has a line that is not ``NAME=value``."""


class SeccompProfileError(IsolationError):
    """A seccomp profile is malformed; quay refuses it rather than run without a filter."""


class DeviceError(IsolationError):
    """A device named in ``[resources]`` (an I/O limit) cannot be limited on this host."""
