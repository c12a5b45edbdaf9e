"""The API's routes (pure): which handler answers a method and a path, which handlers stream
or change nothing, and the HTTP status of each error code. docs/api.md lists the same."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote, urlsplit


class Route(NamedTuple):
    method: str
    path: str
    handler: str


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/ping", "ping"),
    Route("GET", "/v1/status", "status"),
    Route("GET", "/v1/units/{name}", "show"),
    Route("GET", "/v1/plan", "plan"),
    Route("POST", "/v1/plan", "plan_dir"),
    Route("GET", "/v1/events", "events"),
    Route("POST", "/v1/units/{name}/start", "start"),
    Route("POST", "/v1/units/{name}/stop", "stop"),
    Route("POST", "/v1/units/{name}/restart", "restart"),
    Route("POST", "/v1/units/{name}/exec", "exec"),
    Route("POST", "/v1/units/{name}/remove", "remove"),
    Route("POST", "/v1/units/{name}/kill", "kill"),
    Route("POST", "/v1/run", "run"),
    Route("POST", "/v1/reload", "reload"),
    Route("POST", "/v1/images/pull", "image_pull"),
    Route("POST", "/v1/update", "update"),
)
"""Every route and the name of the handler that answers it (a missing handler answers 501)."""

STREAMING = frozenset({"events", "image_pull"})
"""Handlers that return an async iterator of JSON objects, streamed as NDJSON."""

READ_ONLY = frozenset({"ping", "status", "show", "plan", "events"})
"""The handlers that change nothing (the default of ``read_only``)."""

HTTP_STATUS = {
    "bad-request": 400,
    "forbidden": 403,
    "not-found": 404,
    "method-not-allowed": 405,
    "timeout": 408,
    "conflict": 409,
    "too-large": 413,
    "failed": 500,
    "not-implemented": 501,
}
"""The HTTP status of each error code; a :class:`RequestError` with another code gets 400."""


class RouteMiss(NamedTuple):
    """No route answers: ``allowed`` empty for a 404, else the methods a 405 names."""

    allowed: tuple[str, ...]


def find_route(method: str, raw_path: str) -> tuple[Route, dict[str, str]] | RouteMiss:
    """The route for ``method`` and the path's parameters, or what the miss was."""
    segments = [unquote(segment) for segment in raw_path.split("/")]
    allowed: list[str] = []
    for route, pattern in _PATTERNS:
        params = _match(pattern, segments)
        if params is None:
            continue
        if route.method == method:
            return route, params
        allowed.append(route.method)
    return RouteMiss(tuple(sorted(set(allowed))))


def split_target(target: str) -> tuple[str, str]:
    """The raw path and the query of a request target (origin-form, or absolute-form)."""
    if not target.startswith("/") and "://" in target:
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path, query


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    """The parameters if ``segments`` fit ``pattern`` (a ``{name}`` takes one non-empty one)."""
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


_PATTERNS = tuple((route, tuple(route.path.split("/"))) for route in ROUTES)
