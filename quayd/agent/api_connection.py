"""One client connection of the API (h11's state machine over asyncio streams), the
parameters of a request read from its path, query and body, and the JSON of a whole answer."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import h11

from quayd.agent.api_peers import Peer, peer_of
from quayd.agent.api_routes import HTTP_STATUS

MAX_BODY = 1024 * 1024
"""The largest request body; a larger one (announced or counted as it arrives) is answered 413."""
BODY_TIMEOUT = 10.0
"""Seconds a client has to send its body once the headers are in; then 408."""
LINGERING_TIME = 2.0
"""Seconds the server goes on reading (and dropping) an unread request body before hanging up."""
READ_SIZE = 64 * 1024
JSON_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    """A whole answer: JSON with a length (streams are written as they go instead)."""

    status: int
    body: bytes
    close: bool = False
    headers: tuple[tuple[str, str], ...] = ()


class RequestFailedError(Exception):
    """Raised while reading a request: answered with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ClientGoneError(Exception):
    pass


END: Any = object()


class Connection:
    """One client's connection: h11's state machine, fed from and writing to asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.SERVER)
        self.busy = False  # between a request's head and the end of its answer
        self.head = False  # the request is HEAD: its answer has no body
        self._peer: Peer | None = None
        self._peer_known = False

    def peer(self) -> Peer | None:
        """The client's credentials (fixed when it connected, so read once)."""
        if not self._peer_known:
            self._peer = peer_of(self.writer.get_extra_info("socket"))
            self._peer_known = True
        return self._peer

    async def next_event(self) -> Any:
        """h11's next event, reading as much as it needs (EOF is fed to it as ``b""``)."""
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.http.receive_data(await self.reader.read(READ_SIZE))

    async def send(self, *events: Any) -> None:
        for event in events:
            data = self.http.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def read_body(self) -> bytes:
        """The request's whole body; :class:`RequestFailedError` once it passes MAX_BODY."""
        if self.http.they_are_waiting_for_100_continue:
            await self.send(
                h11.InformationalResponse(status_code=100, headers=[], reason="Continue")
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            if not isinstance(event, h11.Data):  # h11 raises on an early EOF; this is a guard
                raise ConnectionResetError("the client went away while sending its body")
            size += len(event.data)
            if size > MAX_BODY:
                raise RequestFailedError("too-large", f"a request body is at most {MAX_BODY} bytes")
            chunks.append(event.data)

    async def reply(self, reply: Reply) -> None:
        headers = [
            ("Content-Type", JSON_TYPE),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
        ]
        if reply.close:
            headers.append(("Connection", "close"))
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=HTTPStatus(reply.status).phrase
        )
        await self.send(
            response, h11.Data(data=b"" if self.head else reply.body), h11.EndOfMessage()
        )

    def gone(self) -> bool:
        """The client hung up (or its connection broke)."""
        return self.writer.is_closing() or self.reader.at_eof()

    async def linger(self) -> bool:
        """Read and drop what is left of the request's body; False if it does not end in time."""
        try:
            async with asyncio.timeout(LINGERING_TIME):
                while self.sending_body():
                    if not isinstance(await self.next_event(), h11.Data | h11.EndOfMessage):
                        return False
        except TimeoutError:
            return False
        return True

    def sending_body(self) -> bool:
        return self.http.their_state is h11.SEND_BODY


async def read_params(
    conn: Connection, request: h11.Request, found: dict[str, str], query: str
) -> dict[str, Any]:
    """Path parameters, then query parameters, then the body object's members (the body wins)."""
    params: dict[str, Any] = dict(found)
    params.update(parse_query(query))
    length = content_length(request)
    if length is not None and length > MAX_BODY:
        raise RequestFailedError("too-large", f"a request body is at most {MAX_BODY} bytes")
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await conn.read_body()
    except TimeoutError:
        raise RequestFailedError(
            "timeout", f"the body did not arrive within {BODY_TIMEOUT:g}s"
        ) from None
    if not raw.strip():
        return params
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise RequestFailedError("bad-request", f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestFailedError("bad-request", "the body must be a JSON object")
    for key in sorted(found.keys() & body.keys()):
        raise RequestFailedError(
            "bad-request", f"{key!r} is in the path; the body may not repeat it"
        )
    params.update(body)
    return params


def content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 checked that it is a number
    return None


def parse_query(text: str) -> dict[str, Any]:
    """The query parameters: ``follow`` as a boolean, ``since`` as a number, others as text."""
    query: dict[str, Any] = dict(parse_qsl(text, keep_blank_values=True))
    if "follow" in query:
        value = query["follow"].lower()
        if value not in ("true", "false", "1", "0", "yes", "no", ""):
            raise RequestFailedError("bad-request", f"follow={query['follow']}: true or false")
        query["follow"] = value in ("true", "1", "yes", "")
    if "since" in query:
        try:
            query["since"] = int(query["since"])
        except ValueError:
            raise RequestFailedError(
                "bad-request", f"since={query['since']}: a sequence number"
            ) from None
    return query


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_reply(
    code: str, message: str, *, close: bool = False, headers: tuple[tuple[str, str], ...] = ()
) -> Reply:
    return Reply(
        HTTP_STATUS.get(code, 400),
        encode(error_body(code, message)),
        close=close,
        headers=headers,
    )


def encode(value: Any) -> bytes:
    """Compact JSON on one line (``json.dumps`` escapes newlines inside strings)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
