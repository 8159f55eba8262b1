"""Prompt scoring: each prompt token's log-probability given the tokens before it, and the
likeliest alternatives there. Evaluation harnesses ask for it (``echo`` with ``logprobs`` on
/v1/completions) to compute log-likelihoods without generating.

It is a prefill that keeps its logits: chunk by chunk through a fresh cache (a chunk's
logits are ``chunk x vocabulary`` floats, freed before the next), a log-softmax in float32,
the next token's entry and the top N by value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import mlx.core as mx

from ..models import mlx_lm_seam as seam
from .generate import PREFILL_STEP
from .kv_cache import KVSpec, make_cache


@dataclass
class TokenScore:
    token: int
    logprob: float | None  # None for the first token: nothing comes before it
    top: list[tuple[int, float]] = field(default_factory=list)  # likeliest first


def score(net, tokens: list[int], *, top: int = 0, chunk: int = PREFILL_STEP,
          stream: mx.Stream | None = None) -> list[TokenScore]:
    """The scores of ``tokens`` under ``net`` (its KV cache made here, full precision)."""
    return [s for part in scoring(net, tokens, top=top, chunk=chunk, stream=stream)
            for s in part]


def scoring(net, tokens: list[int], *, top: int = 0, chunk: int = PREFILL_STEP,
            stream: mx.Stream | None = None) -> Iterator[list[TokenScore]]:
    """:func:`score` a chunk at a time: the first token's (no score) first, then each
    chunk's, computed when asked for."""
    cache = make_cache(net, KVSpec())
    prompt = mx.array(tokens)
    yield [TokenScore(tokens[0], None)]
    done = 0
    while done < len(tokens) - 1:
        n = min(chunk, len(tokens) - 1 - done)
        with seam.on(stream):
            logits = net(prompt[None, done:done + n], cache=cache)[0].astype(mx.float32)
            logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            chosen = mx.take_along_axis(logp, prompt[done + 1:done + 1 + n, None], axis=-1)
            if top:  # the top N unordered, then ordered among themselves
                best = mx.argpartition(-logp, kth=top - 1, axis=-1)[:, :top]
                values = mx.take_along_axis(logp, best, axis=-1)
                order = mx.argsort(-values, axis=-1)
                best = mx.take_along_axis(best, order, axis=-1)
                values = mx.take_along_axis(values, order, axis=-1)
        mx.eval(chosen, *([best, values] if top else []))
        rows = chosen[:, 0].tolist()
        alternatives = list(zip(best.tolist(), values.tolist())) if top else [([], [])] * n
        part = [TokenScore(tokens[done + 1 + i], rows[i],
                           list(zip(*alternatives[i])) if top else []) for i in range(n)]
        del logits, logp
        mx.clear_cache()
        done += n
        yield part
