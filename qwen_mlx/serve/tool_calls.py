"""Qwen3's tool calls in generated text -> structured calls, for both APIs.

Qwen3 answers a tool request with blocks of ``<tool_call>\\n{"name": ..., "arguments": {...}}
\\n</tool_call>``. While streaming, text before the first block is passed through as it comes;
from ``<tool_call>`` on, text is held until the end, then parsed. A block that is not valid
JSON stays text, so nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import re

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def as_object(arguments):
    """Arguments as a JSON object where they arrive as JSON text (OpenAI sends them so)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            pass
    return arguments


def parse(text: str) -> tuple[str, list[dict]]:
    """(text outside the blocks, [{"name": ..., "arguments": {...}}, ...])."""
    calls, kept, last = [], [], 0
    for m in _BLOCK.finditer(text):
        try:
            call = json.loads(m.group(1))
        except ValueError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        calls.append({"name": call["name"], "arguments": as_object(call.get("arguments", {}))})
        kept.append(text[last:m.start()])
        last = m.end()
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
