"""Qwen3's tool calls in generated text -> structured calls (for both HTTP APIs, the chat
and the tool loop), and the grammar that forces a reply to be calls.

Qwen3 answers a tool request with blocks of ``<tool_call>\\n{"name": ..., "arguments": {...}}
\\n</tool_call>``. While streaming, text before the first block is passed through as it comes;
from ``<tool_call>`` on, text is held until the end, then parsed. A block that is not valid
JSON stays text, so nothing the model wrote is lost.
"""

from __future__ import annotations

import json

from ..engine.constraint import JSON_STYLE, Constraint
from ..errors import QwenMlxError

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def as_object(arguments):
    """Arguments as a JSON object where they arrive as JSON text (OpenAI sends them so)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except (ValueError, RecursionError):
            pass
    return arguments


def _call(block: str) -> dict | None:
    """One block's JSON as a call, or None when it is not one."""
    try:
        call = json.loads(block)
    except (ValueError, RecursionError):
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    return {"name": call["name"], "arguments": as_object(call.get("arguments", {}))}


def parse(text: str) -> tuple[str, list[dict]]:
    """(text outside the blocks, [{"name": ..., "arguments": {...}}, ...]). A block ends at
    the first ``</tool_call>`` after which its text is a call: an argument that contains the
    closing tag itself (code that writes Qwen's format) does not cut its call short."""
    calls, kept, last, start = [], [], 0, text.find(OPEN)
    while start >= 0:
        end = text.find(CLOSE, start)
        while end >= 0 and (call := _call(text[start + len(OPEN):end])) is None:
            end = text.find(CLOSE, end + 1)
        if end < 0:  # no call here: its text stays text
            start = text.find(OPEN, start + 1)
            continue
        calls.append(call)
        kept.append(text[last:start])
        last = end + len(CLOSE)
        start = text.find(OPEN, last)
    kept.append(text[last:])
    return ("".join(kept).strip() if calls else text), calls


class Splitter:
    """Streaming side: ``feed`` returns the text that can be shown now; ``finish`` returns
    (the rest of the text, the calls)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.held = ""
        self.in_call = False

    def feed(self, text: str) -> str:
        if not self.enabled:
            return text
        if self.in_call:
            self.held += text
            return ""
        buf = self.held + text
        at = buf.find(OPEN)
        if at >= 0:
            self.in_call, self.held = True, buf[at:]
            return buf[:at]
        keep = max((k for k in range(1, len(OPEN)) if buf.endswith(OPEN[:k])), default=0)
        self.held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]

    def finish(self) -> tuple[str, list[dict]]:
        text, self.held = self.held, ""
        if not self.in_call:
            return text, []
        rest, calls = parse(text)
        return rest, calls


def function_of(tool) -> dict:
    """An offered tool's function: OpenAI's ``{"type": "function", "function": {...}}``, or
    the function itself; its name checked."""
    fn = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise QwenMlxError("each tool needs a function with a name")
    return fn


def forced_call(tools: list, name: str | None, *, several: bool = False) -> Constraint:
    """A reply that is exactly one call, in Qwen3's format (``<tool_call>`` JSON
    ``</tool_call>``), of the named tool or of any offered one, its arguments valid under
    the tool's parameter schema; with ``several``, one or more such calls, one per line
    (as Qwen3's template writes parallel calls)."""
    calls = []
    for tool in tools:
        fn = function_of(tool)
        if name is not None and fn["name"] != name:
            continue
        parameters = fn.get("parameters") or {"type": "object"}
        if not isinstance(parameters, dict):
            raise QwenMlxError(f"tool {fn['name']!r}: parameters must be a JSON schema")
        calls.append({"type": "object", "properties": {"name": {"const": fn["name"]},
                                                       "arguments": parameters},
                      "required": ["name", "arguments"], "additionalProperties": False})
    if not calls:
        raise QwenMlxError(f"tool_choice names {name!r}, which is not in 'tools'" if name
                           else "tool_choice 'required' needs 'tools'")
    schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": JSON_STYLE}
    call = f'<tool_call> "\\n" %json {json.dumps(schema)} "\\n" </tool_call>'
    if not several:
        return Constraint.lark(f"start: {call}")
    return Constraint.lark(f'start: call ("\\n" call)*\ncall: {call}')
