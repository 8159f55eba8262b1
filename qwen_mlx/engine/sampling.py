"""Sampling settings and the sampler built from them.

Defaults come from the model's generation_config.json (Qwen3-4B-Instruct-2507: temperature 0.7,
top_p 0.8, top_k 20); a caller overrides single fields. Greedy decoding takes the argmax of
the raw logits (a log-softmax would only shift them all by one amount).

A seeded sampler draws from its own key, not MLX's global generator: sequences decoded side
by side in one batch each keep their seed, and a seeded request gives the same text alone or
batched. Penalties on repeated tokens are mlx-lm's logits processors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import mlx.core as mx
from mlx_lm.sample_utils import make_logits_processors

from ..errors import QwenMlxError

Sampler = Callable[[mx.array], mx.array]  # logits (1, vocab) -> token (1,)
Processor = Callable[[mx.array, mx.array], mx.array]  # (recent tokens, logits) -> logits
PENALTY_WINDOW = 64  # recent tokens the penalties look at (mlx-lm's default is 20)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 2048
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from a logit seen recently
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per recent occurrence
    repetition_penalty: float = 1.0  # Ollama's repeat_penalty: logits divided (1 is off)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise QwenMlxError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise QwenMlxError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise QwenMlxError("top_k must be >= 0 (0 turns it off)")
        if not 0 <= self.min_p < 1:
            raise QwenMlxError("min_p must be in [0, 1)")
        if self.max_tokens < 1:
            raise QwenMlxError("max_tokens must be >= 1")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise QwenMlxError("seed must be a whole number from 0 to 2^64-1")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise QwenMlxError(f"{name} must be in [-2, 2]")
        if not 0 < self.repetition_penalty <= 10:
            raise QwenMlxError("repetition_penalty must be in (0, 10]")

    def override(self, **values) -> "SamplingParams":
        """A copy with every value that is not None replaced."""
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown sampling settings: {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_generation_config(cls, cfg: dict) -> "SamplingParams":
        """The model's own recommended settings (generation_config.json, as read by
        :class:`~qwen_mlx.models.spec.ModelSpec`); our defaults where it has none."""
        if cfg.get("do_sample") is False:
            return cls(temperature=0.0)
        return cls().override(**{k: cfg.get(k) for k in ("temperature", "top_p", "top_k", "min_p")})


def make_processors(params: SamplingParams) -> list[Processor]:
    """The penalties that are on, as mlx-lm logits processors over the last
    PENALTY_WINDOW tokens (prompt included, as in mlx-lm and llama.cpp)."""
    return make_logits_processors(
        repetition_penalty=None if params.repetition_penalty == 1 else params.repetition_penalty,
        repetition_context_size=PENALTY_WINDOW,
        presence_penalty=params.presence_penalty or None, presence_context_size=PENALTY_WINDOW,
        frequency_penalty=params.frequency_penalty or None,
        frequency_context_size=PENALTY_WINDOW)


def greedy(logits: mx.array) -> mx.array:
    return mx.argmax(logits, axis=-1)


def _narrower(params: SamplingParams):
    """Temperature, then top-k, then top-p and min-p over what is left: logits -> (the
    survivors' scaled logits, -inf where dropped; their ids, or None for all of them)."""
    inv_temp, k, top_p, min_p = 1.0 / params.temperature, params.top_k, params.top_p, params.min_p

    def narrow(logits: mx.array) -> tuple[mx.array, mx.array | None]:
        logits = logits.astype(mx.float32) * inv_temp
        ids = None
        if 0 < k < logits.shape[-1]:
            ids = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k]
            logits = mx.take_along_axis(logits, ids, axis=-1)
        if top_p < 1.0 or min_p > 0.0:
            order = mx.argsort(-logits, axis=-1)
            logits = mx.take_along_axis(logits, order, axis=-1)
            ids = order if ids is None else mx.take_along_axis(ids, order, axis=-1)
            probs = mx.softmax(logits, axis=-1)
            keep = mx.ones_like(logits, dtype=mx.bool_)
            if top_p < 1.0:  # the smallest prefix whose mass reaches top_p
                keep = keep & ((mx.cumsum(probs, axis=-1) - probs) < top_p)
            if min_p > 0.0:
                keep = keep & (probs >= min_p * probs[..., :1])
            logits = mx.where(keep, logits, -mx.inf)
        return logits, ids

    return narrow


def make_sampler(params: SamplingParams) -> Sampler:
    """Temperature, then top-k, then top-p and min-p over what is left, then a draw.

    This is the order of Hugging Face's and vLLM's samplers, the ones Qwen's recommended
    settings were chosen with: top-p and min-p are judged on the temperature-scaled
    distribution renormalized over the top-k survivors. (mlx-lm applies top-p to the
    unscaled full distribution and sorts all 151,936 logits per token to do it; taking the
    top k first leaves 20 values to sort.)
    """
    if params.greedy:
        return greedy
    narrow = _narrower(params)
    key = None if params.seed is None else mx.random.key(params.seed)

    def draw(logits: mx.array) -> mx.array:
        nonlocal key
        if key is None:
            return mx.random.categorical(logits, axis=-1)
        key, now = mx.random.split(key)
        return mx.random.categorical(logits, axis=-1, key=now)

    def sample(logits: mx.array) -> mx.array:
        logits, ids = narrow(logits)
        choice = draw(logits)
        if ids is None:
            return choice
        return mx.take_along_axis(ids, choice[..., None], axis=-1).squeeze(-1)

    return sample


def make_distribution(params: SamplingParams) -> Callable[[mx.array], mx.array]:
    """The distribution :func:`make_sampler` draws from, over the whole vocabulary: logits
    (rows, vocab) -> probabilities (rows, vocab), zero where top-k, top-p or min-p dropped a
    token (speculative sampling compares it with the draft's). Not for greedy decoding."""
    narrow = _narrower(params)

    def distribution(logits: mx.array) -> mx.array:
        kept, ids = narrow(logits)
        probs = mx.softmax(kept, axis=-1)
        if ids is None:
            return probs
        full = mx.zeros(logits.shape, dtype=mx.float32)
        return mx.put_along_axis(full, ids, probs, axis=-1)

    return distribution


def top_logprobs(rows: mx.array, tokens: list[int], k: int) -> list[dict]:
    """Per row (normalised log-probabilities) and the token it made: that token's
    log-probability and the ``k`` likeliest alternatives, most likely first, as
    :class:`~qwen_mlx.engine.generate.Piece` fields; computed at once, read back in one
    transfer. The batch and speculative decoding both report these."""
    chosen = mx.take_along_axis(rows, mx.array(tokens)[:, None], axis=-1)[:, 0]
    if not k:
        return [{"logprob": c, "top_logprobs": []} for c in chosen.tolist()]
    ids = mx.argpartition(-rows, kth=k - 1, axis=-1)[:, :k]
    values = mx.take_along_axis(rows, ids, axis=-1)
    order = mx.argsort(-values, axis=-1)
    ids = mx.take_along_axis(ids, order, axis=-1)
    values = mx.take_along_axis(values, order, axis=-1)
    chosen, ids, values = (x.tolist() for x in (chosen, ids, values))
    return [{"logprob": c, "top_logprobs": list(zip(i, v))}
            for c, i, v in zip(chosen, ids, values)]
