"""Will it fit? Weights + KV cache + prefill activations against the machine's budget.

Everything is arithmetic on the config and the weight files, done before a byte is loaded,
so a context that does not fit is refused with a suggestion instead of swapping the Mac to
a halt. The model (one per process) costs:

    weights                 the tensors as they sit in memory (files, cast to compute type)
    + RUNTIME_BYTES         MLX, Python, tokenizer: a measured figure, rounded up
    + activations           one prefill chunk through one layer, plus the logits
    + attention scores      only where attention materialises them (quantized KV, CPU):
                            prefill chunks shrink at depth so that the scores stay below
                            both SCORE_BYTES and the size of the KV cache (so memory grows
                            with the cache, not with cache x chunk)
    + context x KV bytes per token
    + a draft model's weights and its KV per token (speculative decoding: the draft keeps a
      cache as long as the model's), and the logits of every row a step verifies

A server decoding N sequences at once (``serve --parallel N``) prefills up to N newcomers in
one chunk and keeps N caches: activations count N times, and the KV budget (the largest
context) is shared by the N caches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..models.checkpoint import weight_files
from ..models.shapes import Shape, expected_shapes
from .kv_cache import KVSpec
from ..errors import QwenMlxError
from ..system.machine import GIB, Machine, this_machine
from ..models.recipes import Recipe
from ..storage.safetensors import TensorInfo, read_header
from ..system.memory import RUNTIME_BYTES, prefill_activation_bytes, tensor_bytes
from ..system.memory import kv_bytes_per_token as kv_bytes

POOLING_BYTES = 1 << 30  # one embedding or rerank forward's working memory, at most...
POOLING_TOKENS = 8192  # ...and tokens (rows x longest): more in one forward run no faster
POOLING_CACHE_STEP = 256  # mlx-lm's BatchKVCache grows its keys and values by this many
SCORE_BYTES = 512 << 20  # attention scores of one prefill chunk, at most...
MIN_SCORE_BYTES = 16 << 20  # ...and no more than the KV cache they attend over, above this
MIN_CHUNK = 16


def kv_bytes_per_token(shape: Shape, kv: KVSpec, dtype_bytes: int) -> float:
    """Keys and values of every layer for one token, stored as ``kv`` says."""
    return kv_bytes(shape, kv.bytes_per_element(dtype_bytes))


def weight_bytes_of_folder(folder: Path, compute_bytes: int | None) -> int:
    """Bytes the weights of an MLX folder take once loaded (floats cast to compute type)."""
    total = 0
    for f in weight_files(folder):
        tensors, _ = read_header(f)
        total += sum(tensor_bytes(t.dtype, t.shape, compute_bytes) for t in tensors.values())
    return total


def weight_bytes_of_config(config: dict, recipe: Recipe, compute_bytes: int | None) -> int:
    """Bytes the weights will take after converting a checkpoint with this config."""
    from ..models.sizes import converted_tensors

    total = 0
    for name, shape in expected_shapes(config).items():
        for _, dtype, out in converted_tensors(TensorInfo(name, Path(), "BF16", shape), recipe):
            total += tensor_bytes(dtype, out, compute_bytes)
    return total


@dataclass
class MemoryPlan:
    shape: Shape
    weights: int
    machine: Machine
    dtype_bytes: int = 2  # keys, values and activations
    kv: KVSpec = field(default_factory=KVSpec)
    prefill_step: int = 512
    fused_attention: bool = True  # Metal's fused SDPA never materialises the scores
    parallel: int = 1  # sequences decoded (and prefilled) together: serve --parallel
    draft_weights: int = 0  # a draft model's (speculative decoding), loaded beside
    draft_kv_per_token: float = 0.0  # its cache follows the model's, token for token
    verify_rows: int = 1  # logits rows a decode step makes per sequence (speculative: k + 1)

    # -- the parts ------------------------------------------------------------------

    def kv_bytes_per_token(self, kv: KVSpec | None = None) -> float:
        return kv_bytes_per_token(self.shape, kv or self.kv, self.dtype_bytes)

    def head_bytes(self, context: int, kv: KVSpec | None = None) -> int:
        """``--kv-start``: what every sequence's first tokens, kept at full precision, cost
        beyond the quantized bytes :meth:`kv_bytes_per_token` counts for them."""
        kv = kv or self.kv
        if kv.bits is None or not kv.start:
            return 0
        extra = self.kv_bytes_per_token(replace(kv, bits=None)) - self.kv_bytes_per_token(kv)
        return math.ceil(self.parallel * min(kv.start, context) * extra)

    def materialises_scores(self, kv: KVSpec | None = None) -> bool:
        return (kv or self.kv).bits is not None or not self.fused_attention

    def activation_bytes(self) -> int:
        """One prefill chunk through one layer (residual, norms, q/k/v/o, MLP) plus the float32
        logits of the last position, or of every row a speculative step verifies."""
        return self.parallel * (prefill_activation_bytes(self.shape, self.prefill_step,
                                                         self.dtype_bytes)
                                + (self.verify_rows - 1) * self.shape.vocab * 4)

    def score_bytes(self, context: int, kv: KVSpec | None = None) -> int:
        if not self.materialises_scores(kv):
            return 0
        return min(self.shape.heads * self.prefill_step * context * 4, SCORE_BYTES)

    def needed(self, context: int, kv: KVSpec | None = None) -> int:
        return math.ceil(self.weights + self.draft_weights + RUNTIME_BYTES
                         + self.activation_bytes() + self.score_bytes(context, kv)
                         + self.head_bytes(context, kv)
                         + context * (self.kv_bytes_per_token(kv) + self.draft_kv_per_token))

    def largest_context(self, kv: KVSpec | None = None) -> int:
        """The most tokens that fit (capped at the model's positions); 0 if nothing fits."""
        room = self.machine.budget_bytes - self.weights - self.draft_weights - RUNTIME_BYTES \
            - self.activation_bytes() - self.head_bytes(self.shape.positions, kv)
        per_token = self.kv_bytes_per_token(kv) + self.draft_kv_per_token
        if room <= 0:
            return 0
        n = room / per_token
        if self.materialises_scores(kv):
            rate = self.shape.heads * self.prefill_step * 4
            n = room / (per_token + rate)
            if rate * n > SCORE_BYTES:  # the chunk cap binds: scores cost SCORE_BYTES flat
                n = (room - SCORE_BYTES) / per_token
        return max(0, min(int(n), self.shape.positions))

    def chunk_at(self, depth: int, cap: int | None = None) -> int:
        """Prefill rows per chunk at this cache depth: the configured step (or ``cap``, a
        caller's smaller step), shrunk when materialised attention scores would pass
        SCORE_BYTES or the KV cache's own size."""
        step = min(self.prefill_step, cap or self.prefill_step)
        if not self.materialises_scores():
            return step
        budget = min(SCORE_BYTES, max(MIN_SCORE_BYTES, int(depth * self.kv_bytes_per_token())))
        rows = budget // (self.shape.heads * 4 * (depth + self.prefill_step))
        return min(step, max(MIN_CHUNK, min(self.prefill_step, rows)))

    def pooling_bytes(self, rows: int, longest: int, rerank: bool = False) -> int:
        """One pooled forward (:mod:`qwen_mlx.engine.embed`) of ``rows`` x ``longest``
        tokens, the weights aside: every layer's keys and values (the batch cache holds all
        of them through the forward, in steps of POOLING_CACHE_STEP positions), a layer's
        activations over every token and half again (the lazy graph keeps part of the next
        layer's alive: 1.4x measured on the small shape), the attention scores where they
        are materialised (float32), and for rerank the last positions' float32 logits."""
        held = rows * -(-longest // POOLING_CACHE_STEP) * POOLING_CACHE_STEP
        kv = held * self.kv_bytes_per_token(replace(self.kv, bits=None))
        layer = prefill_activation_bytes(self.shape, rows * longest, self.dtype_bytes) - \
            self.shape.vocab * 4
        scores = 0 if self.fused_attention else rows * self.shape.heads * longest * longest * 4
        logits = rows * self.shape.vocab * 4 if rerank else 0
        return math.ceil(kv + 1.5 * layer + scores + logits)

    def pooling_rows(self, longest: int, rerank: bool = False) -> int:
        """Rows of ``longest`` tokens one pooled forward takes: within POOLING_BYTES and
        POOLING_TOKENS, and at least one (a long input runs alone)."""
        fit = POOLING_BYTES // max(1, self.pooling_bytes(1, longest, rerank))
        return max(1, min(fit, POOLING_TOKENS // longest))

    # -- decisions ------------------------------------------------------------------

    def alternatives(self) -> dict[str, int]:
        """Largest context for full-precision, 8-bit and 4-bit KV (same group size/start)."""
        return {spec.label: self.largest_context(spec) for spec in (
            replace(self.kv, bits=None), replace(self.kv, bits=8), replace(self.kv, bits=4))}

    def check(self, context: int, force: bool = False) -> None:
        """Refuse a context that does not fit, saying what would."""
        if force or self.needed(context) <= self.machine.budget_bytes:
            return
        drafted = f" (with the draft's {self.draft_weights / GIB:.1f} GiB of weights and " \
                  f"{self.draft_kv_per_token:,.0f} bytes of KV per token)" \
            if self.draft_weights else ""
        head = f"{context:,} tokens of context need {self.needed(context) / GIB:.1f} GiB" \
               f"{drafted}; the budget is {self.machine.budget_bytes / GIB:.1f} GiB " \
               f"({self.machine.budget_source})"
        largest = self.largest_context()
        if not largest:
            raise QwenMlxError(f"{head}: the weights alone do not fit; use a smaller recipe "
                               f"(--recipe q4) or --force")
        hints = [f"--kv-bits {bits}" for bits in (8, 4) if bits < (self.kv.bits or 16)
                 and self.largest_context(replace(self.kv, bits=bits)) >= context]
        raise QwenMlxError(f"{head}: try "
                           f"{' or '.join(hints[:1] + [f'--context {context_option(largest)}'])}"
                           f" (or --force)")

    def table(self, context: int | None = None) -> list[tuple[str, str]]:
        """(what, amount) rows for people."""
        rows = [("machine", f"{self.machine.chip}, {self.machine.memory_bytes / GIB:.1f} GiB"),
                ("budget", f"{self.machine.budget_bytes / GIB:.2f} GiB "
                           f"({self.machine.budget_source})"),
                ("weights", f"{self.weights / GIB:.2f} GiB"),
                ("runtime + activations", f"{(RUNTIME_BYTES + self.activation_bytes()) / GIB:.2f}"
                                          f" GiB (prefill step {self.prefill_step})"),
                ("KV per token", f"{self.kv_bytes_per_token():,.0f} bytes ({self.kv.label})")]
        if self.draft_weights:
            rows.append(("draft model", f"{self.draft_weights / GIB:.2f} GiB, "
                                        f"{self.draft_kv_per_token:,.0f} bytes of KV per token"))
        if context:
            fits = self.needed(context) <= self.machine.budget_bytes
            rows.append((f"at {context:,} tokens", f"{self.needed(context) / GIB:.2f} GiB "
                         f"needed: {'fits' if fits else 'does NOT fit'}"))
        for label, n in self.alternatives().items():
            rows.append((f"largest context, {label} KV", f"{n:,} tokens"))
        if self.parallel > 1:
            total = self.largest_context()
            rows.append((f"serve --parallel {self.parallel}",
                         f"{total:,} KV tokens shared by {self.parallel} caches: "
                         f"{total // self.parallel:,} each when all are full"))
        return rows


def plan_for(config: dict, *, weights: int, compute_bytes: int | None, kv: KVSpec,
             prefill_step: int, memory: str | int | None = None,
             parallel: int = 1, draft: "MemoryPlan | None" = None) -> MemoryPlan:
    """The plan on this machine (or for ``memory`` bytes of RAM) for a model with this
    config (overrides applied) whose weights take ``weights`` bytes once loaded, beside a
    ``draft`` model (its own plan: its weights and KV per token are counted, and the logits
    of a step verifying up to MAX_DRAFT_TOKENS proposals and one more)."""
    import mlx.core as mx

    from .request import MAX_DRAFT_TOKENS

    return MemoryPlan(Shape.of(config), weights, this_machine(memory),
                      dtype_bytes=compute_bytes or 2, kv=kv, prefill_step=prefill_step,
                      fused_attention=mx.default_device().type == mx.DeviceType.gpu,
                      parallel=parallel, draft_weights=draft.weights if draft else 0,
                      draft_kv_per_token=draft.kv_bytes_per_token() if draft else 0.0,
                      verify_rows=MAX_DRAFT_TOKENS + 1 if draft else 1)


def context_option(tokens: int) -> str:
    """A --context value the parser reads back, rounded down so it still fits: 8500k."""
    return f"{tokens // 1024}k" if tokens >= 1024 else str(tokens)
