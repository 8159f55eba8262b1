"""Text from stdin, decoded here, at the edge: bytes that are not UTF-8 are a one-line error
naming the first bad byte and where it is, never a string the tokenizer then fails on (as
Python's own reading with surrogate escapes gave it)."""

from __future__ import annotations

import sys
from typing import Iterator

from ..errors import QwenMlxError


def utf8(data: bytes, offset: int = 0) -> str:
    """``data`` as text; ``offset`` is where it starts in stdin (for the message)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QwenMlxError(f"stdin is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                           f"{offset + e.start:,})") from None


def read_text() -> str:
    """All of stdin, as text."""
    return utf8(sys.stdin.buffer.read())


def lines() -> Iterator[str | QwenMlxError]:
    """stdin line by line: each line's text, or the error that says why it is not text (a
    chat refuses that line and goes on)."""
    offset = 0
    for raw in sys.stdin.buffer:
        try:
            yield utf8(raw, offset)
        except QwenMlxError as e:
            yield e
        offset += len(raw)
