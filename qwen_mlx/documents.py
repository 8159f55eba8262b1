"""Documents in prompts: `generate --file` and chat's `/file`. A long context is mostly
used to ask about a file, so reading one is checked here once, with one-line errors."""

from __future__ import annotations

from pathlib import Path

from .errors import QwenMlxError

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
