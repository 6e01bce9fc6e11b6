"""A one-pass reader for short codes that knows its column, so errors can point at it."""

from __future__ import annotations

from spnas.exceptions import ArchError


class Scanner:
    """Reads ``text`` left to right; errors name the 1-based column.

    Args:
        text: the code being read.
        what: what the text is, for messages (``"serial code"``, ``"op"``, …).
        end: the word in "unexpected end of …" (``"code"`` by default).
    """

    def __init__(self, text: str, what: str, end: str = "code") -> None:
        self.text = text
        self.what = what
        self.end = end
        self.pos = 0

    def error(self, message: str) -> ArchError:
        return ArchError(f"invalid {self.what} {self.text!r}: column {self.pos + 1}: {message}")

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def unexpected(self, expected: str) -> ArchError:
        char = self.peek()
        found = f"unexpected {char!r}" if char else f"unexpected end of {self.end}"
        return self.error(f"{found}, expected {expected}")
