"""Documents in prompts: `generate --file` and chat's `/file`. A long context is mostly
used to ask about a file, so reading one is checked here once, with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ContextExceeded, QwenMlxError

MAX_BYTES = 64 << 20  # far beyond 1M tokens of text; anything larger is not a document


def read_document(path: str | Path) -> str:
    """The text of a UTF-8 file; a missing, unreadable or binary file is refused."""
    path = Path(path).expanduser()
    if not path.exists():
        raise QwenMlxError(f"no such file: {path}")
    if not path.is_file():
        raise QwenMlxError(f"{path} is not a file")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise QwenMlxError(f"{path} is {size / 2**20:.0f} MiB; documents are limited to "
                               f"{MAX_BYTES >> 20} MiB of text")
        data = path.read_bytes()
    except OSError as e:
        raise QwenMlxError(f"cannot read {path}: {e.strerror or e}") from None
    if b"\0" in data:
        raise QwenMlxError(f"{path} is a binary file, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QwenMlxError(f"{path} is not UTF-8 text (byte {e.start} is not)") from None
    if not text.strip():
        raise QwenMlxError(f"{path} is empty")
    return text


def with_document(path: str | Path, request: str | None) -> str:
    """A user message: the document under its file name, then the request (if any)."""
    text = read_document(path)
    message = f"{Path(path).name}:\n\n{text.rstrip()}"
    return f"{message}\n\n{request.strip()}" if request and request.strip() else message


# After a newline, before a character that is not white space: Qwen's byte-level
# pre-tokenizer always splits there, so the pieces of a text cut at these points tokenize to
# exactly the tokens of the whole (no token spans two pieces).
_CUT = re.compile(r"\n(?=\S)")
PIECE_CHARS = 256 << 10  # characters tokenized at a time


def refuse_oversized(tokenizer, texts: list[str], limit: int, longest_token: int) -> None:
    """Refuse texts that cannot fit in ``limit`` tokens before tokenizing all of them (a
    50 MB file took 72 s and 6.5 GB to be told it was too long): first by their size in
    bytes (no token is longer than ``longest_token`` bytes), then by counting tokens piece
    by piece, stopping once the count passes the limit."""
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    at_least = -(-size // longest_token)
    if at_least >= limit:
        raise ContextExceeded(f"the prompt is {size:,} bytes: at least {at_least:,} tokens "
                              f"(no token is longer than {longest_token} bytes); the context "
                              f"is {limit:,}")
    if size <= limit:  # at most one token per byte... and then the full count is cheap
        return
    counted = 0
    for text in texts:
        start = 0
        while start < len(text):
            end = start + PIECE_CHARS
            cut = _CUT.search(text, end) if end < len(text) else None
            stop = cut.end() if cut else len(text)
            counted += len(tokenizer.encode(text[start:stop], add_special_tokens=False))
            if counted >= limit:
                raise ContextExceeded(f"the prompt is over {counted:,} tokens (counted "
                                      f"{stop:,} of its {len(text):,} characters); the "
                                      f"context is {limit:,}")
            start = stop


def longest_token_bytes(tokenizer) -> int:
    """The most bytes one token of this byte-level BPE vocabulary stands for: each
    character of a token's name is one byte (GPT-2's byte table; special tokens are
    ASCII)."""
    return max(map(len, tokenizer.get_vocab()))
