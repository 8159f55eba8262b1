"""Measurement behind `qwen-mlx bench --embed`: embedding throughput, batched against one
input at a time, and peak memory against the memory plan's estimate.

It drives ``Model.pooling``, what ``Model.embed``, `qwen-mlx embed` and the server's
/v1/embeddings and /api/embed run (the batches the memory plan sizes), on rows of random
token ids of exact lengths (no tokenizer in the loop, so random-weight shapes work too).

* batched: all of a set's inputs in one call, as a client sends a list;
* one at a time: the same inputs, one call each, as a client looping over texts does;
* the two alternate within each repetition (which goes first alternates too); the figures
  are medians of tokens/s over the repetitions, after a warm-up of each;
* memory: MLX's peak during a batched run against the plan's estimate, the weights plus the
  largest chunk's ``MemoryPlan.pooling_bytes``.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable

import mlx.core as mx

from ..model import Model
from ..models.loader import param_bytes

def parse_sets(text: str) -> list[tuple[int, int]]:
    """'256x128,16x4096' -> [(256, 128), (16, 4096)]; ValueError names the bad part."""
    sets = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        count, _, tokens = part.lower().partition("x")
        if not (count.isdigit() and tokens.isdigit()) or int(count) < 1 or int(tokens) < 1:
            raise ValueError(f"{part!r} is not INPUTSxTOKENS (as in 256x128)")
        sets.append((int(count), int(tokens)))
    if not sets:
        raise ValueError("no INPUTSxTOKENS given")
    return sets


def random_rows(count: int, tokens: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1_000, 100_000) for _ in range(tokens)] for _ in range(count)]


def run(model: Model, rows: list[list[int]]) -> None:
    for _ in model.pooling(rows):
        pass


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_set(model: Model, count: int, tokens: int, reps: int, warmup: int,
                say: Callable[[str], None]) -> dict:
    """One set's figures (samples included)."""
    rows = random_rows(count, tokens, seed=count * 100_003 + tokens)
    total = count * tokens
    ways = {"batched": lambda: run(model, rows),
            "one_at_a_time": lambda: [run(model, [row]) for row in rows]}
    for _ in range(warmup):
        run(model, rows[:2])
        run(model, rows[:1])
    samples: dict[str, list[float]] = {way: [] for way in ways}
    peak = 0
    for rep in range(reps):
        for way in (list(ways) if rep % 2 == 0 else list(ways)[::-1]):
            say(f"{count} x {tokens} tokens, {way.replace('_', ' ')} ({rep + 1}/{reps})")
            mx.synchronize()
            mx.clear_cache()
            mx.reset_peak_memory()
            samples[way].append(total / timed(ways[way]))
            if way == "batched":
                peak = max(peak, mx.get_peak_memory())
    rates = {way: statistics.median(s) for way, s in samples.items()}
    per_forward = estimate = None
    if model.plan is not None:
        per_forward = model.plan.pooling_rows(tokens)
        estimate = param_bytes(model.net) + model.plan.pooling_bytes(min(count, per_forward),
                                                                     tokens)
    return {"inputs": count, "tokens": tokens, "rows_per_forward": per_forward,
            "tokens_per_second": rates, "samples": samples,
            "batched_over_one_at_a_time": rates["batched"] / rates["one_at_a_time"],
            "memory": {"peak": peak, "estimate": estimate,
                       "peak_over_estimate": peak / estimate if estimate else None}}


def measure_embedding(model: Model, sets, *, reps: int = 3, warmup: int = 1,
                      on_step: Callable[[str], None] | None = None) -> dict:
    """Every set's figures for one model, as a JSON-ready dict."""
    say = on_step or (lambda text: None)
    return {"name": model.path.name, "sets": [measure_set(model, count, tokens, reps, warmup,
                                                          say) for count, tokens in sets]}
