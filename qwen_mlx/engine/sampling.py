"""Sampling settings and the sampler built from them.

Defaults come from the model's generation_config.json (Qwen3-4B-Instruct-2507: temperature 0.7,
top_p 0.8, top_k 20); a caller overrides single fields. The samplers themselves are mlx-lm's;
greedy decoding skips the log-softmax, which only shifts every logit by the same amount.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler as _mlx_lm_sampler

from ..errors import QwenMlxError

Sampler = Callable[[mx.array], mx.array]  # logits (1, vocab) -> token (1,)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 2048

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
    def from_generation_config(cls, folder: Path) -> "SamplingParams":
        """The model's own recommended settings; our defaults where it has none."""
        path = Path(folder) / "generation_config.json"
        try:
            cfg = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            cfg = {}
        if cfg.get("do_sample") is False:
            return cls(temperature=0.0)
        keys = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p"}
        return cls().override(**{ours: cfg.get(theirs) for ours, theirs in keys.items()})


def greedy(logits: mx.array) -> mx.array:
    return mx.argmax(logits, axis=-1)


def make_sampler(params: SamplingParams) -> Sampler:
    if params.greedy:
        return greedy
    chain = _mlx_lm_sampler(temp=params.temperature, top_p=params.top_p,
                            min_p=params.min_p, top_k=params.top_k)

    def sample(logits: mx.array) -> mx.array:
        return chain(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    return sample
