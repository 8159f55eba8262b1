"""Measurement behind `qwen-mlx bench`: prefill, decode at depth, memory, and the roofline.

It drives ``Model.token_steps``, the loop under ``Model.stream`` that chat, generate and
serve run, with the model's own KV spec and prefill-chunk policy, so the numbers are the
product's (detokenizing aside).
Prompts are random token ids (no tokenizer in the loop) and sampling is greedy, as in
``mlx_lm.benchmark`` and llama-bench.

* prefill at N: an empty cache, N prompt tokens, timed to the first sampled token (which is
  also the time to first token).
* decode at depth D: D + 1 prompt tokens (untimed), then ``gen_tokens`` tokens; the rate
  counts from the first new token to the last, so prefill never leaks into it. llama-bench's
  tg128 is decode at depth 0 with 128 tokens.
* memory: MLX's peak over the model's runs, split into weights (parameter bytes), KV cache
  (the largest cache built) and the rest (activations, attention scores, buffers).
* roofline: decoding a token reads every weight once (a tied embedding too, as the output
  head) plus the KV cache so far, so memory bandwidth / bytes-per-token is a ceiling.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn

from ..engine import KVSpec
from ..errors import QwenMlxError
from ..models.loader import dtype_of, param_bytes
from ..engine.memory_plan import kv_bytes_per_token
from ..models.shapes import Shape
from ..model import Model


@dataclass
class Target:
    """One thing to measure: ours is a :class:`~qwen_mlx.model.Model`, run through
    ``Model.token_steps`` (the loop under ``Model.stream``, with the model's own KV spec and
    prefill chunking); mlx-lm's is its own load of the same folder, run through its
    ``generate_step``."""

    name: str
    net: nn.Module
    config: dict
    kv: KVSpec
    load_seconds: float
    context_length: int
    prefill_step: int = 512
    compute_dtype: str = ""
    engine: str = "qwen-mlx"  # or "mlx-lm"
    model: Model | None = None  # ours

    @classmethod
    def from_model(cls, name: str, model: Model, load_seconds: float) -> "Target":
        return cls(name, model.net, model.config, model.kv, load_seconds,
                   model.context_length, model.prefill_step, model.compute_dtype, model=model)

    def steps(self, tokens: list[int], max_tokens: int) -> tuple[Iterator, list]:
        """(generator of new tokens, the cache layers it fills) for this target's engine."""
        if self.engine == "mlx-lm":
            from mlx_lm.generate import generate_step
            from mlx_lm.models.cache import make_prompt_cache

            layers = make_prompt_cache(self.net)
            kv = {"kv_bits": self.kv.bits, "kv_group_size": self.kv.group_size,
                  "quantized_kv_start": self.kv.start} if self.kv.bits else {}
            return generate_step(mx.array(tokens), self.net, max_tokens=max_tokens,
                                 prompt_cache=layers, **kv), layers
        cache = self.model.new_cache()
        return self.model.token_steps(tokens, cache, max_tokens=max_tokens), cache.layers


def weights_read_per_token(net: nn.Module, config: dict) -> int:
    """Weight bytes one decode step reads: all of them except, for an untied embedding, the
    table (only one row of it is looked up). A tied table is read whole, as the output head."""
    weights = param_bytes(net)
    if not config.get("tie_word_embeddings", False):
        weights -= param_bytes(net.model.embed_tokens)
    return weights


def bytes_per_token(weights_read: int, kv_bytes_per_token: float, depth: int) -> float:
    """Bytes one decode step reads at ``depth``: the weights plus the KV cache so far."""
    return weights_read + kv_bytes_per_token * depth


def roofline(bandwidth_gbs: float, bytes_read: float) -> float:
    """The decode tokens/s memory bandwidth allows."""
    return bandwidth_gbs * 1e9 / bytes_read


def random_prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1_000, 100_000) for _ in range(n)]


@dataclass
class Summary:
    mean: float
    std: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: list[float]) -> "Summary":
        return cls(statistics.fmean(samples),
                   statistics.stdev(samples) if len(samples) > 1 else 0.0, samples)


def time_prefill(target: Target, n: int, seed: int) -> tuple[float, int]:
    """Seconds from the call to the first sampled token, and the cache bytes after."""
    start = time.perf_counter()
    steps, layers = target.steps(random_prompt(n, seed), 1)
    for _ in steps:
        pass
    seconds = time.perf_counter() - start
    return seconds, sum(layer.nbytes for layer in layers)


def time_decode(target: Target, depth: int, gen_tokens: int, seed: int) -> tuple[float, int]:
    """Decode tokens/s after ``depth`` cached tokens, and the cache bytes after."""
    steps, layers = target.steps(random_prompt(depth + 1, seed), gen_tokens + 1)
    first = last = 0.0
    for i, _ in enumerate(steps):
        last = time.perf_counter()
        if i == 0:
            first = last
    return gen_tokens / (last - first), sum(layer.nbytes for layer in layers)


def measure(target: Target, *, prompt_lengths: list[int], depths: list[int],
            gen_tokens: int = 128, reps: int = 3, warmup: int = 1,
            bandwidth_gbs: float | None = None,
            on_step: Callable[[str], None] | None = None) -> dict:
    """Every number for one target, as a JSON-ready dict (samples included). ``on_step``
    hears what is being measured (a long run takes minutes on a slow machine)."""
    say = on_step or (lambda text: None)
    longest = max(prompt_lengths + [d + gen_tokens + 1 for d in depths])
    if longest > target.context_length:
        raise QwenMlxError(f"{target.name}: {longest:,} tokens (prompt or depth plus "
                           f"generated) exceed the context limit of {target.context_length:,}")
    mx.synchronize()
    mx.reset_peak_memory()
    kv_peak = 0
    prefill, decode = {}, {}
    for n in prompt_lengths:
        say(f"prefill {n:,} tokens")
        for i in range(warmup):
            time_prefill(target, n, seed=10_000 + i)
        runs = [time_prefill(target, n, seed=i) for i in range(reps)]
        kv_peak = max([kv_peak] + [b for _, b in runs])
        seconds = Summary.of([s for s, _ in runs])
        prefill[n] = {"tokens": n, "seconds": seconds.__dict__,
                      "tokens_per_second": Summary.of([n / s for s in seconds.samples]).__dict__,
                      "time_to_first_token": seconds.mean}
    kv_per_token = kv_bytes_per_token(Shape.of(target.config), target.kv,
                                      getattr(mx, target.compute_dtype).size)
    weights_read = weights_read_per_token(target.net, target.config)
    for depth in depths:
        say(f"decode {gen_tokens} tokens at depth {depth:,}")
        for i in range(warmup):
            time_decode(target, depth, min(gen_tokens, 16), seed=20_000 + i)
        runs = [time_decode(target, depth, gen_tokens, seed=100 + i) for i in range(reps)]
        kv_peak = max([kv_peak] + [b for _, b in runs])
        rates = Summary.of([r for r, _ in runs])
        read = bytes_per_token(weights_read, kv_per_token, depth)
        ceiling = roofline(bandwidth_gbs, read) if bandwidth_gbs else None
        decode[depth] = {"depth": depth, "generated": gen_tokens,
                         "tokens_per_second": rates.__dict__,
                         "bytes_per_token": round(read),
                         "roofline_tokens_per_second": ceiling and round(ceiling, 2),
                         "roofline_percent": ceiling and round(100 * rates.mean / ceiling, 1)}
    peak = mx.get_peak_memory()
    weights = param_bytes(target.net)
    return {"name": target.name, "engine": target.engine,
            "load_seconds": round(target.load_seconds, 3),
            "compute_dtype": target.compute_dtype, "kv": asdict(target.kv),
            "prefill_step": target.prefill_step, "context_length": target.context_length,
            "prefill": list(prefill.values()), "decode": list(decode.values()),
            "memory": {"peak": peak, "weights": weights, "kv_cache": kv_peak,
                       "other": max(peak - weights - kv_peak, 0)}}


def random_target(shape: str, recipe, *, kv: KVSpec, prefill_step: int, seed: int = 0,
                  memory=None) -> Target:
    """The architecture of ``shape`` (qwen3-4b by default) with random weights, quantized
    as ``recipe`` says, built in memory one layer at a time: speed and memory of a model
    before downloading it."""
    from mlx_lm.models import qwen3

    from ..models.loader import compute_dtype
    from ..engine.memory_plan import plan_for
    from ..models.shapes import config_for

    config = config_for(shape)
    start = time.perf_counter()
    mx.random.seed(seed)
    net = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    stored = getattr(mx, recipe.dtype)
    net.set_dtype(stored)
    if recipe.bits is not None:
        nn.quantize(net, group_size=recipe.group_size, bits=recipe.bits,
                    class_predicate=lambda _, m: isinstance(m, (nn.Linear, nn.Embedding))
                    and m.weight.shape[-1] % recipe.group_size == 0)
    cast = compute_dtype("auto")
    if cast is not None:
        net.set_dtype(cast)
    for layer in [net.model.embed_tokens, *net.model.layers, net.model.norm]:
        mx.eval(layer.parameters())  # one layer's float weights at a time, then quantized
    net.eval()
    load_seconds = time.perf_counter() - start
    kv = kv.check(config["head_dim"])
    dtype_bytes = (cast or stored).size
    plan = plan_for(config, weights=param_bytes(net), compute_bytes=dtype_bytes, kv=kv,
                    prefill_step=prefill_step, memory=memory)
    model = Model(net, None, config, Path(f"shape:{shape}"), [], kv=kv, plan=plan,
                  prefill_step=prefill_step)
    return Target.from_model(f"shape:{shape} {recipe.name} random", model, load_seconds)


def measure_bandwidth(megabytes: int = 256, reps: int = 5) -> float:
    """GB/s of a large copy (read + write) on the default device: the best of ``reps``."""
    a = mx.random.uniform(shape=(megabytes * (1 << 20) // 4,))
    mx.eval(a)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        mx.eval(a * 1.0)
        best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best / 1e9


def mlx_lm_target(folder: Path, like: Target) -> Target:
    """mlx-lm's own load of ``folder``, as its users get it, measured through its own
    generate_step with ``like``'s KV settings."""
    from mlx_lm import load as mlx_lm_load

    start = time.perf_counter()
    net, _ = mlx_lm_load(str(folder))
    mx.eval(net.parameters())
    return Target(f"mlx-lm {like.name}", net, like.config, like.kv,
                  time.perf_counter() - start, like.context_length, 2048, dtype_of(net),
                  engine="mlx-lm")


def ratios(ours: dict, theirs: dict) -> dict:
    """ours/theirs for prefill and decode tokens/s (above 1: we are faster) and for peak
    memory (below 1: we use less)."""
    def rate(entry: dict) -> float:
        return entry["tokens_per_second"]["mean"]

    return {"name": ours["name"],
            "prefill": {p["tokens"]: round(rate(p) / rate(q), 3)
                        for p, q in zip(ours["prefill"], theirs["prefill"])},
            "decode": {d["depth"]: round(rate(d) / rate(e), 3)
                       for d, e in zip(ours["decode"], theirs["decode"])},
            "peak_memory": round(ours["memory"]["peak"] / theirs["memory"]["peak"], 3)}
