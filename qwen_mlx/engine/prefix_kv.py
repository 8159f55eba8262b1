"""``--kv-start N``: every sequence's first N positions at full precision for good, the rest
quantized, alone (:class:`PrefixQuantizedKVCache`) and in the continuous batch
(:class:`BatchPrefixQuantizedKVCache`).

In a batch the rows are left-padded, so position N falls at a different column in every
row, and a row may still be filling its head while another decodes far past it. So the
batch keeps the two parts apart: the head is (rows, heads, <= N, dim) at full precision,
column j holding position j of every row; the tail is :class:`BatchQuantizedKVCache`'s,
every position of every row written as mlx-lm's batch writes them. A row's positions under
N are read from the head only: their quantized copies in the tail are masked, and the tail
columns that hold only such copies (or padding) in every row are cut, so the tail stays
about as long as the longest row's quantized part. Attention is one softmax over both
parts, as the lone cache's is, with the mask built from each row's positions.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import CacheList, KVCache, QuantizedKVCache

from ..models import mlx_lm_seam as seam
from .quantized_batch import BatchQuantizedKVCache


def _attention(queries: mx.array, scale: float, head, tail, mask, quant: dict) -> mx.array:
    """Softmax over a full-precision part (``head``: keys, values) and a quantized one
    (``tail``: key and value triples), either may be None: plain matmuls for the first,
    quantized ones for the second (as mlx-lm's quantized attention does them). ``mask``:
    None, or (boolean or additive) over every column of both parts."""
    B, n_heads, L, D = queries.shape
    n_kv = head[0].shape[1] if head else tail[0][0].shape[1]
    q = (queries * scale).reshape(B, n_kv, n_heads // n_kv, L, D)  # grouped-query heads
    split = head[0].shape[2] if head else 0
    if tail:
        tail = [[mx.expand_dims(x, 2) for x in part] for part in tail]
    parts = []
    if head:
        parts.append(q @ mx.expand_dims(head[0], 2).swapaxes(-1, -2))
    if tail:
        parts.append(mx.quantized_matmul(q, *tail[0], transpose=True, **quant))
    scores = mx.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    if mask is not None:
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


class PrefixQuantizedKVCache(CacheList):
    """The first ``start`` positions in a full-precision KVCache, the rest quantized.

    A CacheList of (KVCache, QuantizedKVCache), so mlx-lm's save/load_prompt_cache store it
    as one; :func:`~qwen_mlx.engine.kv_cache.restore` turns a loaded CacheList back into this
    class.
    """

    def __init__(self, start: int, group_size: int, bits: int) -> None:
        super().__init__(KVCache(), QuantizedKVCache(group_size, bits))
        self.start = start
        # the head grows in steps of at most ``start`` positions: a short start (32) is not
        # held in mlx-lm's 256-position step at full precision
        self.head.step = max(1, min(KVCache.step, start))
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

    def merge(self, caches: list) -> "BatchPrefixQuantizedKVCache":
        """Sequences' caches as one batch's rows (mlx-lm's BatchGenerator calls this)."""
        return BatchPrefixQuantizedKVCache.merge(caches)

    def attend(self, queries: mx.array, scale: float, mask) -> mx.array:
        L = queries.shape[2]
        head = self.head.keys_and_values() if self.head.offset else None
        tail = self.tail.keys_and_values() if self.tail.offset else None
        if isinstance(mask, str):
            total = self.offset
            mask = mx.arange(total - L, total)[:, None] >= mx.arange(total)[None]
        return _attention(queries, scale, head, tail, mask,
                          dict(group_size=self.group_size, bits=self.bits))


class BatchPrefixQuantizedKVCache(BatchQuantizedKVCache):
    """Rows of prefix-quantized caches (see the module's text). The tail's bookkeeping is
    :class:`BatchQuantizedKVCache`'s (left padding, one write index, prepare and finalize
    for a right-padded prefill, filter, extend, trim); row i's position at tail column c is
    ``c - left_padding[i]``, and once columns are cut that padding may be negative."""

    def __init__(self, left_padding: list[int], start: int, group_size: int = 64,
                 bits: int = 8) -> None:
        super().__init__(left_padding, group_size, bits)
        self.start = start
        self.head: tuple[mx.array, mx.array] | None = None  # (rows, heads, <= start, dim)
        _route_attention()

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        prev = self._idx
        super().update_and_fetch(keys, values)
        # read once per update (every layer's cache steps): the rows' paddings, as numbers
        padding = self.left_padding.tolist()
        self._write_head(keys, values, prev, padding)
        self._cut(self.step, padding)
        return self, self  # attend reads both parts from the cache itself

    def _write_head(self, keys: mx.array, values: mx.array, prev: int,
                    padding: list[int]) -> None:
        """Copy each row's new positions under ``start`` into the head, at their columns."""
        n = keys.shape[2]
        spans = []
        for row, pad in enumerate(padding):
            first = prev - pad  # the row's position at column ``prev``
            low, high = max(first, 0), min(first + n, self.start)
            if low < high:
                spans.append((row, low, high, low - first))
        if not spans:
            return
        self._widen_head(max(high for _, _, high, _ in spans), keys, values)
        for part, new in zip(self.head, (keys, values)):
            for row, low, high, at in spans:
                part[row:row + 1, :, low:high] = new[row:row + 1, :, at:at + high - low]

    def _widen_head(self, width: int, keys: mx.array, values: mx.array) -> None:
        have = 0 if self.head is None else self.head[0].shape[2]
        if width <= have:
            return
        size = min(self.start, -(-width // self.step) * self.step)
        rows, heads = keys.shape[:2]
        grown = tuple(mx.zeros((rows, heads, size - have, x.shape[3]), x.dtype)
                      for x in (keys, values))
        self.head = grown if self.head is None else \
            tuple(mx.concatenate([old, new], axis=2) for old, new in zip(self.head, grown))

    def _cut(self, least: int, padding: list[int] | None = None) -> None:
        """Drop the tail's first columns when every row holds only padding or copies of
        head positions there, and at least ``least`` of them (each cut costs the next
        write a copy of the tail). ``padding``: the rows' left padding, if already read."""
        least = max(least, 1)
        if self.keys is None or self._idx < least:  # a cut is never more than ``_idx``
            return
        padding = self.left_padding.tolist() if padding is None else padding
        cut = min(min(padding) + self.start, self._idx)
        if cut >= least:
            self.keys, self.values = tree_map(lambda x: x[..., cut:, :],
                                              (self.keys, self.values))
            self._idx -= cut
            self.left_padding = self.left_padding - cut

    def make_mask(self, n: int, return_array: bool = False, **kwargs):
        return None  # attend builds the mask from each row's positions

    def attend(self, queries: mx.array, scale: float, mask) -> mx.array:
        L, cols = queries.shape[2], self._idx
        at = mx.arange(cols - L, cols)  # the queries' tail columns
        positions = at[None] - self.left_padding[:, None]  # (rows, L)
        head, tail, masks = None, None, []
        if self.head is not None:
            head = self.head
            j = mx.arange(head[0].shape[2])
            masks.append(j[None, None] <= positions[..., None])
        if cols:
            tail = tree_map(lambda x: x[..., :cols, :], (self.keys, self.values))
            c = mx.arange(cols)
            live = (c[None] - self.left_padding[:, None]) >= self.start  # (rows, cols)
            masks.append((c[None, None] <= at[None, :, None]) & live[:, None])
        mask = mx.concatenate(masks, axis=-1) if len(masks) > 1 else masks[0]
        return _attention(queries, scale, head, tail, mask[:, None, None],
                          dict(group_size=self.group_size, bits=self.bits))

    def filter(self, batch_indices) -> None:
        super().filter(batch_indices)
        if self.head is not None:
            self.head = tuple(x[batch_indices] for x in self.head)
        self._cut(1)

    def extend(self, other: "BatchPrefixQuantizedKVCache") -> None:
        mine, theirs = self.head, other.head
        rows = (self.offset.shape[0], other.offset.shape[0])
        super().extend(other)
        if mine is None and theirs is None:
            return
        width = max(h[0].shape[2] for h in (mine, theirs) if h is not None)
        like = mine if mine is not None else theirs

        def fit(head, n):
            if head is None:
                return tuple(mx.zeros((n, x.shape[1], width, x.shape[3]), x.dtype)
                             for x in like)
            more = width - head[0].shape[2]
            return tuple(mx.pad(x, [(0, 0), (0, 0), (0, more), (0, 0)]) for x in head) \
                if more else head

        self.head = tuple(mx.concatenate([a, b]) for a, b in zip(fit(mine, rows[0]),
                                                                  fit(theirs, rows[1])))
        self._cut(self.step)

    def extract(self, idx: int) -> PrefixQuantizedKVCache:
        padding = self.left_padding.tolist()[idx]
        n = self._idx - padding  # the row's positions
        cache = PrefixQuantizedKVCache(self.start, self.group_size, self.bits)
        held = min(n, self.start)
        if held:
            cache.head.keys, cache.head.values = (mx.contiguous(x[idx:idx + 1, :, :held])
                                                  for x in self.head)
            cache.head.offset = held
        if n > self.start:
            first = padding + self.start  # the column of position ``start``
            cache.tail.keys, cache.tail.values = tree_map(
                lambda x: mx.contiguous(x[idx:idx + 1, :, first:self._idx]),
                (self.keys, self.values))
            cache.tail.offset = n - self.start
        return cache

    @classmethod
    def merge(cls, caches: list[PrefixQuantizedKVCache]) -> "BatchPrefixQuantizedKVCache":
        one = caches[0]
        lengths = [c.offset for c in caches]
        tails = [c.tail.offset for c in caches]
        width = max(tails)  # the tail's columns: each row's quantized part, right-justified
        batch = cls([width - n for n in lengths], one.start, one.group_size, one.bits)
        batch.offset += width
        batch._idx = width
        held = max(c.head.offset for c in caches)
        if held:
            like = next(c.head for c in caches if c.head.offset)
            batch.head = tuple(mx.zeros((len(caches), x.shape[1], held, x.shape[3]), x.dtype)
                               for x in (like.keys, like.values))
            for i, c in enumerate(caches):
                if not c.head.offset:
                    continue
                for part, theirs in zip(batch.head, (c.head.keys, c.head.values)):
                    part[i:i + 1, :, :c.head.offset] = theirs[..., :c.head.offset, :]
        if width:
            like = next(c.tail for c in caches if c.tail.offset)
            batch.keys, batch.values = tree_map(
                lambda x: mx.zeros((len(caches), x.shape[1], width, x.shape[3]), x.dtype),
                (like.keys, like.values))
            for i, (c, n) in enumerate(zip(caches, tails)):
                if not n:
                    continue
                for mine, theirs in ((batch.keys, c.tail.keys), (batch.values, c.tail.values)):
                    for part, value in zip(mine, theirs):
                        part[i:i + 1, :, width - n:] = value[..., :n, :]
        return batch

    @property
    def state(self):
        return (*super().state, self.head)

    @property
    def nbytes(self) -> int:
        return super().nbytes + (sum(x.nbytes for x in self.head) if self.head else 0)


_routed = False


def _route_attention() -> None:
    """mlx-lm's Qwen3 attention calls a module-level function after update_and_fetch; the
    split caches need their own attention there. Installed once, when the first such cache
    is made (models without one never see the hook)."""
    global _routed
    if not _routed:
        seam.install_attention_hook(
            lambda c: isinstance(c, (PrefixQuantizedKVCache, BatchPrefixQuantizedKVCache)),
            lambda c, queries, scale, mask: c.attend(queries, scale, mask))
        _routed = True
