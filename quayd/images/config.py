"""Image config blobs (OCI image config, Docker's with its Healthcheck extension) → ImageConfig.

Pure and defensive: an image is untrusted input. Fields quay does not use are ignored; fields it
uses must have the right shape or the image is refused with a message that names the field.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from quayd.images.errors import ManifestError
from quayd.images.model import Healthcheck, ImageConfig, check_digest

MAX_CONFIG_SIZE = 8 * 1024 * 1024


def parse_config(raw: bytes) -> ImageConfig:
    if len(raw) > MAX_CONFIG_SIZE:
        raise ManifestError(f"image config is {len(raw)} bytes, over the {MAX_CONFIG_SIZE} cap")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ManifestError(f"image config is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ManifestError("image config is not a JSON object")
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise ManifestError("image config field 'config' is not an object")
    rootfs = document.get("rootfs") or {}
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ManifestError("image config rootfs.type must be 'layers'")
    diff_ids = tuple(check_digest(d) for d in _strings(rootfs, "diff_ids", "rootfs.diff_ids"))
    return ImageConfig(
        entrypoint=_strings(config, "Entrypoint", "config.Entrypoint"),
        cmd=_strings(config, "Cmd", "config.Cmd"),
        env=_strings(config, "Env", "config.Env"),
        working_dir=_string(config, "WorkingDir"),
        user=_string(config, "User"),
        exposed_ports=tuple(sorted(_keys(config, "ExposedPorts"))),
        stop_signal=_string(config, "StopSignal") or None,
        labels=_labels(config),
        volumes=tuple(sorted(_keys(config, "Volumes"))),
        healthcheck=_healthcheck(config.get("Healthcheck")),
        diff_ids=diff_ids,
        os=_string(document, "os") or "linux",
        architecture=_string(document, "architecture"),
        variant=_string(document, "variant") or None,
    )


def _strings(container: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = container.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"image config {where} must be a list of strings")
    return tuple(value)


def _string(container: dict[str, Any], key: str) -> str:
    value = container.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ManifestError(f"image config field {key!r} must be a string")
    return value


def _keys(container: dict[str, Any], key: str) -> list[str]:
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ManifestError(f"image config config.{key} must be an object")
    return [str(k) for k in value]


def _labels(config: dict[str, Any]) -> dict[str, str]:
    labels = config.get("Labels")
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ManifestError("image config config.Labels must map strings to strings")
    return {str(k): v for k, v in labels.items()}


def _healthcheck(value: Any) -> Healthcheck | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError("image config config.Healthcheck must be an object")
    test = _strings(value, "Test", "config.Healthcheck.Test")
    if not test:
        return None  # inherit from the base image: nothing to inherit from here
    if test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise ManifestError(f"image config Healthcheck.Test starts with unknown {test[0]!r}")
    return Healthcheck(
        test=test,
        interval=_nanoseconds(value, "Interval"),
        timeout=_nanoseconds(value, "Timeout"),
        start_period=_nanoseconds(value, "StartPeriod"),
        retries=_count(value, "Retries"),
    )


def _nanoseconds(value: dict[str, Any], key: str) -> timedelta | None:
    ns = value.get(key)
    if ns is None or ns == 0:
        return None  # 0 means "the default" in Docker's format
    if not isinstance(ns, int) or isinstance(ns, bool) or not 0 < ns < 10**9 * 86400 * 365:
        raise ManifestError(f"image config Healthcheck.{key} is not a sane duration in ns")
    return timedelta(microseconds=ns // 1000)


def _count(value: dict[str, Any], key: str) -> int | None:
    count = value.get(key)
    if count is None or count == 0:
        return None
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 10_000:
        raise ManifestError(f"image config Healthcheck.{key} is not a sane count")
    return count
