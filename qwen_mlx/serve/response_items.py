"""The Responses API's items and chat messages, both ways: ``input`` items (``message`` with
text parts, ``function_call``, ``function_call_output``; earlier ``reasoning`` dropped, as
the template drops earlier reasoning; anything else refused by name) as the messages the
chat template renders, and a reply's parts as output items (its reasoning, its message, its
function calls)."""

from __future__ import annotations

import json
import uuid

from .server import RequestError

PART_TYPES = {"input_text", "output_text", "text"}


def text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(400, f"{where} must be text or a list of text parts", param="input")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES or not isinstance(part.get("text"), str):
            raise RequestError(400, f"{where}[{j}]: only text parts are supported, not "
                                    f"{kind!r} (the model reads text)", param="input")
        texts.append(part["text"])
    return "".join(texts)


def input_messages(value) -> list[dict]:
    """``input`` (text, or a list of items) as chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RequestError(400, "'input' must be text or a non-empty list of items",
                           param="input")
    out: list[dict] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise RequestError(400, f"{where} needs a role of user, assistant, system or "
                                        f"developer", param="input")
            out.append({"role": "system" if role == "developer" else role,
                        "content": text_of(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(item.get("arguments"),
                                                                       str):
                raise RequestError(400, f"{where}: a function_call needs a name and "
                                        f"arguments (JSON text)", param="input")
            call = {"function": {"name": item["name"], "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str) or output is None:
                raise RequestError(400, f"{where}: a function_call_output needs a call_id and "
                                        f"an output", param="input")
            out.append({"role": "tool", "content": text_of(output, f"{where}.output")})
        elif kind == "reasoning":
            continue  # earlier reasoning: the template drops it
        else:
            raise RequestError(400, f"{where}: items of type {kind!r} are not supported "
                                    f"(message, function_call, function_call_output, "
                                    f"reasoning)", param="input")
    return out


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_items(parts: list[tuple[str, str]], calls: list[dict], done: bool) -> list[dict]:
    """The reply's items: its reasoning, its message, its function calls."""
    items, status = [], "completed" if done else "incomplete"
    for kind, text in parts:
        if kind == "thinking":
            items.append({"type": "reasoning", "id": new_id("rs"), "summary": [],
                          "content": [{"type": "reasoning_text", "text": text}]})
        elif not calls or text.strip():
            items.append({"type": "message", "id": new_id("msg"), "role": "assistant",
                          "status": status, "content": [
                              {"type": "output_text", "annotations": [], "logprobs": [],
                               "text": text.strip() if calls else text}]})
    for c in calls:
        items.append({"type": "function_call", "id": new_id("fc"),
                      "call_id": f"call_{uuid.uuid4().hex[:24]}", "name": c["name"],
                      "arguments": json.dumps(c["arguments"], ensure_ascii=False),
                      "status": "completed"})
    return items


def as_messages(items: list[dict]) -> list[dict]:
    """Output items as the chat messages a continuation renders (reasoning dropped)."""
    return input_messages([i for i in items if i["type"] != "reasoning"]) if any(
        i["type"] != "reasoning" for i in items) else []
