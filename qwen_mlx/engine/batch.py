"""Continuous batching: several requests decoded together, joining and leaving between steps.

mlx-lm's ``BatchGenerator`` does the batched work: it merges the sequences' KV caches into
one left-padded ``BatchKVCache``, prefills a newcomer a chunk at a time between decode steps
(so running streams keep flowing), applies a sampler and logits processors per sequence,
and hands each finished sequence's cache back. Around it this module keeps what our engine
means by a reply, per sequence: a :class:`~qwen_mlx.engine.generate.Reply` (the same text
cutting, stop strings and stats as a lone generation), the seed (each sampler draws from its
own key), log-probabilities when asked, and the prompt cache it came with, returned for the
next request of the same conversation.

What BatchGenerator lacks, and so what stays outside it:

* quantized KV caches cannot be merged into a batch (mlx-lm's ``QuantizedKVCache`` has no
  ``merge``): ours can (:mod:`qwen_mlx.engine.quantized_batch`, and
  :mod:`qwen_mlx.engine.prefix_kv` for ``--kv-start``);
* its prefill step is one size at every depth, where our memory plan shrinks chunks deep
  in a long context on backends that materialise attention scores: the batch uses the
  plan's chunk for the deepest context it allows, so no chunk outgrows the plan;
* stop strings are text, not token sequences (a stop string can end inside a token), so
  they are cut by each sequence's Reply, which then leaves the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
from mlx_lm.generate import BatchGenerator

from .generate import Piece, Reply
from .prompt_cache import PromptCache
from .request import Request
from .sampling import make_sampler, top_logprobs

Progress = Callable[[int, int], None]


@dataclass
class Event:
    """What one step did for one sequence: a piece of its reply, or its end (``last``)."""

    uid: int
    piece: Piece
    last: bool = False
    cache: PromptCache | None = None  # with the last event: the conversation's cache


@dataclass
class _Sequence:
    reply: Reply
    on_prefill: Progress | None
    top_logprobs: int | None  # None: no log-probabilities; 0: the token's own only
    deadline: float | None


def _sampling_key(params) -> tuple | None:
    """Requests whose samplers may be one object (None: a seeded one, which keeps its own
    key). BatchGenerator samples a batch in one call only when every sequence shares its
    sampler."""
    if params.seed is not None and not params.greedy:
        return None
    if params.greedy:
        return ("greedy",)
    return (params.temperature, params.top_k, params.top_p, params.min_p)


class Batch:
    """The running batch of one model. Not thread-safe: one engine thread owns it."""

    def __init__(self, model, *, parallel: int) -> None:
        self.model = model
        step = model.prefill_step
        if model.plan is not None:
            step = model.plan.chunk_at(model.context_length, cap=step)
        self.gen = BatchGenerator(
            model.net, stop_tokens=[[e] for e in model.eos_ids],
            completion_batch_size=parallel,
            prefill_batch_size=parallel,
            prefill_step_size=step)
        self.sequences: dict[int, _Sequence] = {}
        self.samplers: dict[tuple, object] = {}  # shared by unseeded requests alike

    def __len__(self) -> int:
        return len(self.sequences)

    def close(self) -> None:
        """Let the generator restore what it set (Metal's wired memory limit)."""
        self.gen.close()

    def add(self, request: Request, cache: PromptCache, *, on_prefill: Progress | None = None,
            top_logprobs: int | None = None, time_limit: float | None = None) -> int:
        """Queue a request to join at the next step, starting from ``cache`` (moved into the
        batch: do not use it again); returns its id."""
        prompt = list(request.tokens)
        todo = cache.reuse(prompt)
        kept = len(prompt) - len(todo)
        params = request.params
        (uid,) = self.gen.insert([todo], max_tokens=[params.max_tokens], caches=[cache.layers],
                                 all_tokens=[prompt[:kept]], samplers=[self._sampler(params)],
                                 logits_processors=[self.model.processors(request)])
        reply = Reply(self.model.tokenizer, prompt_tokens=len(prompt), cached_tokens=kept,
                      disk_tokens=cache.disk_hit, disk_seconds=cache.disk_seconds,
                      eos_ids=self.model.eos_ids, stop=request.stop)
        reply.peak = 0  # this request's own peak, from the steps it is part of
        self.sequences[uid] = _Sequence(
            reply, on_prefill, top_logprobs,
            None if time_limit is None else time.monotonic() + time_limit)
        return uid

    def _sampler(self, params):
        key = _sampling_key(params)
        if key is None:
            return make_sampler(params)
        if key not in self.samplers:
            self.samplers[key] = make_sampler(params)
        return self.samplers[key]

    def step(self) -> list[Event]:
        """One decode step for the running sequences (and one prefill chunk for a
        newcomer); what each sequence made, and the ends."""
        prompt_progress, made = self.gen.next()
        peak = mx.get_peak_memory()  # of this step: every running sequence shared it
        mx.reset_peak_memory()
        for seq in self.sequences.values():
            seq.reply.peak = max(seq.reply.peak, peak)
        for r in prompt_progress:
            seq = self.sequences.get(r.uid)
            if seq is not None and seq.on_prefill is not None:
                seq.on_prefill(*r.progress)
        events, ended = [], []
        extras = self._logprobs(made)
        for r, extra in zip(made, extras):
            seq = self.sequences[r.uid]
            piece = seq.reply.add(r.token, **extra)
            if piece is not None:
                events.append(Event(r.uid, piece))
            if r.finish_reason is not None:
                # mlx-lm counted max_tokens or met an eos; the Reply agrees on which
                events.append(self._end(r.uid, r.prompt_cache, r.all_tokens))
            elif seq.reply.done:  # a stop string, seen in the text
                ended.append(r.uid)
        now = time.monotonic()
        for uid, seq in self.sequences.items():
            if uid not in ended and seq.deadline is not None and now >= seq.deadline:
                ended.append(uid)
        for uid in ended:
            events.append(self.remove(uid, reason=None if self.sequences[uid].reply.done
                                      else "length"))
        return events

    def remove(self, uid: int, reason: str | None = None) -> Event:
        """End a sequence now (its client left, its time ran out): its last event, with
        its cache."""
        caches = self.gen.remove([uid], return_prompt_caches=True)
        layers, tokens = caches[uid]
        return self._end(uid, layers, tokens, reason)

    def _end(self, uid: int, layers, tokens, reason: str | None = None) -> Event:
        seq = self.sequences.pop(uid)
        cache = PromptCache.holding(self.model.kv, layers, list(tokens))
        return Event(uid, seq.reply.finish(reason), last=True, cache=cache)

    def _logprobs(self, made) -> list[dict]:
        """Per made token: its log-probability and the ``top_logprobs`` likeliest, from
        the normalised log-probabilities mlx-lm computed for the step, for the sequences
        that asked; computed for all of them at once."""
        wanted = [i for i, r in enumerate(made)
                  if self.sequences[r.uid].top_logprobs is not None]
        out = [{} for _ in made]
        if not wanted:
            return out
        k = max(self.sequences[made[i].uid].top_logprobs for i in wanted)
        scored = top_logprobs(mx.stack([made[i].logprobs for i in wanted]),
                              [made[i].token for i in wanted], k)
        for i, score in zip(wanted, scored):
            n = self.sequences[made[i].uid].top_logprobs
            out[i] = {**score, "top_logprobs": score["top_logprobs"][:n]}
        return out
