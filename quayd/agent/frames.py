"""The frames of an attached ad-hoc unit without a terminal (``RUN_DIR/attach.sock``).

Docker's multiplexed stream, so its stdout and stderr stay apart on one connection: each frame
is an 8-byte header, the stream (1 stdout, 2 stderr) then three zero bytes then the payload's
length (big-endian, 32 bits), then the payload. quay adds stream 3, the last frame: the
container's exit as a JSON object (``code``, ``signal``, ``oom``, ``description``).

Standard library only: quayctl decodes them too.
"""

from __future__ import annotations

import json
import struct
from typing import Any

STDOUT = 1
STDERR = 2
EXIT = 3
HEADER = struct.Struct(">B3xI")
MAX_PAYLOAD = 1 << 20
"""The longest payload a reader accepts (the agent sends at most 64 KiB at a time)."""


class FrameError(Exception):
    """The bytes are not frames (a peer speaking another protocol, or a corrupt stream)."""


def encode(stream: int, payload: bytes) -> bytes:
    return HEADER.pack(stream, len(payload)) + payload


def encode_exit(ended: dict[str, Any]) -> bytes:
    return encode(EXIT, json.dumps(ended, separators=(",", ":")).encode())


class FrameReader:
    """Frames out of a byte stream read in pieces of any size."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames completed by ``data``, in order; a partial one waits for more bytes."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            stream, length = HEADER.unpack_from(self._buffer)
            if stream not in (STDOUT, STDERR, EXIT) or length > MAX_PAYLOAD:
                raise FrameError(f"not a frame: stream {stream}, length {length}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((stream, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet (a stream cut there was cut mid-frame)."""
        return len(self._buffer)


def decode_exit(payload: bytes) -> dict[str, Any]:
    try:
        ended = json.loads(payload)
    except ValueError as error:
        raise FrameError(f"the exit frame is not JSON: {error}") from None
    if not isinstance(ended, dict):
        raise FrameError("the exit frame is not an object")
    return ended


class LineSplitter:
    """One stream's output cut at line ends, so a log interleaving stdout and stderr never
    splits a line between them; a line longer than ``limit`` goes out in pieces."""

    def __init__(self, limit: int = 16384) -> None:
        self._partial = b""
        self._limit = limit

    def feed(self, data: bytes) -> bytes:
        """The complete lines now ready (with their newlines), possibly empty."""
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < self._limit:
            self._partial = data
            return b""
        if cut == 0:
            cut = len(data)
        self._partial = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        """What is left (the stream ended without a newline)."""
        rest, self._partial = self._partial, b""
        return rest
