"""Speculative decoding: cheap proposals, checked by the model in one forward.

A 4B model on a Mac is bound by memory bandwidth: a forward over k+1 rows reads the weights
once, about the cost of one row. Each step, a proposer guesses the next k tokens, the model
computes its distributions at all k+1 positions at once, and the longest acceptable prefix
of the guess is kept, plus one token of the model's own: 1 to k+1 tokens per forward.

* **Proposers**: a draft model of the same vocabulary (its own KV cache, rolled back with the
  model's), or prompt lookup (no model: the tokens that followed the latest earlier match of
  the context's last 1 to 3 tokens; strong when the reply copies its input).
* **Lossless**: greedy, a proposal is kept while it is the model's argmax, so the text is
  the text plain decoding gives. Sampling uses the standard speculative-sampling rule
  (Leviathan et al. 2023; Chen et al. 2023): a proposal x drawn from q is kept with
  probability min(1, p(x)/q(x)), else the token is drawn from max(0, p - q) renormalized,
  which leaves the model's distribution p exactly as it was (prompt lookup and a greedy
  draft propose with q a point mass). p is what the sampler draws from: penalties applied
  with the tokens before each position, then temperature, top-k, top-p, min-p.
* **Vocabulary rows**: a draft with the same tokenizer may have another number of output
  rows (the padding past the tokenizer's tokens differs between checkpoints); its logits
  are cut or padded with -inf to the model's rows (:class:`RowsFitted`), so q and p are
  distributions over the same ids and the rule above stays exact.
* **Caches**: the rows of rejected proposals are trimmed from both caches at once
  (mlx-lm's ``trim_prompt_cache``), so what a cache holds is always a prefix of the reply.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import mlx.core as mx
from mlx_lm.models.cache import trim_prompt_cache

from ..models import mlx_lm_seam as seam
from .prompt_cache import PromptCache
from .sampling import Processor, SamplingParams, make_distribution, top_logprobs

MAX_NGRAM = 3  # prompt lookup matches the context's last 3, 2, then 1 tokens
RECENT = 1024  # tokens the penalties are given (as in plain decoding)


@dataclass
class Counts:
    """What speculation did in one reply: tokens proposed and kept, and the model's
    forwards while decoding (the prompt's prefill not counted)."""

    proposed: int = 0
    accepted: int = 0
    forwards: int = 0


@dataclass
class Speculation:
    """One reply's proposer: ``draft`` (a draft model's network, with ``draft_cache``) or
    prompt lookup, ``tokens`` proposals per step. With ``logprobs`` (how many alternatives,
    0 for the token's own only), each yielded token's log-probability waits in ``scores``
    (from the same processed rows the batch reports: penalties and grammar applied, before
    temperature)."""

    tokens: int
    draft: object | None = None
    draft_cache: PromptCache | None = None
    counts: Counts = field(default_factory=Counts)
    logprobs: int | None = None
    scores: deque = field(default_factory=deque)


class RowsFitted:
    """A draft network whose logits have ``rows`` columns, the model's: its own rows past
    that are cut (the model has no such ids), the ones it lacks are -inf (it never proposes
    them; p keeps its mass there through the residual max(0, p - q)). An id past the draft's
    own rows (a padding id the model produced) is read as its last row: what the draft sees
    changes only how good its guesses are, never the text."""

    def __init__(self, net, own: int, rows: int) -> None:
        self.net, self.own, self.rows = net, own, rows

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        if self.own < self.rows:
            inputs = mx.minimum(inputs, self.own - 1)
        logits = self.net(inputs, cache=cache)
        if self.own > self.rows:
            return logits[..., :self.rows]
        missing = mx.full((*logits.shape[:-1], self.rows - self.own), -mx.inf, logits.dtype)
        return mx.concatenate([logits, missing], axis=-1)


class LookupIndex:
    """Where each 1-, 2- and 3-gram of the context last started (before the context's
    end), kept up to date as tokens are added: a proposal is found in constant time."""

    def __init__(self, context: list[int]) -> None:
        self.context: list[int] = []
        self.last: dict[tuple[int, ...], int] = {}
        for token in context:
            self.add(token)

    def add(self, token: int) -> None:
        # the n-grams ending at the previous token now have a follower: index them
        ctx = self.context
        for n in range(1, MAX_NGRAM + 1):
            if len(ctx) >= n:
                self.last[tuple(ctx[len(ctx) - n:])] = len(ctx) - n
        ctx.append(token)

    def propose(self, k: int) -> list[int]:
        ctx = self.context
        for n in range(MAX_NGRAM, 0, -1):
            if len(ctx) < n:
                continue
            start = self.last.get(tuple(ctx[len(ctx) - n:]))
            if start is not None:
                return ctx[start + n:start + n + k]
        return []


class Speculator:
    """One reply's speculative decoding, apart from the model's forward: :meth:`propose`
    the next tokens, run the model over them, :meth:`settle` on its rows. The lone
    generator below and the server's speculative batch
    (:mod:`qwen_mlx.engine.speculative_batch`) both drive it. ``context``: the tokens the
    reply follows; the reply's tokens join it as they are settled."""

    def __init__(self, spec: Speculation, params: SamplingParams, context: list[int], *,
                 max_tokens: int, processors: list[Processor] = ()) -> None:
        self.spec = spec
        self.distribution = None if params.greedy else make_distribution(params)
        self.key = mx.random.key(params.seed if params.seed is not None else
                                 int(mx.random.randint(0, 2**31 - 1, ()).item()))
        self.context = list(context)
        self.lookup = LookupIndex(self.context) if spec.draft is None else None
        self.processors = list(processors)
        self.max_tokens = max_tokens
        self.made = 0
        self.proposals: list[int] = []
        self.q: mx.array | None = None  # the draft's distributions for the proposals

    @property
    def done(self) -> bool:
        return self.made >= self.max_tokens

    def draw(self) -> mx.array:
        """A key of this reply's own (a seeded reply draws the same alone or batched)."""
        self.key, now = mx.random.split(self.key)
        return now

    @property
    def room(self) -> int:
        """Proposals this step may have: the reply's room after one token of the model's."""
        return min(self.spec.tokens, self.max_tokens - self.made - 1)

    def propose(self, stream) -> list[int]:
        """This step's proposals (a batch of drafts sets ``proposals`` and ``q`` itself)."""
        k = self.room
        if self.spec.draft is not None:
            self.proposals, self.q = draft_proposals(self.spec, self.context, k,
                                                     self.distribution, self.draw, stream)
        else:
            self.proposals, self.q = (self.lookup.propose(k) if k > 0 else []), None
        return self.proposals

    def settle(self, logits: mx.array) -> list[int]:
        """The step's new tokens from the model's rows at the context's last token and at
        each proposal: the proposals kept, then one token of the model's own. The model
        was fed every proposal; those after the kept ones are for the caller to trim."""
        spec, proposals, counts = self.spec, self.proposals, self.spec.counts
        logits, marks = processed(logits, self.context, proposals, self.processors)
        counts.forwards += 1
        counts.proposed += len(proposals)
        # a proposal a grammar forbids ends the rows: it and the rest are rejected
        usable = len(marks) - 1 if marks else len(proposals)
        kept, token = verify(logits, proposals[:usable],
                             None if self.q is None else self.q[:usable], self.distribution,
                             self.draw)
        for mask, mark in zip(markers(self.processors), marks[len(kept)] if marks else ()):
            mask.rewind(mark)  # as if only the kept proposals had been fed
        counts.accepted += len(kept)
        new = kept + [token]
        if spec.logprobs is not None:
            spec.scores.extend(scores(logits, new, spec.logprobs))
        self.made += len(new)
        self.context += new
        if self.lookup is not None:
            for t in new:
                self.lookup.add(t)
        return new


def speculative_tokens(model, tokens: list[int], cache: list, params: SamplingParams,
                       spec: Speculation, *, max_tokens: int,
                       prefill: Callable[[mx.Stream | None], None],
                       processors: list[Processor] = (),
                       history: list[int] = ()) -> Iterator[int]:
    """Like :func:`~qwen_mlx.engine.generate.generate_tokens`: up to ``max_tokens`` new ids
    after ``tokens`` (the cache lacks them; ``prefill(stream)`` computes all but the last),
    each step's proposals checked in one forward. ``spec.counts`` counts the steps."""
    speculator = Speculator(spec, params, list(history) + list(tokens),
                            max_tokens=max_tokens, processors=processors)
    with seam.generation_context(model) as stream:
        prefill(stream)
        while not speculator.done:
            fed = [speculator.context[-1]] + speculator.propose(stream)
            with seam.on(stream):
                new = speculator.settle(model(mx.array(fed)[None], cache=cache)[0])
            # the model was fed the last token and every proposal: keep those before the last new
            trim_prompt_cache(cache, len(fed) - len(new))
            yield from new


def scores(logits: mx.array, tokens: list[int], top: int) -> list[dict]:
    """Per token (row i made tokens[i]): its log-probability and the ``top`` likeliest
    alternatives, as :class:`~qwen_mlx.engine.generate.Piece` fields."""
    rows = logits[:len(tokens)].astype(mx.float32)
    return top_logprobs(rows - mx.logsumexp(rows, axis=-1, keepdims=True), tokens, top)


def markers(processors) -> list:
    """The processors with a state to rewind (a grammar's mask)."""
    return [p for p in processors if hasattr(p, "mark")]


def processed(logits: mx.array, context: list[int], proposals: list[int],
              processors) -> tuple[mx.array, list]:
    """The model's rows through the processors, each with the tokens before it (penalties
    count them; a grammar's mask advances through them). With a grammar: the rows up to
    the first proposal it forbids, and after each row the mask's :meth:`mark` (to rewind to
    the row the verification ends at)."""
    if not processors:
        return logits, []
    stateful = markers(processors)
    rows, marks = [], []
    window = context[-RECENT:]  # the last RECENT tokens, not a copy of a 256k context a row
    for i in range(len(proposals) + 1):
        row = logits[i:i + 1]
        recent = mx.array((window + proposals[:i])[-RECENT:], dtype=mx.uint32)
        for process in processors:
            row = process(recent, row)
        rows.append(row)
        if stateful:
            marks.append([m.mark() for m in stateful])
            if i < len(proposals) and row[0, proposals[i]].item() == -float("inf"):
                break
    return mx.concatenate(rows, axis=0), marks


def verify(logits: mx.array, proposals: list[int], q: mx.array | None, distribution,
           draw: Callable[[], mx.array]) -> tuple[list[int], int]:
    """(the proposals kept, the token after them). ``logits``: the model's rows at each
    proposal and one past them; ``q``: the draft's distributions (None: point masses)."""
    if distribution is None:  # greedy: kept while they are the argmax
        best = mx.argmax(logits, axis=-1).tolist()
        n = 0
        while n < len(proposals) and proposals[n] == best[n]:
            n += 1
        return proposals[:n], best[n]
    p = distribution(logits)
    for i, x in enumerate(proposals):
        px = p[i, x]
        qx = q[i, x] if q is not None else mx.array(1.0)
        if mx.random.uniform(key=draw()).item() < min(1.0, (px / qx).item()):
            continue
        if q is not None:
            rest = mx.maximum(p[i] - q[i], 0.0)
        else:
            rest = p[i] * (mx.arange(p.shape[-1]) != x)
        token = mx.random.categorical(mx.log(rest / rest.sum()), key=draw()).item()
        return proposals[:i], token
    n = len(proposals)
    return proposals, mx.random.categorical(mx.log(p[n]), key=draw()).item()


def draft_proposals(spec: Speculation, context: list[int], k: int, distribution,
                    draw: Callable[[], mx.array], stream) -> tuple[list[int], mx.array | None]:
    """The draft's next ``k`` tokens after ``context`` (its cache brought up to the context
    first: only what it lacks is computed), and the distributions they were drawn from
    (None when greedy)."""
    if k <= 0:
        return [], None
    draft, cache = spec.draft, spec.draft_cache
    todo = cache.reuse(context)
    with seam.on(stream):
        if len(todo) > 1:
            draft(mx.array(todo[:-1])[None], cache=cache.layers)
        y, proposals, rows = todo[-1], [], []
        for _ in range(k):
            logits = draft(mx.array([y])[None], cache=cache.layers)[0]
            if distribution is None:
                y = mx.argmax(logits, axis=-1).item()
            else:
                q = distribution(logits)
                rows.append(q)
                y = mx.random.categorical(mx.log(q), key=draw()).item()
            proposals.append(y)
    cache.tokens = context + proposals[:-1]  # the last proposal is not fed
    return proposals, (mx.concatenate(rows, axis=0) if rows else None)
