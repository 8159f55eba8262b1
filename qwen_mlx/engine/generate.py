"""The generation core that chat, generate, serve and bench all run.

Two layers, both plain generators:

* :func:`generate_tokens` turns prompt ids into new ids: chunked prefill, then a decode loop
  that queues step n+1 on the device before handing token n to the caller (the caller's
  detokenizing and printing overlaps the model's compute, as in mlx-lm's generate_step).
* :func:`stream` turns ids into text pieces: streaming detokenization that never splits a
  UTF-8 character, eos and stop-string handling, and the statistics of the run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import mlx.core as mx

from . import mlx_lm_seam as seam
from .prompt_cache import PromptCache
from .sampling import Sampler

PrefillProgress = Callable[[int, int], None]  # (tokens done, tokens total)
ChunkPolicy = Callable[[int], int]  # cache depth -> rows to prefill in the next chunk
PREFILL_STEP = 512


def generate_tokens(model, tokens: list[int], cache: list, sampler: Sampler, *,
                    max_tokens: int, prefill_step: int = PREFILL_STEP,
                    chunk_at: ChunkPolicy | None = None,
                    on_prefill: PrefillProgress | None = None) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids after ``tokens`` (which the cache lacks).

    The prompt is prefilled ``prefill_step`` rows at a time, or as ``chunk_at(depth)`` says
    (the memory plan shrinks chunks deep in a long context, where attention scores grow).
    Each yielded token has been fed to the cache unless it is the last one allowed. On
    Metal the steps run on mlx-lm's generation stream with the model's memory wired.
    """
    with seam.generation_context(model) as stream:
        prompt = mx.array(tokens)
        total, done = len(tokens), 0
        while total - done > 1:  # all but the last prompt token: only the cache is wanted
            step = chunk_at(cache[0].offset) if chunk_at else prefill_step
            n = min(step, total - done - 1)
            with seam.on(stream):
                model(prompt[None, done:done + n], cache=cache)
            mx.eval([c.state for c in cache])
            done += n
            if on_prefill:
                on_prefill(done, total)

        def step(inputs: mx.array) -> mx.array:
            with seam.on(stream):
                logits = model(inputs[None], cache=cache)[:, -1, :]
                return sampler(logits)

        y = step(prompt[done:])
        mx.async_eval(y)
        for n in range(1, max_tokens + 1):
            if n < max_tokens:
                next_y = step(y)
                mx.async_eval(next_y)
            yield y.item()
            if n % 256 == 0:
                mx.clear_cache()
            if n < max_tokens:
                y = next_y


@dataclass
class Stats:
    """What one generation cost. Times in seconds, memory in bytes."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens computed now (the rest came from the cache)
    cached_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token: float = 0.0
    decode_seconds: float = 0.0
    peak_memory: int = 0
    finish_reason: str = ""  # "stop" (eos or a stop string) or "length"

    @property
    def prompt_tps(self) -> float:
        return self.prefill_tokens / self.time_to_first_token if self.time_to_first_token else 0.0

    @property
    def generation_tps(self) -> float:
        """Decode speed: tokens after the first over the time after the first."""
        steps = self.generated_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds else 0.0

    def summary(self) -> str:
        """One line for people: what was computed, how fast, and why it stopped."""
        return (f"{self.prompt_tokens} prompt tokens ({self.prefill_tokens} prefilled, "
                f"{self.cached_tokens} cached) at {self.prompt_tps:.1f} tok/s, "
                f"{self.generated_tokens} generated at {self.generation_tps:.1f} tok/s, first "
                f"token {self.time_to_first_token * 1000:.0f} ms, peak memory "
                f"{self.peak_memory / 1e9:.2f} GB ({self.finish_reason})")

    def to_dict(self) -> dict:
        return {**asdict(self), "prompt_tps": round(self.prompt_tps, 3),
                "generation_tps": round(self.generation_tps, 3)}


@dataclass
class Piece:
    """A streamed piece of the reply: its text, the token ids it came from, and, on the last
    piece only, the statistics of the whole generation. A piece with a ``notice`` (and no
    text) is something to tell the user, in order with the reply (a chat that dropped its
    oldest exchange to make room, say)."""

    text: str
    tokens: list[int] = field(default_factory=list)
    stats: Stats | None = None
    notice: str | None = None


class StopStrings:
    """Cut the text at the first stop string, holding back a tail that might begin one."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[:min(hits)], True
        hold = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])),
                   default=0)
        self.pending = buf[len(buf) - hold:]
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


def stream(model, tokenizer, prompt: list[int], sampler: Sampler, *, max_tokens: int,
           cache: PromptCache | None = None, eos_ids: Iterable[int] = (),
           stop: Iterable[str] = (), prefill_step: int = PREFILL_STEP,
           chunk_at: ChunkPolicy | None = None,
           on_prefill: PrefillProgress | None = None) -> Iterator[Piece]:
    """Generate a reply to ``prompt`` (token ids) as text pieces; the last carries the stats.

    With a ``cache`` that already holds part of the prompt, only the rest is computed; on
    return the cache holds prompt and reply (``cache.tokens`` says exactly what).
    """
    if not prompt:
        raise ValueError("empty prompt")
    cache = cache if cache is not None else PromptCache(model)
    todo = cache.reuse(prompt)
    stats = Stats(prompt_tokens=len(prompt), prefill_tokens=len(todo),
                  cached_tokens=len(prompt) - len(todo), finish_reason="length")
    eos = set(eos_ids)
    stops = StopStrings(stop)
    detok = seam.detokenizer(tokenizer)
    generated: list[int] = []
    start = time.perf_counter()
    first = start
    try:
        for token in generate_tokens(model, todo, cache.layers, sampler, max_tokens=max_tokens,
                                     prefill_step=prefill_step, chunk_at=chunk_at,
                                     on_prefill=on_prefill):
            if not generated:
                first = time.perf_counter()
                stats.time_to_first_token = first - start
            generated.append(token)
            if token in eos:
                stats.finish_reason = "stop"
                break
            detok.add_token(token)
            text, stopped = stops.feed(detok.last_segment)
            if stopped:
                stats.finish_reason = "stop"
                yield Piece(text, [token])
                break
            yield Piece(text, [token])
    finally:
        # What the layers now hold: the prompt plus every generated token fed back so far.
        cache.tokens = (prompt + generated)[:cache.offset]
    tail = ""
    if stats.finish_reason == "length" or (generated and generated[-1] in eos):
        detok.finalize()
        tail, _ = stops.feed(detok.last_segment)
        tail += stops.flush()
    stats.generated_tokens = len(generated)
    stats.decode_seconds = time.perf_counter() - first
    stats.peak_memory = mx.get_peak_memory()
    yield Piece(tail, [], stats)
