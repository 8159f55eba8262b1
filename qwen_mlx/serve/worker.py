"""One model, one engine thread: requests queue up and run one at a time, never interleaved.

The worker keeps a few KV caches of recent conversations. A chat client resends the whole
history on every request; the request goes to the cache sharing the longest prefix with it,
so only the new suffix is prefilled. Results travel back to the asyncio side as events;
a request whose client went away is cancelled between two tokens.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator

from ..engine import Piece, PromptCache, Request
from ..engine.prompt_cache import common_prefix
from ..model import Model

_DONE = object()


@dataclass
class Job:
    request: Request  # validated at the HTTP edge: nothing in it can be refused here
    loop: asyncio.AbstractEventLoop
    on_prefill: object = None  # progress of a long prompt: a callback with close()
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class CachePool:
    """Up to ``slots`` prompt caches, most recently used first, holding together no more
    tokens than one full context: the memory plan budgeted one context, so the pool never
    grows past it (the least recently used caches are dropped first). A cache is moved out
    for a request and back after it, never copied (mlx-lm's LRUPromptCache copies the cache
    it hands out, which would hold a conversation twice during its request)."""

    def __init__(self, model: Model, slots: int) -> None:
        self.model, self.slots = model, slots
        self.caches: list[PromptCache] = []

    def take(self, tokens: list[int]) -> PromptCache:
        best = max(self.caches, key=lambda c: common_prefix(c.tokens, tokens), default=None)
        if best is None or (common_prefix(best.tokens, tokens) == 0
                            and len(self.caches) < self.slots):
            return self.model.new_cache()
        self.caches.remove(best)
        return best

    def give_back(self, cache: PromptCache) -> None:
        kept, total = [], 0
        for c in [cache, *self.caches][:self.slots]:
            if kept and total + len(c) > self.model.context_length:
                break
            kept.append(c)
            total += len(c)
        self.caches = kept


class Worker:
    def __init__(self, model: Model, slots: int = 4) -> None:
        self.model = model
        self.pool = CachePool(model, slots)
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.finished: deque[dict] = deque(maxlen=64)  # recent jobs: tokens made, cancelled
        self.thread = threading.Thread(target=self._loop, name="qwen-mlx-engine", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if not job.cancelled.is_set():
                self._run(job)
            job.put(_DONE)

    def _run(self, job: Job) -> None:
        cache = self.pool.take(list(job.request.tokens))
        made = 0
        try:
            pieces = self.model.stream(job.request, cache=cache, on_prefill=job.on_prefill)
            for piece in pieces:
                if job.cancelled.is_set():
                    break
                made += len(piece.tokens)
                job.put(piece)
            pieces.close()
        except Exception as e:  # noqa: BLE001 - reported to the request, the worker lives on
            job.put(e)
        finally:
            if job.on_prefill is not None:
                job.on_prefill.close()
            self.pool.give_back(cache)
            self.finished.append({"generated": made, "cancelled": job.cancelled.is_set()})

    async def generate(self, request: Request, on_prefill=None) -> AsyncIterator[Piece]:
        """The reply's pieces; the last carries the stats. Leaving early cancels the job.
        ``on_prefill`` (a callback with ``close()``) is called from the engine thread."""
        job = Job(request, asyncio.get_running_loop(), on_prefill)
        self.jobs.put(job)
        try:
            while True:
                item = await job.events.get()
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            job.cancelled.set()
