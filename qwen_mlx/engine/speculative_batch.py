"""Speculative decoding for several sequences at once: one forward checks all their proposals.

The server's speculating requests share the model's forward the way the plain batch's
sequences do, so the weights are read once per step however many clients speculate. Each
sequence keeps what is its own: a :class:`~qwen_mlx.engine.speculative.Speculator` (its
proposer, a draft model's cache or prompt lookup; its sampling key, penalties, grammar and
log-probabilities), its proposals and its accepted length, its
:class:`~qwen_mlx.engine.generate.Reply`.

One step: every sequence proposes; row i of the forward is fed the tokens its cache lacks
and its proposals, right-padded to the longest row (padding comes after a row's real
tokens, so the causal mask keeps it out of their view); each sequence verifies its own rows.
mlx-lm's ``BatchKVCache`` (left-padded, one write position for all rows) is trimmed by the
same count for every row, so the step keeps the positions every row accepted (the fewest)
and a row that accepted more feeds its surplus again next step, ahead of its proposals:
those tokens are known, so it costs a few rows of the next forward and never changes a
result. Sequences that do not speculate are in the plain batch
(:mod:`qwen_mlx.engine.batch`), stepped in turn with this one.

A newcomer prefills its prompt a chunk per step in its own cache, so running sequences
keep streaming, then joins (``BatchKVCache.merge``/``extend``); one that ends leaves with its
cache (``extract``), handed back in the same :class:`~qwen_mlx.engine.prompt_cache.PromptCache`
it came in (its draft's cache stays paired with it for the conversation's next request).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

from ..models import mlx_lm_seam as seam
from .batch import Event, Progress
from .generate import Reply, prefill_chunks
from .prompt_cache import PromptCache
from .request import Request
from .speculative import Speculation, Speculator

REFEED = 4  # most surplus tokens a row feeds again (a few more rows of a forward cost little)


@dataclass
class _Sequence:
    reply: Reply
    speculator: Speculator
    speculation: Speculation
    cache: PromptCache  # its layers are in the batch while the sequence runs
    deadline: float | None
    prefilling: Iterator[int] | None  # the prompt's chunks still to compute
    prefill_total: int  # tokens the prompt adds to the cache's (the last is fed to verify)
    fed: list[int] = field(default_factory=list)  # known tokens the batch's cache lacks


class SpeculativeBatch:
    """The speculating sequences of one model (:class:`~qwen_mlx.model.Model`). Not
    thread-safe: one engine thread owns it."""

    def __init__(self, model) -> None:
        self.model = model
        self.stream = seam.decode_stream()
        self.layers: list[BatchKVCache] | None = None  # rows in the order of ``rows``
        self.rows: list[int] = []  # the joined sequences' ids
        self.sequences: dict[int, _Sequence] = {}  # joined or prefilling
        self.forwards = 0  # the model's verifying forwards, all sequences together
        self._next = 0

    def __len__(self) -> int:
        return len(self.sequences)

    def add(self, request: Request, cache: PromptCache, *, on_prefill: Progress | None = None,
            top_logprobs: int | None = None, time_limit: float | None = None) -> int:
        """Queue a speculative request (``request.speculative`` set) starting from
        ``cache`` (moved in: do not use it until it comes back with the last event); it
        prefills from the next step on. Returns its id."""
        prompt = list(request.tokens)
        todo = cache.reuse(prompt)
        speculation = self.model.speculation(request.speculative, cache, top_logprobs)
        speculator = Speculator(speculation, request.params, prompt,
                                max_tokens=request.params.max_tokens,
                                processors=self.model.processors(request))
        reply = Reply(self.model.tokenizer, prompt_tokens=len(prompt),
                      cached_tokens=len(prompt) - len(todo), eos_ids=self.model.eos_ids,
                      stop=request.stop)
        reply.peak = 0  # this request's own peak, from the steps it is part of
        chunks = prefill_chunks(self.model.net, todo, cache.layers, self.stream,
                                on_prefill=on_prefill, **self.model.chunking())
        uid, self._next = self._next, self._next + 1
        self.sequences[uid] = _Sequence(
            reply, speculator, speculation, cache,
            None if time_limit is None else time.monotonic() + time_limit, chunks, len(todo),
            [todo[-1]])
        return uid

    def step(self) -> list[Event]:
        """One prefill chunk for the oldest newcomer, then one verifying forward for the
        joined sequences: what each made, and the ends."""
        self._prefill()
        events, ended = [], []
        if self.rows:
            made = self._verify()
            peak = mx.get_peak_memory()  # of this step: every joined sequence shared it
            mx.reset_peak_memory()
            for uid, new in zip(self.rows, made):
                seq = self.sequences[uid]
                seq.reply.peak = max(seq.reply.peak, peak)
                for token in new:
                    extra = seq.speculation.scores.popleft() \
                        if seq.speculation.logprobs is not None else {}
                    piece = seq.reply.add(token, **extra)
                    if piece is not None:
                        events.append(Event(uid, piece))
                    if seq.reply.done:
                        break
                if seq.reply.done or seq.speculator.done:
                    ended.append((uid, None))
        now = time.monotonic()
        for uid, seq in self.sequences.items():
            if all(u != uid for u, _ in ended) and seq.deadline is not None and \
                    now >= seq.deadline:
                ended.append((uid, "length"))
        return events + self._end(ended)

    def remove(self, uid: int, reason: str | None = None) -> Event:
        """End a sequence now (its client left, its time ran out): its last event, with
        its cache."""
        (event,) = self._end([(uid, reason)])
        return event

    def _prefill(self) -> None:
        """One chunk of the oldest newcomer's prompt; newcomers whose prompt is in join
        (one with nothing to prefill joins without a chunk, and the next one goes on)."""
        for uid, seq in self.sequences.items():
            if seq.prefilling is None:
                continue
            done = next(seq.prefilling, None)
            if done is None or done >= seq.prefill_total - 1:
                seq.prefilling = None
                self._join(uid, seq)
            if done is not None:
                return

    def _join(self, uid: int, seq: _Sequence) -> None:
        merged = [BatchKVCache.merge([layer]) for layer in seq.cache.layers]
        if self.layers is None:
            self.layers = merged
        else:
            for mine, new in zip(self.layers, merged):
                mine.extend(new)
        seq.cache.layers = None  # moved: the batch holds them now
        self.rows.append(uid)

    def _verify(self) -> list[list[int]]:
        """One forward over every joined row; the tokens each row made."""
        seqs = [self.sequences[uid] for uid in self.rows]
        fed = [seq.fed + seq.speculator.propose(self.stream) for seq in seqs]
        width = max(len(f) for f in fed)
        inputs = mx.array([f + [0] * (width - len(f)) for f in fed])
        made = []
        with seam.on(self.stream):
            logits = self.model.net(inputs, cache=self.layers)
            for seq, row in zip(seqs, logits):
                start = len(seq.fed) - 1  # the row at the last known token
                made.append(seq.speculator.settle(
                    row[start:start + len(seq.speculator.proposals) + 1]))
        self.forwards += 1
        known = [seq.fed + new[:-1] for seq, new in zip(seqs, made)]  # now in the cache
        kept = self._trim(width, [len(k) for k in known])
        for seq, k, n, new in zip(seqs, known, kept, made):
            seq.fed = k[n:] + new[-1:]
        return made

    def _trim(self, width: int, keep: list[int]) -> list[int]:
        """Drop the rejected positions of the step's ``width``, ``keep[i]`` known in row i;
        how many each row keeps. The cache has one length for all rows: the fewest kept,
        and a row's surplus is fed again next step; once a surplus would pass ``REFEED`` (a
        row outpacing another step after step), the most kept, and each row that kept
        fewer moves right by the difference into its left padding (one copy of the cache,
        as mlx-lm's batch does after a ragged prefill)."""
        low, high = min(keep), max(keep)
        target = low if high - low <= REFEED else high
        shifts = [max(0, target - k) for k in keep]
        for layer in self.layers:
            layer.trim(width - target)
            if any(shifts):
                layer.prepare(right_padding=shifts)
                layer.finalize()
        return [min(k, target) for k in keep]

    def _end(self, ended: list[tuple[int, str | None]]) -> list[Event]:
        """The sequences' last events, their caches taken out of the batch."""
        if not ended:
            return []
        gone = {uid for uid, _ in ended}
        events = []
        for uid, reason in ended:
            seq = self.sequences.pop(uid)
            if seq.prefilling is not None:  # never joined: its cache is its own
                seq.prefilling.close()
            else:
                row = self.rows.index(uid)
                seq.cache.layers = [layer.extract(row) for layer in self.layers]
            # what the layers hold: the prompt and the tokens settled before its last ones
            seq.cache.tokens = seq.speculator.context[:seq.cache.offset]
            events.append(self._last(uid, seq, reason))
        keep = [i for i, uid in enumerate(self.rows) if uid not in gone]
        if len(keep) < len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            if keep:
                for layer in self.layers:
                    layer.filter(mx.array(keep))
            else:
                self.layers = None
        return events

    @staticmethod
    def _last(uid: int, seq: _Sequence, reason: str | None) -> Event:
        counts, stats = seq.speculation.counts, seq.reply.stats
        stats.draft_tokens, stats.accepted_tokens = counts.proposed, counts.accepted
        stats.target_forwards = counts.forwards
        return Event(uid, seq.reply.finish(reason), last=True, cache=seq.cache)
