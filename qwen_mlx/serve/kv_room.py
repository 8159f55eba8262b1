"""Room for KV caches in the server: the budget the memory plan leaves for ``parallel``
sequences, the bytes one cached token takes (the draft's cache too), and the pool of
kept caches that lets a returning conversation prefill only its new part."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx

from ..engine import PromptCache
from ..engine.prompt_cache import common_prefix
from ..engine.request import MAX_DRAFT_TOKENS
from ..model import Model

MAX_PARALLEL = 8
RESERVE = 4096  # tokens a typical request may grow to, for the default --parallel
# Conversations kept by default: enough that an agent's conversation (a Responses
# previous_response_id, a resent history) survives 8 others between its turns; the bytes
# the caches hold (the KV budget) are what really bound them.
SLOTS = 16


class CachePool:
    """Up to ``slots`` prompt caches, most recently used first, holding together no more
    than ``budget`` bytes, measured (the least recently used are dropped first). A cache is
    moved out for a request and back after it, never copied (mlx-lm's LRUPromptCache copies
    the cache it hands out, which would hold a conversation twice during its request).

    With the model's disk tier (:mod:`qwen_mlx.engine.kv_disk`), a cache that leaves the pool
    is handed to it, and a request whose head is on disk beyond what any kept cache shares
    starts from the disk's copy."""

    def __init__(self, model: Model, slots: int, budget: int) -> None:
        self.model, self.slots, self.budget = model, slots, budget
        self.caches: list[PromptCache] = []

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.caches)

    def take(self, tokens: list[int]) -> PromptCache:
        """The cache to start ``tokens`` from: the kept one sharing the longest prefix,
        moved out when it is the same conversation going on (it shares at least half of
        what it holds; the request trims the rest), or a copy of the shared head when
        another conversation merely begins the same way (a system prompt, the template's
        first tokens), so that conversation's cache stays for its next turn."""
        shared = [(common_prefix(c.tokens, tokens), c) for c in self.caches]
        common, best = max(shared, key=lambda pair: pair[0], default=(0, None))
        disk = self.model.kv_disk
        keys = disk.head(tokens, common) if disk is not None else []
        if keys:  # the disk holds more of this head than any kept cache shares
            cache = self.model.new_cache()
            if disk.load(cache, tokens, keys, common):
                return cache
        if common == 0:
            return self.model.new_cache()
        if 2 * common < len(best.tokens):
            return best.head_copy(common)
        self.caches.remove(best)
        return best

    def give_back(self, cache: PromptCache) -> None:
        self.caches.insert(0, cache)
        while len(self.caches) > self.slots:
            self._leave(self.caches.pop())
        self.shrink(self.budget)

    def shrink(self, nbytes: int) -> None:
        """Drop the least recently used caches until the rest hold at most ``nbytes``."""
        while self.caches and self.nbytes > nbytes:
            self._leave(self.caches.pop())

    def spill(self) -> None:
        """Empty the pool, every cache handed to the disk tier (a clean shutdown): the
        engine waits for room in the writer's queue rather than skip one."""
        for cache in self.caches:
            self._leave(cache, block=True)
        self.caches.clear()

    def _leave(self, cache: PromptCache, block: bool = False) -> None:
        if self.model.kv_disk is not None:
            self.model.kv_disk.save(cache, block=block)


def kv_budget(model: Model, parallel: int) -> int:
    """Tokens of KV the memory plan has room for with ``parallel`` sequences (their prefill
    activations counted, and the logits of a speculative step's verify forward: any request
    may ask for up to MAX_DRAFT_TOKENS proposals), shared by every sequence and kept cache;
    never less than one full context."""
    room = replace(model.plan, parallel=parallel, verify_rows=MAX_DRAFT_TOKENS + 1) \
        .largest_context() if model.plan else 0
    return max(room, model.context_length)


def kv_token_bytes(model: Model) -> float:
    """Bytes one cached token takes in every layer, as the model stores its KV."""
    if model.plan is not None:
        return model.plan.kv_bytes_per_token()
    from ..engine.memory_plan import kv_bytes_per_token
    from ..models.shapes import Shape

    return kv_bytes_per_token(Shape.of(model.config), model.kv,
                              getattr(mx, model.compute_dtype).size)


def default_parallel(model: Model) -> int:
    """As many sequences as the KV budget holds at RESERVE tokens each, 1 to 8."""
    return max(1, min(MAX_PARALLEL, kv_budget(model, 1) // RESERVE))
