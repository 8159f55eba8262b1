"""A KV cache that remembers which tokens it holds, so a new prompt prefills only its new part.

Chat turns and API requests resend the whole conversation. ``PromptCache.reuse`` finds the
longest common prefix between the tokens already cached and the new prompt, trims the cache
back to it and returns the suffix that still has to be computed.
"""

from __future__ import annotations

from typing import Sequence

from .kv_cache import KVSpec, make_cache


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PromptCache:
    """mlx-lm's per-layer KV caches (full precision or quantized, as ``spec`` says) plus the
    token ids they hold."""

    def __init__(self, model, spec: KVSpec = KVSpec()) -> None:
        self.spec = spec
        self.layers = make_cache(model, spec)
        self.tokens: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def offset(self) -> int:
        """Positions actually stored in the layers (may run one ahead of ``tokens``
        while a generation is in progress)."""
        return self.layers[0].offset

    def trim(self, keep: int) -> None:
        """Keep only the first ``keep`` tokens."""
        excess = self.offset - keep
        if excess > 0:
            for layer in self.layers:
                layer.trim(excess)
        self.tokens = self.tokens[:keep]

    def reuse(self, prompt: list[int]) -> list[int]:
        """Trim to the common prefix with ``prompt``; return the tokens still to prefill.

        At least one token is always left to compute: generation needs the logits of the
        last prompt position.
        """
        common = min(common_prefix(self.tokens, prompt), len(prompt) - 1)
        self.trim(common)
        return prompt[common:]
