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
Rows keep different numbers of the positions they were fed (their accepted lengths);
:class:`~qwen_mlx.engine.ragged.RaggedRows` keeps that in mlx-lm's ``BatchKVCache``. The
sequences of one draft model propose together too (:mod:`qwen_mlx.engine.draft_batch`: one
draft forward per proposal, all rows at once); prompt lookup needs no forward. Sequences
that do not speculate are in the plain batch (:mod:`qwen_mlx.engine.batch`), stepped in
turn with this one.

A newcomer prefills its prompt (then its draft's) a chunk per step in its own caches, so
running sequences keep streaming, then joins; one that ends leaves with its caches, handed
back in the same :class:`~qwen_mlx.engine.prompt_cache.PromptCache` it came in (its draft's
cache stays paired with it for the conversation's next request).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import mlx.core as mx

from ..models import mlx_lm_seam as seam
from .batch import Event, Progress
from .draft_batch import DraftBatch
from .generate import Reply, prefill_chunks
from .prompt_cache import PromptCache
from .ragged import RaggedRows
from .request import Request
from .speculative import Speculation, Speculator


@dataclass
class _Sequence:
    reply: Reply
    speculator: Speculator  # its ``spec``: the proposer, its counts and scores
    cache: PromptCache  # its layers are in the batch while the sequence runs
    deadline: float | None
    prefilling: Iterator[bool] | None  # the prompts' chunks still to compute (True: the last)
    fed: list[int] = field(default_factory=list)  # known tokens the batch's cache lacks


class SpeculativeBatch:
    """The speculating sequences of one model (:class:`~qwen_mlx.model.Model`). Not
    thread-safe: one engine thread owns it."""

    def __init__(self, model) -> None:
        self.model = model
        self.stream = seam.decode_stream()
        self.rows = RaggedRows()  # the joined sequences
        self.drafts: dict[int, DraftBatch] = {}  # by draft network
        self.sequences: dict[int, _Sequence] = {}  # joined or prefilling
        self.forwards = 0  # the model's verifying forwards, all sequences together
        self.positions = 0  # rows those forwards computed (sequences x width, padding too)
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
                      cached_tokens=len(prompt) - len(todo), disk_tokens=cache.disk_hit,
                      disk_seconds=cache.disk_seconds,
                      eos_ids=self.model.eos_ids,
                      stop=request.stop)
        reply.peak = 0  # this request's own peak, from the steps it is part of
        draft = speculation.draft_cache
        rest = draft.reuse(prompt) if draft is not None else []  # the draft's to prefill
        uid, self._next = self._next, self._next + 1
        self.sequences[uid] = _Sequence(
            reply, speculator, cache,
            None if time_limit is None else time.monotonic() + time_limit,
            self._chunks(todo, cache, rest, speculation, on_prefill), [todo[-1]])
        return uid

    def _chunks(self, todo: list[int], cache: PromptCache, rest: list[int],
                speculation: Speculation, on_prefill: Progress | None) -> Iterator[bool]:
        """The prompt's prefill, a chunk of the model's and one of its draft's per step
        (each cache computes all but the last token); True after the last."""
        chunking = self.model.chunking()
        draft = speculation.draft_cache
        parts = [prefill_chunks(self.model.net, todo, cache.layers, self.stream,
                                on_prefill=on_prefill, **chunking)]
        if draft is not None:
            parts.append(prefill_chunks(speculation.draft, rest, draft.layers, self.stream,
                                        **chunking))
        totals = [max(0, len(t) - 1) for t in (todo, rest)][:len(parts)]
        done = [0] * len(parts)
        while done != totals:
            for i, part in enumerate(parts):
                if done[i] < totals[i]:
                    done[i] = next(part)
            yield done == totals

    def step(self) -> list[Event]:
        """One prefill chunk for the oldest newcomer, then one verifying forward for the
        joined sequences: what each made, and the ends."""
        self._prefill()
        events, ended = [], []
        if len(self.rows):
            made = self._verify()
            peak = mx.get_peak_memory()  # of this step: every joined sequence shared it
            mx.reset_peak_memory()
            for uid, new in zip(self.rows.ids, made):
                seq = self.sequences[uid]
                seq.reply.peak = max(seq.reply.peak, peak)
                for token in new:
                    extra = seq.speculator.spec.scores.popleft() \
                        if seq.speculator.spec.logprobs is not None else {}
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
        """One chunk of the oldest newcomer's prompt; newcomers whose prompts are in join
        (one with nothing to prefill joins without a chunk, and the next one goes on)."""
        for uid, seq in self.sequences.items():
            if seq.prefilling is None:
                continue
            last = next(seq.prefilling, None)
            if last is None or last:
                seq.prefilling = None
                self._join(uid, seq)
            if last is not None:
                return

    def _join(self, uid: int, seq: _Sequence) -> None:
        self.rows.join(uid, seq.cache.layers)
        seq.cache.layers = None  # moved: the batch holds them now
        draft = seq.speculator.spec.draft
        if draft is not None:
            if id(draft) not in self.drafts:
                self.drafts[id(draft)] = DraftBatch(draft, self.stream)
            self.drafts[id(draft)].join(uid, seq.speculator.spec)

    def _verify(self) -> list[list[int]]:
        """One forward over every joined row (after every row's proposals); the tokens
        each row made."""
        seqs = [self.sequences[uid] for uid in self.rows.ids]
        speculators = {uid: seq.speculator for uid, seq in zip(self.rows.ids, seqs)}
        for draft in self.drafts.values():
            if len(draft):
                draft.propose(speculators)
        for seq in seqs:
            if seq.speculator.spec.draft is None:
                seq.speculator.propose(self.stream)
        fed = [seq.fed + seq.speculator.proposals for seq in seqs]
        width = max(len(f) for f in fed)
        inputs = mx.array([f + [0] * (width - len(f)) for f in fed])
        made = []
        with seam.on(self.stream):
            logits = self.model.net(inputs, cache=self.rows.layers)
            for seq, row in zip(seqs, logits):
                start = len(seq.fed) - 1  # the row at the last known token
                made.append(seq.speculator.settle(
                    row[start:start + len(seq.speculator.proposals) + 1]))
        self.forwards += 1
        self.positions += inputs.size
        known = [seq.fed + new[:-1] for seq, new in zip(seqs, made)]  # now in the cache
        kept = self.rows.trim(width, [len(k) for k in known])
        for seq, k, n, new in zip(seqs, known, kept, made):
            seq.fed = k[n:] + new[-1:]
        for draft in self.drafts.values():
            if len(draft):
                draft.settle(speculators)
        return made

    def _end(self, ended: list[tuple[int, str | None]]) -> list[Event]:
        """The sequences' last events, their caches taken out of the batch."""
        if not ended:
            return []
        gone = {uid for uid, _ in ended}
        layers = self.rows.leave(gone)
        leaving: dict[int, dict] = {}  # by draft network: its rows out in one go
        events = []
        for uid, reason in ended:
            seq = self.sequences.pop(uid)
            context = seq.speculator.context
            if seq.prefilling is not None:  # never joined: its caches are its own
                seq.prefilling.close()
                draft = seq.speculator.spec.draft_cache
                if draft is not None:
                    draft.tokens = context[:draft.offset]
            else:
                seq.cache.layers = layers[uid]
                draft = seq.speculator.spec.draft
                if draft is not None:
                    leaving.setdefault(id(draft), {})[uid] = (seq.speculator.spec, context)
            # what the layers hold: the prompt and the tokens settled before its last ones
            seq.cache.tokens = context[:seq.cache.offset]
            events.append(self._last(uid, seq, reason))
        for draft, rows in leaving.items():
            self.drafts[draft].leave(rows)
        return events

    @staticmethod
    def _last(uid: int, seq: _Sequence, reason: str | None) -> Event:
        counts, stats = seq.speculator.spec.counts, seq.reply.stats
        stats.draft_tokens, stats.accepted_tokens = counts.proposed, counts.accepted
        stats.target_forwards = counts.forwards
        return Event(uid, seq.reply.finish(reason), last=True, cache=seq.cache)
