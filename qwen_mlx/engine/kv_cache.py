"""Quantized KV caches: 8-bit halves and 4-bit quarters the memory a long context costs.

At bfloat16 the Qwen3-4B cache is 147,456 bytes per token (37.7 GB at 256k). mlx-lm's
``QuantizedKVCache`` and its quantized attention do the work; what we add is
``--kv-start N``: the first N tokens (system prompt, document head, the positions attention
sinks into) stay at full precision for good and only later tokens are quantized. mlx-lm's
own ``quantized_kv_start`` instead quantizes everything once the cache passes N tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import CacheList, KVCache, QuantizedKVCache, make_prompt_cache

from ..errors import QwenMlxError
from ..models import mlx_lm_seam as seam
from .quantized_batch import QuantizedCache

KV_BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)  # what mx.quantize supports


@dataclass(frozen=True)
class KVSpec:
    """How the KV cache stores keys and values: ``bits`` None is full precision."""

    bits: int | None = None
    group_size: int = 64
    start: int = 0

    def check(self, head_dim: int) -> "KVSpec":
        if self.bits is None:
            return self
        if self.bits not in KV_BITS:
            raise QwenMlxError(f"--kv-bits must be one of {', '.join(map(str, KV_BITS))}")
        if self.group_size not in GROUP_SIZES or head_dim % self.group_size:
            sizes = [g for g in GROUP_SIZES if head_dim % g == 0]
            raise QwenMlxError(f"--kv-group-size {self.group_size} must divide the head size "
                               f"{head_dim}: use {' or '.join(map(str, sizes)) or 'no kv-bits'}")
        if self.start < 0:
            raise QwenMlxError("--kv-start must be 0 or more")
        return self

    def bytes_per_element(self, dtype_bytes: int) -> float:
        """Storage per cached number: packed bits plus a scale and a bias per group."""
        if self.bits is None:
            return float(dtype_bytes)
        return self.bits / 8 + 2 * dtype_bytes / self.group_size

    @property
    def label(self) -> str:
        return "full precision" if self.bits is None else f"{self.bits}-bit"


def make_cache(model, spec: KVSpec) -> list:
    """One cache per layer, as ``spec`` says."""
    if spec.bits is None:
        return make_prompt_cache(model)
    n = len(model.layers)
    if spec.start == 0:  # able to join the continuous batch
        return [QuantizedCache(spec.group_size, spec.bits) for _ in range(n)]
    return [PrefixQuantizedKVCache(spec.start, spec.group_size, spec.bits) for _ in range(n)]


class PrefixQuantizedKVCache(CacheList):
    """The first ``start`` positions in a full-precision KVCache, the rest quantized.

    A CacheList of (KVCache, QuantizedKVCache), so mlx-lm's save/load_prompt_cache store it
    as one; :func:`restore` turns a loaded CacheList back into this class.
    """

    def __init__(self, start: int, group_size: int, bits: int) -> None:
        super().__init__(KVCache(), QuantizedKVCache(group_size, bits))
        self.start = start
        _route_attention()

    @property
    def head(self) -> KVCache:
        return self.caches[0]

    @property
    def tail(self) -> QuantizedKVCache:
        return self.caches[1]

    @property
    def offset(self) -> int:
        return self.head.offset + self.tail.offset

    @property
    def bits(self) -> int:
        return self.tail.bits

    @property
    def group_size(self) -> int:
        return self.tail.group_size

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        room = max(self.start - self.head.offset, 0) if self.tail.offset == 0 else 0
        if room:
            self.head.update_and_fetch(keys[..., :room, :], values[..., :room, :])
        if keys.shape[2] > room:
            self.tail.update_and_fetch(keys[..., room:, :], values[..., room:, :])
        return self, self  # the attention below reads both parts from the cache itself

    @property
    def nbytes(self) -> int:  # mlx-lm's QuantizedKVCache.nbytes fails while it is empty
        return self.head.nbytes + (self.tail.nbytes if self.tail.keys is not None else 0)

    def trim(self, n: int) -> int:
        done = self.tail.trim(n)
        return done + self.head.trim(n - done)

    def make_mask(self, n: int, return_array: bool = False, window_size=None):
        if n == 1:
            return None
        return create_causal_mask(n, self.offset - n) if return_array else "causal"

    def size(self) -> int:
        return self.offset

    def attend(self, queries: mx.array, scale: float, mask) -> mx.array:
        """Softmax over both parts at once: plain matmuls for the full-precision head,
        quantized ones for the tail (as mlx-lm's quantized attention does them)."""
        B, n_heads, L, D = queries.shape
        split, quant = self.head.offset, dict(group_size=self.group_size, bits=self.bits)
        head = self.head.keys_and_values() if split else None
        tail = [[mx.expand_dims(x, 2) for x in part] for part in self.tail.keys_and_values()] \
            if self.tail.offset else None
        n_kv = head[0].shape[1] if head else tail[0][0].shape[1]
        q = (queries * scale).reshape(B, n_kv, n_heads // n_kv, L, D)  # grouped-query heads
        parts = []
        if head:
            parts.append(q @ mx.expand_dims(head[0], 2).swapaxes(-1, -2))
        if tail:
            parts.append(mx.quantized_matmul(q, *tail[0], transpose=True, **quant))
        scores = mx.concatenate(parts, axis=-1)
        if mask is not None:
            total = scores.shape[-1]
            if isinstance(mask, str):
                mask = mx.arange(total - L, total)[:, None] >= mx.arange(total)[None]
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min) \
                if mask.dtype == mx.bool_ else scores + mask
        weights = mx.softmax(scores, axis=-1, precise=True)
        out = []
        if head:
            out.append(weights[..., :split] @ mx.expand_dims(head[1], 2))
        if tail:
            out.append(mx.quantized_matmul(weights[..., split:], *tail[1], transpose=False,
                                           **quant))
        return sum(out[1:], out[0]).reshape(B, n_heads, L, D)


def savable(layers: list) -> list:
    """Caches mlx-lm's save_prompt_cache can write (and its load_prompt_cache read back):
    it stores each by its class name, so ours are saved as the mlx-lm classes they extend."""
    out = []
    for c in layers:
        if isinstance(c, PrefixQuantizedKVCache):
            c = CacheList(*c.caches)
        elif isinstance(c, QuantizedCache):
            plain = QuantizedKVCache(c.group_size, c.bits)
            plain.keys, plain.values, plain.offset = c.keys, c.values, c.offset
            c = plain
        out.append(c)
    return out


def restore(layers: list, spec: KVSpec) -> list:
    """Caches loaded by mlx-lm -> ours: its CacheLists become prefix caches again."""
    out = []
    for layer in layers:
        if isinstance(layer, CacheList) and spec.bits and spec.start:
            cache = PrefixQuantizedKVCache(spec.start, spec.group_size, spec.bits)
            cache.caches = tuple(layer.caches)
            layer = cache
        elif type(layer) is QuantizedKVCache:
            cache = QuantizedCache(layer.group_size, layer.bits)
            cache.keys, cache.values, cache.offset = layer.keys, layer.values, layer.offset
            layer = cache
        out.append(layer)
    return out


_routed = False


def _route_attention() -> None:
    """mlx-lm's Qwen3 attention calls a module-level function after update_and_fetch; the
    split cache needs its own attention there. Installed once, when the first such cache is
    made (models without one never see the hook)."""
    global _routed
    if not _routed:
        seam.install_attention_hook(lambda c: isinstance(c, PrefixQuantizedKVCache),
                                    lambda c, queries, scale, mask: c.attend(queries, scale,
                                                                             mask))
        _routed = True
