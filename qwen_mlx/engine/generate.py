"""The generation core that chat, generate, serve and bench all run.

Two layers, both plain generators:

* :func:`generate_tokens` turns prompt ids into new ids: chunked prefill, then a decode loop
  that queues step n+1 on the device before handing token n to the caller (the caller's
  detokenizing and printing overlaps the model's compute, as in mlx-lm's generate_step).
* :func:`stream` turns ids into text pieces through a :class:`Reply`: streaming
  detokenization that never splits a UTF-8 character, eos and stop-string handling, and the
  statistics of the run. The server's batch (:mod:`qwen_mlx.engine.batch`) keeps one
  :class:`Reply` per sequence, so batched and lone replies are cut and counted alike.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import mlx.core as mx

from ..models import mlx_lm_seam as seam
from .prompt_cache import PromptCache
from .sampling import Processor, Sampler
from .sampling import top_logprobs as logprob_fields

PrefillProgress = Callable[[int, int], None]  # (tokens done, tokens total)
ChunkPolicy = Callable[[int], int]  # cache depth -> rows to prefill in the next chunk
PREFILL_STEP = 512


def generate_tokens(model, tokens: list[int], cache: list, sampler: Sampler, *,
                    max_tokens: int, prefill_step: int = PREFILL_STEP,
                    chunk_at: ChunkPolicy | None = None,
                    on_prefill: PrefillProgress | None = None,
                    processors: list[Processor] = (), history: list[int] = (),
                    scores: deque | None = None, top: int = 0) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids after ``tokens`` (which the cache lacks).

    ``processors`` (penalties) see the recent tokens: ``history`` (what the cache already
    holds), then ``tokens``, then each new token. With ``scores``, each token's
    log-probability and its ``top`` likeliest alternatives (as the batch reports them: the
    processed logits, normalised) are appended there before the token is yielded.
    The prompt is prefilled ``prefill_step`` rows at a time, or as ``chunk_at(depth)`` says
    (the memory plan shrinks chunks deep in a long context, where attention scores grow).
    Each yielded token has been fed to the cache unless it is the last one allowed. On
    Metal the steps run on mlx-lm's generation stream with the model's memory wired.
    """
    with seam.generation_context(model) as stream:
        prompt = mx.array(tokens)
        done = prefill(model, tokens, cache, stream, prefill_step=prefill_step,
                       chunk_at=chunk_at, on_prefill=on_prefill)

        recent = mx.array(list(history) + list(tokens), dtype=mx.uint32) if processors else None

        def step(inputs: mx.array, new: bool = True) -> tuple[mx.array, mx.array | None]:
            nonlocal recent
            with seam.on(stream):
                logits = model(inputs[None], cache=cache)[:, -1, :]
                if processors:
                    if new:  # a decode step: the token just made joins the recent ones
                        recent = mx.concatenate([recent, inputs])[-1024:]
                    for process in processors:
                        logits = process(recent, logits)
                if scores is None:
                    return sampler(logits), None
                rows = logits.astype(mx.float32)
                return sampler(logits), rows - mx.logsumexp(rows, axis=-1, keepdims=True)

        y, rows = step(prompt[done:], new=False)
        mx.async_eval(y)
        for n in range(1, max_tokens + 1):
            if n < max_tokens:
                next_y, next_rows = step(y)
                mx.async_eval(next_y)
            token = y.item()
            if scores is not None:
                scores.append(logprob_fields(rows, [token], top)[0])
            yield token
            if n % 256 == 0:
                mx.clear_cache()
            if n < max_tokens:
                y, rows = next_y, next_rows


def prefill(model, tokens: list[int], cache: list, stream, *, prefill_step: int = PREFILL_STEP,
            chunk_at: ChunkPolicy | None = None,
            on_prefill: PrefillProgress | None = None) -> int:
    """Compute all but the last of ``tokens`` into the cache, in chunks; returns how many."""
    done = 0
    for done in prefill_chunks(model, tokens, cache, stream, prefill_step=prefill_step,
                               chunk_at=chunk_at, on_prefill=on_prefill):
        pass
    return done


def prefill_chunks(model, tokens: list[int], cache: list, stream, *,
                   prefill_step: int = PREFILL_STEP, chunk_at: ChunkPolicy | None = None,
                   on_prefill: PrefillProgress | None = None) -> Iterator[int]:
    """:func:`prefill` a chunk at a time, yielding the tokens done after each (the server
    interleaves a newcomer's chunks with the running sequences' steps)."""
    prompt = mx.array(tokens)
    total, done = len(tokens), 0
    while total - done > 1:  # all but the last prompt token: only the cache is wanted
        step = chunk_at(cache[0].offset) if chunk_at else prefill_step
        n = min(step, total - done - 1)
        with seam.on(stream):
            model(prompt[None, done:done + n], cache=cache)
        mx.eval([c.state for c in cache])
        mx.clear_cache()  # a chunk's activations go back before the next one's
        done += n
        if on_prefill:
            on_prefill(done, total)
        yield done


@dataclass
class Stats:
    """What one generation cost. Times in seconds, memory in bytes."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens computed now (the rest came from the cache)
    cached_tokens: int = 0
    disk_tokens: int = 0  # of the cached tokens, those read from the disk tier
    generated_tokens: int = 0
    time_to_first_token: float = 0.0
    decode_seconds: float = 0.0
    peak_memory: int = 0
    finish_reason: str = ""  # "stop" (eos or a stop string) or "length"
    stop_string: str | None = None  # the stop string that ended it, if one did
    # speculative decoding (0 without): proposals made and kept, the model's decode forwards
    draft_tokens: int = 0
    accepted_tokens: int = 0
    target_forwards: int = 0

    @property
    def prompt_tps(self) -> float:
        return self.prefill_tokens / self.time_to_first_token if self.time_to_first_token else 0.0

    @property
    def generation_tps(self) -> float:
        """Decode speed: tokens after the first over the time after the first."""
        steps = self.generated_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Of the tokens proposed, the share kept (speculative decoding)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Tokens made per forward of the model while decoding (1 without speculation)."""
        return self.generated_tokens / self.target_forwards if self.target_forwards else 1.0

    def summary(self) -> str:
        """One line for people: what was computed, how fast, and why it stopped."""
        speculated = (f", {self.acceptance_rate:.0%} of {self.draft_tokens} proposals kept, "
                      f"{self.tokens_per_forward:.2f} tokens per forward"
                      if self.target_forwards else "")
        cached = f"{self.cached_tokens} cached" + (
            f": {self.cached_tokens - self.disk_tokens} from memory, {self.disk_tokens} from "
            f"disk" if self.disk_tokens else "")
        return (f"{self.prompt_tokens} prompt tokens ({self.prefill_tokens} prefilled, "
                f"{cached}) at {self.prompt_tps:.1f} tok/s, "
                f"{self.generated_tokens} generated at {self.generation_tps:.1f} tok/s, first "
                f"token {self.time_to_first_token * 1000:.0f} ms, peak memory "
                f"{self.peak_memory / 1e9:.2f} GB{speculated} ({self.finish_reason})")

    def to_dict(self) -> dict:
        out = {**asdict(self), "prompt_tps": round(self.prompt_tps, 3),
               "generation_tps": round(self.generation_tps, 3)}
        if self.target_forwards:
            out.update(acceptance_rate=round(self.acceptance_rate, 4),
                       tokens_per_forward=round(self.tokens_per_forward, 4))
        return out


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
    logprob: float | None = None  # of the token, when the request asked (serve's batch)
    top_logprobs: list[tuple[int, float]] | None = None  # the likeliest alternatives


class StopStrings:
    """Cut the text where the first stop string is complete, holding back a tail that might
    begin one: mlx-lm's TextStateMachine (one pass over each new piece, however many stop
    strings), every stop string a transition to the end. Streaming decides as text
    arrives, so the stop string that is complete first wins (``b`` in ``abc``, against
    ``abc`` and ``b``)."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = sorted({s for s in stops if s}, key=len, reverse=True)
        self.machine = seam.text_machine({"normal": [(s, None) for s in self.stops]}) \
            if self.stops else None
        self.state = self.machine.make_state() if self.machine else None
        # the text fed lately: the longest stop string's worth before the newest piece is
        # enough to name the one that ended it (the whole reply was kept before)
        self.fed, self.longest = "", max(map(len, self.stops), default=0)
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        if self.machine is None:
            return text, False
        self.fed = self.fed[-self.longest:] + text
        self.state, segments = self.machine.split(self.state, text)
        if self.state[0] is None:  # the text after the match is what the state kept
            end = len(self.fed) - len(self.state[3])
            self.matched = next((s for s in self.stops if self.fed[:end].endswith(s)), None)
        return "".join(t for _, t in segments), self.state[0] is None

    def flush(self) -> str:
        if self.machine is None:
            return ""
        self.state, text, _ = self.machine.flush(self.state)
        return text


class Reply:
    """One sequence's new tokens turned into its reply: text pieces, where it stops, stats.

    Feed it every token the model makes (:meth:`add`) until :attr:`done`, then take the last
    piece from :meth:`finish`. The clock starts when the reply is made (the request began).
    """

    def __init__(self, tokenizer, *, prompt_tokens: int, cached_tokens: int,
                 disk_tokens: int = 0, disk_seconds: float = 0.0, eos_ids: Iterable[int] = (),
                 stop: Iterable[str] = ()) -> None:
        self.stats = Stats(prompt_tokens=prompt_tokens, prefill_tokens=prompt_tokens - cached_tokens,
                           cached_tokens=cached_tokens, disk_tokens=disk_tokens,
                           finish_reason="length")
        self.eos = set(eos_ids)
        self.stops = StopStrings(stop)
        self.detok = seam.detokenizer(tokenizer)
        self.generated: list[int] = []
        self.peak: int | None = None  # the batch's per-step peaks (None: the process's)
        self.done = False
        # the clock started when the request did: reading its head from disk counts
        self.start = self.first = time.perf_counter() - disk_seconds

    def add(self, token: int, **extra) -> Piece | None:
        """The piece for one new token (None for an eos, which shows nothing); ``extra``
        goes into the piece (its log-probabilities)."""
        if not self.generated:
            self.first = time.perf_counter()
            self.stats.time_to_first_token = self.first - self.start
        self.generated.append(token)
        if token in self.eos:
            self.stats.finish_reason, self.done = "stop", True
            return None
        self.detok.add_token(token)
        text, stopped = self.stops.feed(self.detok.last_segment)
        if stopped:
            self.stats.finish_reason, self.done = "stop", True
            self.stats.stop_string = self.stops.matched
        return Piece(text, [token], **extra)

    def finish(self, reason: str | None = None) -> Piece:
        """The last piece: text held back (unless a stop string cut it) and the stats.
        ``reason`` overrides why it ended (a time limit ends it as "length")."""
        if reason is not None:
            self.stats.finish_reason = reason
        tail = ""
        if self.stats.finish_reason == "length" or (self.generated and
                                                    self.generated[-1] in self.eos):
            self.detok.finalize()
            tail, _ = self.stops.feed(self.detok.last_segment)
            tail += self.stops.flush()
        self.stats.generated_tokens = len(self.generated)
        self.stats.decode_seconds = time.perf_counter() - self.first
        self.stats.peak_memory = mx.get_peak_memory() if self.peak is None else self.peak
        return Piece(tail, [], self.stats)


def stream(model, tokenizer, prompt: list[int], sampler: Sampler, *, max_tokens: int,
           cache: PromptCache | None = None, eos_ids: Iterable[int] = (),
           stop: Iterable[str] = (), prefill_step: int = PREFILL_STEP,
           chunk_at: ChunkPolicy | None = None,
           on_prefill: PrefillProgress | None = None,
           processors: list[Processor] = (),
           cut: Callable[[], bool] | None = None,
           speculation=None, params=None,
           top_logprobs: int | None = None) -> Iterator[Piece]:
    """Generate a reply to ``prompt`` (token ids) as text pieces; the last carries the stats.

    With a ``cache`` that already holds part of the prompt, only the rest is computed; on
    return the cache holds prompt and reply (``cache.tokens`` says exactly what). ``cut``,
    asked after each token, ends the reply early as "length" (a server's time limit). With
    a ``speculation`` (:mod:`qwen_mlx.engine.speculative`; ``params``: the sampling settings
    it keeps exactly), proposals are checked several at a time. ``top_logprobs`` (plain
    decoding; a speculation carries its own): each piece's log-probability and that many
    alternatives.
    """
    if not prompt:
        raise ValueError("empty prompt")
    cache = cache if cache is not None else PromptCache(model)
    todo = cache.reuse(prompt)
    mx.reset_peak_memory()  # the stats report this reply's own peak
    reply = Reply(tokenizer, prompt_tokens=len(prompt), cached_tokens=len(prompt) - len(todo),
                  disk_tokens=cache.disk_hit, disk_seconds=cache.disk_seconds,
                  eos_ids=eos_ids, stop=stop)
    history = prompt[:len(prompt) - len(todo)]
    if speculation is None:
        scored = None if top_logprobs is None else deque()
        tokens = generate_tokens(model, todo, cache.layers, sampler, max_tokens=max_tokens,
                                 prefill_step=prefill_step, chunk_at=chunk_at,
                                 on_prefill=on_prefill, processors=processors, history=history,
                                 scores=scored, top=top_logprobs or 0)
    else:
        from .speculative import speculative_tokens

        tokens = speculative_tokens(
            model, todo, cache.layers, params, speculation, max_tokens=max_tokens,
            prefill=lambda s: prefill(model, todo, cache.layers, s, prefill_step=prefill_step,
                                      chunk_at=chunk_at, on_prefill=on_prefill),
            processors=processors, history=history)
        scored = speculation.scores if speculation.logprobs is not None else None
    try:
        for token in tokens:
            piece = reply.add(token, **(scored.popleft() if scored is not None else {}))
            if piece is not None:
                yield piece
            if reply.done or (cut is not None and cut()):
                break
    finally:
        tokens.close()  # a speculative step's rows are trimmed before the cache is read
        # What the layers now hold: the prompt plus every generated token fed back so far.
        cache.tokens = (prompt + reply.generated)[:cache.offset]
    if speculation is not None:
        counts = speculation.counts
        reply.stats.draft_tokens, reply.stats.accepted_tokens = counts.proposed, counts.accepted
        reply.stats.target_forwards = counts.forwards
    yield reply.finish()
