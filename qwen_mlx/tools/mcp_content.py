"""What an MCP call gives back, as the model reads it: text only, so every other block
(images, audio, resources, links) is described, and a server's isError is said."""

from __future__ import annotations

import json

from .toolbox import ToolResult


def result_of(result) -> ToolResult:
    """A call's result as the model reads it. A server's ``isError`` is said in the text too
    (the model reads only text): "error: " before it, unless the text already says so."""
    text = text_of(result)
    if not result.is_error:
        return ToolResult(text)
    if not text.lower().startswith("error"):
        text = f"error: {text}" if text else "error: the tool failed and said nothing more"
    return ToolResult(text, True)


def text_of(result) -> str:
    """A call's result as text: its text blocks; every other block described (what it is,
    its type, its URI and size: the model reads only text, and an empty "[resource ]"
    told it nothing); the structured result as JSON when there is no text."""
    parts = [block_text(block) for block in result.content or []]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def block_text(block) -> str:
    """One content block (of a result, a prompt's message, a sampling request) as text: a
    text block's text, an embedded text resource's, any other block described."""
    kind = getattr(block, "type", "")
    if kind == "text":
        return block.text
    if kind == "resource" and isinstance(getattr(block.resource, "text", None), str):
        return block.resource.text
    return described(block)


def described(block, kind: str | None = None) -> str:
    """A block that is not text, in words: "[image: image/png, 1,234 bytes]",
    "[resource link: Resource 1 (demo://r/1, text/plain)]", "[resource: demo://b/1,
    application/octet-stream, 512 bytes]". ``kind``: for contents that carry no type (a
    read resource's)."""
    kind = kind or getattr(block, "type", "") or "content"
    item = getattr(block, "resource", None) or block
    uri, mime = getattr(item, "uri", None), getattr(item, "mime_type", None)
    data = getattr(item, "blob", None) or getattr(item, "data", None)
    size = f"{len(data) * 3 // 4:,} bytes" if isinstance(data, str) else None  # base64
    if kind == "resource_link":
        name = getattr(block, "name", None) or getattr(block, "title", None)
        where = ", ".join(str(x) for x in (uri, mime) if x)
        return f"[resource link: {name} ({where})]" if name else f"[resource link: {where}]"
    what = {"image": "image", "audio": "audio", "resource": "resource"}.get(kind, kind)
    return f"[{what}: {', '.join(str(x) for x in (uri, mime, size) if x) or 'no details'}]"
