"""Quantized KV caches: 8-bit halves and 4-bit quarters the memory a long context costs.

At bfloat16 the Qwen3-4B cache is 147,456 bytes per token (37.7 GB at 256k). mlx-lm's
``QuantizedKVCache`` and its quantized attention do the work; what we add is
``--kv-start N``: the first N tokens (system prompt, document head, the positions attention
sinks into) stay at full precision for good and only later tokens are quantized. mlx-lm's
own ``quantized_kv_start`` instead quantizes everything once the cache passes N tokens.
The caches themselves, and their batched forms, are in :mod:`.quantized_batch` and
:mod:`.prefix_kv`; this module chooses among them and maps them to what mlx-lm saves.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_lm.models.cache import CacheList, QuantizedKVCache, make_prompt_cache

from ..errors import QwenMlxError
from .prefix_kv import PrefixQuantizedKVCache
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
