"""Where each key of a TOML document stands: ``("resources", "memory") -> line 7``.

``tomllib`` gives values but no positions, and an error a person can act on names the line. This
scanner runs only on documents ``tomllib`` has already accepted, so it can be small: it tracks
table headers (arrays of tables get their index), dotted keys, inline tables and array elements,
and skips every value it does not need to look into. Paths use ``str`` for keys and ``int`` for
array indexes, exactly as pydantic reports error locations.
"""

from __future__ import annotations

import contextlib

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path in ``text`` to the 1-based line where it is written.

    Never raises: on a document it cannot follow it returns what it found so far.
    """
    scanner = _Scanner(text)
    with contextlib.suppress(IndexError, ValueError, OverflowError, RecursionError):
        scanner.document()
    return scanner.lines


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self._table_arrays: dict[KeyPath, int] = {}

    # --- characters ---

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def advance(self, count: int = 1) -> None:
        for _ in range(count):
            if self.pos >= len(self.text):
                raise IndexError("end of document")
            if self.text[self.pos] == "\n":
                self.line += 1
            self.pos += 1

    def skip_blank(self, *, newlines: bool) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.advance()
            elif char == "#":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.advance()
            else:
                return

    def record(self, path: KeyPath) -> None:
        self.lines.setdefault(path, self.line)

    # --- structure ---

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table)

    def header(self) -> KeyPath:
        is_array = self.peek(1) == "["
        self.advance(2 if is_array else 1)
        keys = self.key()
        self.skip_blank(newlines=False)
        self.advance(2 if is_array else 1)
        return self.resolve(keys, is_array=is_array)

    def resolve(self, keys: list[str], *, is_array: bool) -> KeyPath:
        """Turn header keys into a path, adding the current index of each array of tables."""
        path: KeyPath = ()
        for number, key in enumerate(keys):
            path = (*path, key)
            last = number == len(keys) - 1
            if last and is_array:
                self.record(path)
                index = self._table_arrays.get(path, -1) + 1
                self._table_arrays[path] = index
                path = (*path, index)
            elif path in self._table_arrays:
                path = (*path, self._table_arrays[path])
            self.record(path)
        return path

    def key_value(self, table: KeyPath) -> None:
        keys = self.key()
        path = table
        for key in keys:
            path = (*path, key)
            self.record(path)
        self.skip_blank(newlines=False)
        self.advance()  # "="
        self.skip_blank(newlines=False)
        self.value(path)

    def key(self) -> list[str]:
        keys = []
        while True:
            self.skip_blank(newlines=False)
            keys.append(self.simple_key())
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return keys
            self.advance()

    def simple_key(self) -> str:
        char = self.peek()
        if char in "\"'":
            return self.string()
        start = self.pos
        while self.peek() in _BARE_KEY_CHARS and self.peek():
            self.advance()
        if self.pos == start:
            raise ValueError(f"no key at line {self.line}")
        return self.text[start : self.pos]

    # --- values ---

    def value(self, path: KeyPath) -> None:
        char = self.peek()
        if char == "{":
            self.inline_table(path)
        elif char == "[":
            self.array(path)
        elif char in "\"'":
            self.string()
        else:
            while self.peek() and self.peek() not in ",]}\n#":
                self.advance()

    def inline_table(self, path: KeyPath) -> None:
        self.advance()  # "{"
        while True:
            self.skip_blank(newlines=False)
            if self.peek() == "}":
                self.advance()
                return
            if self.peek() == ",":
                self.advance()
                continue
            self.key_value(path)

    def array(self, path: KeyPath) -> None:
        self.advance()  # "["
        index = 0
        while True:
            self.skip_blank(newlines=True)
            char = self.peek()
            if char == "]":
                self.advance()
                return
            if char == ",":
                self.advance()
                continue
            if not char:
                raise IndexError("unterminated array")
            element = (*path, index)
            self.record(element)
            start = self.pos
            self.value(element)
            if self.pos == start:  # e.g. "[}": no value here, and looping would never end
                raise ValueError(f"no array element at line {self.line}")
            index += 1

    def string(self) -> str:
        quote = self.peek()
        if self.peek(1) == quote and self.peek(2) == quote:
            return self.multiline_string(quote)
        self.advance()
        chars: list[str] = []
        while self.peek() != quote:
            if not self.peek() or self.peek() == "\n":
                raise ValueError("unterminated string")
            if quote == '"' and self.peek() == "\\":
                chars.append(self.escape())
            else:
                chars.append(self.peek())
                self.advance()
        self.advance()
        return "".join(chars)

    def escape(self) -> str:
        self.advance()  # backslash
        char = self.peek()
        if char in ("u", "U"):
            width = 4 if char == "u" else 8
            digits = self.text[self.pos + 1 : self.pos + 1 + width]
            self.advance(1 + width)
            return chr(int(digits, 16))
        self.advance()
        return _ESCAPES.get(char, char)

    def multiline_string(self, quote: str) -> str:
        # Keys are never multi-line strings, so the content is skipped, not decoded.
        self.advance(3)
        while not (self.peek() == quote and self.peek(1) == quote and self.peek(2) == quote):
            if not self.peek():
                raise IndexError("unterminated string")
            self.advance(2 if quote == '"' and self.peek() == "\\" else 1)
        self.advance(3)
        while self.peek() == quote:  # up to two quotes may end the content
            self.advance()
        return ""
