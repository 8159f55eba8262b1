"""A KV cache that remembers which tokens it holds, so a new prompt prefills only its new part.

Chat turns and API requests resend the whole conversation. ``PromptCache.reuse`` finds the
longest common prefix between the tokens already cached and the new prompt, trims the cache
back to it and returns the suffix that still has to be computed.

mlx-lm's pieces do the work (``common_prefix_len``, ``trim_prompt_cache``, its caches). Its
``LRUPromptCache`` is not used: it hands out a deep copy of the cache it finds, so during a
request a conversation's cache would exist twice, where the memory plan budgets one context
in all; our caches are moved in and out of the server's pool instead
(:class:`qwen_mlx.serve.kv_room.CachePool`). Ours also keep the full-precision prefix of a
quantized cache (:mod:`qwen_mlx.engine.kv_cache`).
"""

from __future__ import annotations

import copy

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.cache import KVCache, trim_prompt_cache
from mlx_lm.utils import common_prefix_len as common_prefix

from .kv_cache import KVSpec, make_cache

__all__ = ["PromptCache", "common_prefix"]


class PromptCache:
    """mlx-lm's per-layer KV caches (full precision or quantized, as ``spec`` says) plus the
    token ids they hold."""

    def __init__(self, model, spec: KVSpec = KVSpec()) -> None:
        self.spec = spec
        self.layers = make_cache(model, spec)
        self.tokens: list[int] = []
        self.from_disk = 0  # tokens just loaded from the disk tier (engine.kv_disk)
        self.loading = 0.0  # the seconds that load took
        self.disk_hit = 0  # of the tokens the last reuse kept, those that came from disk
        self.disk_seconds = 0.0  # and the seconds they took to read

    @classmethod
    def holding(cls, spec: KVSpec, layers: list, tokens: list[int]) -> "PromptCache":
        """A cache around layers that already hold ``tokens`` (handed back by a batch)."""
        cache = cls.__new__(cls)
        cache.spec, cache.layers, cache.tokens = spec, layers, tokens
        cache.from_disk = cache.disk_hit = 0
        cache.loading = cache.disk_seconds = 0.0
        return cache

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def offset(self) -> int:
        """Positions actually stored in the layers (may run one ahead of ``tokens``
        while a generation is in progress)."""
        return self.layers[0].offset

    @property
    def nbytes(self) -> int:
        """Bytes the layers' buffers hold (their capacity, not just what is used)."""
        return sum(layer.nbytes for layer in self.layers)

    def trim(self, keep: int) -> None:
        """Keep only the first ``keep`` tokens, and free the buffer room past them:
        mlx-lm's trim only moves the offset, so a cache once grown to a long reply would
        hold that memory for as long as it is kept."""
        excess = self.offset - keep
        if excess > 0:
            trim_prompt_cache(self.layers, excess)
            for layer in self.layers:
                for part in getattr(layer, "caches", None) or (layer,):  # a prefix cache
                    _compact(part)
        self.tokens = self.tokens[:keep]

    def head_copy(self, n: int) -> "PromptCache":
        """A new cache holding copies of this one's first ``n`` tokens (only those are
        copied); this one is left as it is. For another conversation that shares a head
        (a system prompt, tool definitions) with a kept one."""
        layers = []
        for layer in self.layers:
            parts = getattr(layer, "caches", None)
            if parts is None:
                layers.append(_head_of(layer, n))
                continue
            clone = copy.copy(layer)  # a prefix cache: its head part first, then its tail
            first = min(n, parts[0].offset)
            clone.caches = (_head_of(parts[0], first), _head_of(parts[1], n - first))
            layers.append(clone)
        mx.eval([(p.keys, p.values) for layer in layers
                 for p in (getattr(layer, "caches", None) or (layer,)) if p.keys is not None])
        return PromptCache.holding(self.spec, layers, self.tokens[:n])

    def reuse(self, prompt: list[int]) -> list[int]:
        """Trim to the common prefix with ``prompt``; return the tokens still to prefill.

        At least one token is always left to compute: generation needs the logits of the
        last prompt position.
        """
        common = min(common_prefix(self.tokens, prompt), len(prompt) - 1)
        self.trim(common)
        self.disk_hit, self.from_disk = min(self.from_disk, common), 0
        self.disk_seconds, self.loading = (self.loading if self.disk_hit else 0.0), 0.0
        return prompt[common:]


def _head_of(part, n: int):
    """A KVCache or QuantizedKVCache like ``part`` holding copies of its first ``n``
    positions, in buffers of that size."""
    clone = copy.copy(part)  # its class and settings; the arrays are replaced below
    if part.keys is None or n == 0:
        clone.keys = clone.values = None
        clone.offset = 0
        return clone
    take = lambda x: mx.array(x[..., :n, :])  # a copy: a slice would keep the old buffer
    clone.keys, clone.values = tree_map(take, part.keys), tree_map(take, part.values)
    clone.offset = n
    return clone


def _compact(part) -> None:
    """Copy what a KVCache or QuantizedKVCache still uses into buffers of that size, so
    the old buffers are freed, when at least half of a buffer (and a growth step) is unused;
    an emptied one holds nothing."""
    if getattr(part, "keys", None) is None:
        return
    if part.offset == 0:
        part.keys = part.values = None
        return
    capacity = (part.keys[0] if isinstance(part.keys, tuple) else part.keys).shape[2]
    if capacity - part.offset < max(KVCache.step, part.offset):
        return  # copying costs more than it frees: a cache trimmed by a few tokens stays
    n = part.offset
    copy = lambda x: mx.array(x[..., :n, :])  # a copy: a slice would keep the old buffer
    part.keys, part.values = tree_map(copy, part.keys), tree_map(copy, part.values)
    mx.eval(part.keys, part.values)
