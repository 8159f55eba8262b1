"""Anthropic's ``system`` and content blocks as chat messages: ``text`` blocks joined,
``tool_use`` blocks the assistant's tool calls, ``tool_result`` blocks tool messages (before
the user's text of the same turn), earlier ``thinking`` blocks dropped as the template drops
earlier reasoning; ``image``, ``document`` and any other block refused by name (the model
reads text). ``cache_control`` is accepted on any block."""

from __future__ import annotations

from .server import RequestError, flag

BLOCK_FIELDS = {"text": {"type", "text", "cache_control", "citations"},
                "tool_use": {"type", "id", "name", "input", "cache_control"},
                "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
                "thinking": {"type", "thinking", "signature"},
                "redacted_thinking": {"type", "data"}}


def text_of(value, where: str) -> str:
    """A string, or a list of text blocks joined (system, a tool result's content)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, block in enumerate(value):
            if not isinstance(block, dict) or block.get("type") != "text" or \
                    not isinstance(block.get("text"), str):
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise RequestError(400, f"{where}[{j}]: only text blocks are supported, not "
                                        f"{kind!r} (the model reads text)", param=where)
            known(block, BLOCK_FIELDS["text"], f"{where}[{j}]")
            texts.append(block["text"])
        return "\n".join(texts)
    raise RequestError(400, f"'{where}' must be a string or a list of text blocks", param=where)


def known(block: dict, fields: set[str], where: str) -> None:
    """Nothing silently ignored: a field of ``block`` outside ``fields`` is a 400 naming it."""
    unknown = sorted(set(block) - fields)
    if unknown:
        raise RequestError(400, f"'{where}.{unknown[0]}' is not supported by qwen-mlx",
                           param=where)


def chat_messages(body: dict) -> list[dict]:
    """Anthropic's ``system`` and ``messages`` as chat messages."""
    out = []
    if body.get("system") is not None:
        system = text_of(body["system"], "system")
        if system:
            out.append({"role": "system", "content": system})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise RequestError(400, f"{where} needs a role of user or assistant",
                               param="messages")
        known(m, {"role", "content"}, where)
        role, content = m["role"], m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(400, f"{where}.content must be a string or a list of blocks",
                               param="messages")
        texts, calls, results = [], [], []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in BLOCK_FIELDS:
                name = kind if isinstance(kind, str) else type(block).__name__
                raise RequestError(400, f"{at}: {name!r} blocks are not supported (the model "
                                        f"reads text: text, tool_use, tool_result)",
                                   param="messages")
            known(block, BLOCK_FIELDS[kind], at)
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise RequestError(400, f"{at}.text must be a string", param="messages")
                texts.append(block["text"])
            elif kind == "tool_use":
                if role != "assistant" or not isinstance(block.get("name"), str) or \
                        not isinstance(block.get("input"), dict):
                    raise RequestError(400, f"{at}: a tool_use block is the assistant's, with "
                                            f"a name and an input object", param="messages")
                calls.append({"function": {"name": block["name"], "arguments": block["input"]}})
            elif kind == "tool_result":
                if role != "user" or not isinstance(block.get("tool_use_id"), str):
                    raise RequestError(400, f"{at}: a tool_result block is the user's, with a "
                                            f"tool_use_id", param="messages")
                text = text_of(block.get("content") or "", f"{at}.content")
                if flag(block, "is_error"):
                    text = f"error: {text}"
                results.append({"role": "tool", "content": text})
            # thinking and redacted_thinking: earlier reasoning, dropped by the template
        out.extend(results)
        if texts or calls or not results:
            message = {"role": role, "content": "\n".join(texts)}
            if calls:
                message["tool_calls"] = calls
            out.append(message)
    return out
