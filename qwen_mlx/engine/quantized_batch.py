"""Quantized KV caches in the continuous batch: `--kv-bits 8|4` with many clients at once.

mlx-lm batches full-precision caches only: its ``BatchKVCache`` merges ``KVCache``s, and its
``QuantizedKVCache`` has no ``merge``, so a quantized server used to serve one request at a
time. :class:`BatchQuantizedKVCache` is mlx-lm's batch cache (left padding, one write index
for every row, the same prepare/finalize/filter/extend/extract/trim) over quantized triples
(packed values, scales, biases), quantized as mlx-lm's ``QuantizedKVCache`` quantizes them:
each new position's vector by itself, so a row holds exactly what the sequence's own cache
would. Attention goes through mlx-lm's quantized attention, which any cache with ``bits``
selects, with the batch's padding mask. :class:`QuantizedCache` is the per-sequence cache
that knows how to join such a batch.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.cache import BatchKVCache, QuantizedKVCache, dynamic_roll


class QuantizedCache(QuantizedKVCache):
    """mlx-lm's QuantizedKVCache, able to join a batch (``merge``)."""

    def merge(self, caches: list) -> "BatchQuantizedKVCache":
        return BatchQuantizedKVCache.merge(caches)


def _grow(shape: tuple, dim: int, dtype, group_size: int, bits: int) -> tuple:
    """Zeroed (packed, scales, biases) for ``shape`` positions of vectors of ``dim``."""
    per_int = 32 // bits
    return (mx.zeros((*shape, dim // per_int), dtype=mx.uint32),
            mx.zeros((*shape, dim // group_size), dtype=dtype),
            mx.zeros((*shape, dim // group_size), dtype=dtype))


def _positions(triple: tuple) -> int:
    return triple[0].shape[2]


class BatchQuantizedKVCache(BatchKVCache):
    """Left-padded rows of quantized keys and values (see the module's text)."""

    def __init__(self, left_padding: list[int], group_size: int = 64, bits: int = 8) -> None:
        super().__init__(left_padding)
        self.group_size, self.bits = group_size, bits

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        prev = self._idx
        quant = dict(group_size=self.group_size, bits=self.bits)
        if self.keys is None or prev + keys.shape[2] > _positions(self.keys):
            B, heads = keys.shape[:2]
            steps = (self.step + keys.shape[2] - 1) // self.step * self.step
            new_k = _grow((B, heads, steps), keys.shape[3], keys.dtype, **quant)
            new_v = _grow((B, heads, steps), values.shape[3], values.dtype, **quant)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                if prev % self.step:
                    self.keys, self.values = tree_map(lambda x: x[..., :prev, :],
                                                      (self.keys, self.values))
                self.keys, self.values = tree_map(
                    lambda x, n: mx.concatenate([x, n], axis=2), (self.keys, self.values),
                    (new_k, new_v))
        self.offset = self.offset + keys.shape[2]
        self._idx += keys.shape[2]
        for mine, new in ((self.keys, mx.quantize(keys, **quant)),
                          (self.values, mx.quantize(values, **quant))):
            for part, value in zip(mine, new):
                part[..., prev:self._idx, :] = value
        return self.keys_and_values()

    def keys_and_values(self):
        return tree_map(lambda x: x[..., :self._idx, :], (self.keys, self.values))

    def finalize(self) -> None:
        if self._right_padding is not None:
            shift = self._right_padding[:, None]
            self.keys, self.values = tree_map(lambda x: dynamic_roll(x, shift, axis=2),
                                              (self.keys, self.values))
            self.offset = self.offset - self._right_padding
            self.left_padding += self._right_padding
            self._right_padding = None

    def filter(self, batch_indices) -> None:
        if self.keys is not None:
            self.keys, self.values = tree_map(lambda x: x[batch_indices],
                                              (self.keys, self.values))
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shared = min(self.left_padding.tolist())  # padding every row has: cut off
        if shared > 0:
            if self.keys is not None:
                self.keys, self.values = tree_map(lambda x: x[..., shared:, :],
                                                  (self.keys, self.values))
            self._idx -= shared
            self.left_padding -= shared

    def extend(self, other: "BatchQuantizedKVCache") -> None:
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        index = max(self._idx, other._idx)
        size = max(_positions(c.keys) for c in (self, other) if c.keys is not None)
        like = self if self.keys is not None else other

        def padded(c):
            """c's arrays right-justified at ``index``, ``size`` positions long."""
            if c.keys is None:
                rows = c.offset.shape[0]
                empty = lambda x: mx.zeros((rows, *x.shape[1:2], 0, x.shape[3]), x.dtype)  # noqa: E731
                k, v = tree_map(empty, (like.keys, like.values))
            else:
                k, v = c.keys, c.values
            left = index - c._idx
            right = size - _positions(k) - left
            if right < 0:
                k, v = tree_map(lambda x: x[..., :right, :], (k, v))
                right = 0
            if left or right:
                k, v = tree_map(lambda x: mx.pad(x, [(0, 0), (0, 0), (left, right), (0, 0)]),
                                (k, v))
            return k, v, c.offset, c.left_padding + left

        (k1, v1, o1, p1), (k2, v2, o2, p2) = padded(self), padded(other)
        join = lambda a, b: mx.concatenate([a, b])  # noqa: E731
        self.keys, self.values = tree_map(join, (k1, v1), (k2, v2))
        self.offset, self.left_padding = join(o1, o2), join(p1, p2)
        self._idx = index

    def extract(self, idx: int) -> QuantizedCache:
        cache = QuantizedCache(self.group_size, self.bits)
        padding = self.left_padding.tolist()[idx]
        cache.keys, cache.values = tree_map(
            lambda x: mx.contiguous(x[idx:idx + 1, :, padding:self._idx]),
            (self.keys, self.values))
        cache.offset = self._idx - padding
        return cache

    @classmethod
    def merge(cls, caches: list) -> "BatchQuantizedKVCache":
        lengths = [c.offset if c.keys is not None else 0 for c in caches]
        longest = max(lengths)
        if longest == 0:
            return cls([0] * len(caches), caches[0].group_size, caches[0].bits)
        full = next(c for c in caches if c.keys is not None)
        padding = [longest - n for n in lengths]
        shape = lambda x: (len(caches), x.shape[1], longest, x.shape[3])  # noqa: E731
        keys, values = tree_map(lambda x: mx.zeros(shape(x), x.dtype), (full.keys, full.values))
        for i, (pad, c) in enumerate(zip(padding, caches)):
            if c.keys is None:
                continue
            for mine, theirs in ((keys, c.keys), (values, c.values)):
                for part, value in zip(mine, theirs):
                    part[i:i + 1, :, pad:pad + c.offset] = value[..., :c.offset, :]
        cache = cls(padding, full.group_size, full.bits)
        cache.keys, cache.values = keys, values
        cache.offset += longest
        cache._idx = longest
        return cache

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return sum(x.nbytes for x in (*self.keys, *self.values))
