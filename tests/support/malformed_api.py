"""Malformed API requests, and their sending from inside a host over the agent's socket.

Kept apart from the test module because inside_send_all runs in the host (a namespace host or
the VM guest), whose Python has quayd but not pytest.
"""

from __future__ import annotations

import json
import random
import re
import socket
from collections.abc import Iterator
from typing import Any

from quayd.agent.api import ROUTES
from quayd.agent.request_schema import PARAMS, Kind

# A value of every kind but the one a parameter takes (None is left out: null means "absent").
SAMPLES: dict[str, Any] = {
    "number": 7,
    "negative": -1,
    "fraction": 1.5,
    "flag": True,
    "text": "x",
    "nul": "/srv/a\0b",  # absolute, so a path check does not refuse it first
    "empty list": [],
    "numbers": [1, 2],
    "object": {"a": 1},
    "nul list": ["a\0"],
    "nul map": {"A": "\0"},
}
REFUSED_BY_KIND = {
    Kind.TEXT: {"number", "negative", "fraction", "flag", "empty list", "numbers", "object"},
    Kind.FLAG: set(SAMPLES) - {"flag"},
    Kind.COUNT: {"negative", "fraction", "flag", "text", "nul", "empty list", "object"},
    Kind.SECONDS: {"negative", "flag", "text", "nul", "empty list", "numbers", "object"},
    Kind.TEXTS: {"number", "flag", "text", "nul", "numbers", "object", "nul list"},
    Kind.TEXT_MAP: {"number", "flag", "text", "empty list", "numbers", "nul map"},
    Kind.PAIR: {"number", "flag", "text", "nul", "empty list", "object", "nul list"},
}
# Bodies that are not a JSON object, or not JSON at all.
NOT_OBJECTS = [
    b"{",
    b"[]",
    b"[1, 2]",
    b"null",
    b"1",
    b'"text"',
    b"\xff\xfe",
    b"\x00",
    b"[" * 50_000,
    b'{"a": ' + b"9" * 5000 + b"}",  # past Python's int digit limit
    b'{"a": NaN',
]
# Values each handler refuses itself, past the parameter check (good kinds, bad values).
HANDLER_REFUSALS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/plan", {"config_dir": "relative/dir"}),
    ("POST", "/v1/plan", {"config_dir": "/nonexistent/dir"}),
    ("POST", "/v1/plan", {}),
    ("POST", "/v1/units/web/exec", {}),
    ("POST", "/v1/units/web/exec", {"argv": []}),
    ("POST", "/v1/units/web/kill", {"signal": "SIGNOPE"}),
    ("POST", "/v1/units/web/kill", {"signal": ""}),
    ("POST", "/v1/units/web/remove", {}),  # from a unit file: a conflict
    ("POST", "/v1/run", {}),
    ("POST", "/v1/run", {"image": ""}),
    ("POST", "/v1/run", {"image": "localhost/busybox:1.36", "name": "../x"}),
    ("POST", "/v1/run", {"image": "localhost/busybox:1.36", "name": "web"}),
    ("POST", "/v1/run", {"image": "localhost/busybox:1.36", "volumes": ["nocolon"]}),
    ("POST", "/v1/run", {"image": "localhost/busybox:1.36", "ports": ["notaport"]}),
    ("POST", "/v1/run", {"image": "localhost/busybox:1.36", "memory": "lots"}),
    ("POST", "/v1/run", {"image": "localhost/busybox:1.36", "network": "wormhole"}),
    ("POST", "/v1/run", {"image": "localhost/busybox:1.36", "console_size": [0, 80]}),
    ("POST", "/v1/run", {"image": "Not A Reference!"}),
    ("POST", "/v1/images/pull", {}),
    ("POST", "/v1/images/pull", {"reference": "Not A Reference!"}),
    ("POST", "/v1/images/pull", {"reference": "busybox", "platform": "nope/"}),
    ("POST", "/v1/images/pull", {"reference": "busybox", "state_dir": "/elsewhere"}),
]
# Requests wrong before any handler: routes, methods, queries, raw HTTP.
RAW = [
    b"GET /v1/status HTTP/1.1\r\n\r\n",  # no Host
    b"BLAH\r\n\r\n",
    b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n{}",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
]
TARGETS = [
    ("GET", "/"),
    ("GET", "/v2/status"),
    ("GET", "/v1/units"),
    ("GET", "/v1/units/"),
    ("GET", "/v1/units/nope"),
    ("GET", "/v1/units/%00"),
    ("GET", "/v1/units/web%00"),
    ("GET", "/v1/units/..%2F..%2Fetc"),
    ("GET", "/v1/units/" + "x" * 5000),
    ("GET", "/v1/events?since=-1"),
    ("GET", "/v1/events?since=abc"),
    ("GET", "/v1/events?follow=maybe"),
    ("GET", "/v1/events?%ff=1"),
    ("GET", "/v1/status?verbose=1"),
    ("DELETE", "/v1/units/web"),
    ("PUT", "/v1/reload"),
    ("GET", "/v1/reload"),
    ("POST", "/v1/status"),
    ("PATCH", "/v1/units/web/stop"),
    ("POST", "/v1/units/nope/stop"),
    ("POST", "/v1/units/nope/exec"),
    ("POST", "/v1/units/web/nope"),
    ("POST", "/v1/units/web/exec?timeout=5&argv=ls"),
]


# A good body per handler: each malformed body is one of these with one thing wrong, so the
# handler's own checks of the other parameters do not refuse it first.
BASES: dict[str, dict[str, Any]] = {
    "plan_dir": {"config_dir": "/etc"},
    "events": {"since": 0, "follow": False},
    "exec": {"argv": ["true"], "timeout": 5},
    "kill": {"signal": "SIGCONT"},
    "run": {"image": "localhost/busybox:1.36", "argv": ["true"], "attach": False},
    "image_pull": {"reference": "localhost/busybox:1.36"},
}


def concrete(path: str) -> str:
    return path.replace("{name}", "web")


def malformed() -> Iterator[bytes]:
    """Every malformed request, as the bytes sent."""
    for route in ROUTES:
        target = concrete(route.path)
        kinds = PARAMS[route.handler]
        for raw in NOT_OBJECTS:
            if route.method == "POST":
                yield http(route.method, target, raw)
        base = BASES.get(route.handler, {})
        yield http(route.method, target, json_bytes({**base, "no_such_key": 1}))
        yield http(route.method, target, json_bytes({**base, "timout": 5}))
        yield http(route.method, target, json_bytes({**base, "": "x", "\0": "y"}))
        if "{name}" in route.path:
            yield http(route.method, target, json_bytes({**base, "name": "db"}))
        for key, kind in kinds.items():
            if key == "name" and "{name}" in route.path:
                continue
            for sample in sorted(REFUSED_BY_KIND[kind]):
                yield http(route.method, target, json_bytes({**base, key: SAMPLES[sample]}))
    for method, refused_target, body in HANDLER_REFUSALS:
        yield http(method, refused_target, json_bytes(body))
    for method, target in TARGETS:
        yield http(method, target, None)
    yield from RAW


def http(method: str, target: str, body: bytes | None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: quayd\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"\r\n" + (body or b"")


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


MUTATED_HANDLERS = frozenset({"ping", "status", "show", "plan", "plan_dir"})
"""The handlers whose requests are mutated: ones that change nothing whatever their input
(a mutation can make a valid request), and none that streams (it could wait forever)."""


def mutated(count: int, seed: int) -> Iterator[bytes]:
    """``count`` requests made from the malformed ones of :data:`MUTATED_HANDLERS` by random
    byte edits (seeded: a failure can be replayed) after their request line, which is kept."""
    chooser = random.Random(seed)
    targets = {
        (route.method, concrete(route.path))
        for route in ROUTES
        if route.handler in MUTATED_HANDLERS
    }
    wanted = _encoded(targets)
    bases = [r for r in malformed() if tuple(r.split(b" ", 2)[:2]) in wanted]
    tokens = [
        *(b"\r\n", b":", b"{", b"}", b'"', b"\x00", b"\xff", b"[", b"99999999999999999999"),
        *(b"Content-Length: 9999", b"Transfer-Encoding: chunked", b"0\r\n\r\n"),
    ]
    for _ in range(count):
        request = bytearray(chooser.choice(bases))
        line_end = request.index(b"\r\n") + 2
        for _ in range(chooser.randint(1, 6)):
            at = chooser.randint(line_end, len(request))
            edit = chooser.random()
            if edit < 0.4:
                request[at:at] = chooser.choice(tokens)
            elif edit < 0.7:
                del request[at : at + chooser.randint(1, 16)]
            else:
                request[at : at + 1] = bytes([chooser.randrange(256)])
        yield bytes(request)


def _encoded(targets: set[tuple[str, str]]) -> set[tuple[bytes, bytes]]:
    return {(method.encode(), target.encode()) for method, target in targets}


def inside_send_mutated(socket_path: str, count: int, seed: int) -> list[tuple[int | None, str]]:
    """:func:`mutated` requests, each on its own connection (as :func:`inside_send_all`)."""
    return _send(socket_path, mutated(count, seed))


def inside_send_all(socket_path: str) -> list[tuple[int | None, str]]:
    """Each request on its own connection: (the answer's status or None, the request's start)."""
    return _send(socket_path, malformed())


def _send(socket_path: str, requests: Iterator[bytes]) -> list[tuple[int | None, str]]:
    answers: list[tuple[int | None, str]] = []
    for request in requests:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(20)
            connection.connect(socket_path)
            try:
                connection.sendall(request)
                # The whole request is sent: the end of the stream says an incomplete one
                # never will be (else the server rightly waits for the rest).
                connection.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped reading: its answer may still be there
            received = b""
            try:
                while chunk := connection.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass
            except TimeoutError:
                received = b"HTTP/1.1 999 no answer in 20 s"
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", received)
        answers.append((int(match[1]) if match else None, request[:120].decode("latin-1")))
    return answers
