"""A hybrid model's reply split into its thinking and its answer, as it streams: the APIs
that return thinking apart (Anthropic's thinking blocks, the Responses API's reasoning
items) read the ``<think>...</think>`` block the chat template opens."""

from __future__ import annotations

from ..models import mlx_lm_seam as seam


class Thoughts:
    """A reply's text as (kind, text) parts, "thinking" inside ``<think>…</think>`` and
    "text" outside, as it streams (mlx-lm's text state machine: a tag split across pieces
    is held back until it is whole)."""

    def __init__(self, on: bool) -> None:
        self.machine = seam.text_machine({"text": [("<think>", "thinking")],
                                          "thinking": [("</think>", "text")]}) if on else None
        self.state = self.machine.make_state("text") if on else None
        self.fresh = True  # at a block's start: the template's newlines there are dropped

    def feed(self, text: str) -> list[tuple[str, str]]:
        if self.machine is None:
            return [("text", text)] if text else []
        self.state, segments = self.machine.split(self.state, text)
        out = []
        for i, (kind, t) in enumerate(segments):
            if i:  # a tag was crossed: a new block
                self.fresh = True
            if self.fresh:
                t = t.lstrip("\n")
            if t:
                self.fresh = False
                out.append((kind, t))
        return out

    def flush(self) -> list[tuple[str, str]]:
        if self.machine is None or not self.state[3]:
            return []
        kind, held = self.state[0], self.state[3]
        self.state = self.machine.make_state(kind)
        return [(kind, held)]
