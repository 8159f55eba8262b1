"""Sequences in one batched KV cache whose rows keep different numbers of a step's positions.

Speculative decoding feeds every row of a forward several positions and then keeps a
different number per row (the proposals each sequence accepted). mlx-lm's ``BatchKVCache``
(left-padded, one write position for all rows) trims every row by the same count. So a
step keeps the fewest any row kept, and a row that kept more has a surplus: known tokens
its cache lacks, which its caller feeds again next step ahead of its new positions (a few
more rows of a forward, which cost little on a bandwidth-bound Mac, and never change a
result). A row that outpaces another step after step would re-feed more and more, so once
a surplus passes ``REFEED`` the step keeps the most any row kept instead, and each row that
kept fewer moves right by the difference into its left padding (one copy of the cache, as
mlx-lm's batch does after a ragged prefill). Padding every row has is then cut off, so the
cache stays as long as its longest row, as the server's KV budget counts it.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

REFEED = 4  # most surplus tokens a row feeds again


class RaggedRows:
    """One batched cache per layer, its rows the sequences in ``ids`` (in order)."""

    def __init__(self) -> None:
        self.layers: list[BatchKVCache] | None = None
        self.ids: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def join(self, uid: int, layers: list) -> None:
        """Add a sequence's own per-layer caches as a new row (copied in: drop them)."""
        merged = [layer.merge([layer]) for layer in layers]  # full precision or quantized
        if self.layers is None:
            self.layers = merged
        else:
            for mine, new in zip(self.layers, merged):
                mine.extend(new)
        self.ids.append(uid)

    def leave(self, uids: set[int]) -> dict[int, list]:
        """Take these sequences' rows out: their per-layer caches (mlx-lm ``KVCache``)."""
        out = {uid: [layer.extract(self.ids.index(uid)) for layer in self.layers]
               for uid in uids if uid in self.ids}
        keep = [i for i, uid in enumerate(self.ids) if uid not in uids]
        if len(keep) < len(self.ids):
            self.ids = [self.ids[i] for i in keep]
            if keep:
                for layer in self.layers:
                    layer.filter(mx.array(keep))
            else:
                self.layers = None
        return out

    def trim(self, width: int, keep: list[int]) -> list[int]:
        """After a step that fed every row ``width`` positions, of which row i keeps its
        first ``keep[i]``: drop the rest (see the module's text); how many each row now
        holds (the rest of ``keep[i]`` is its surplus)."""
        low, high = min(keep), max(keep)
        target = low if high - low <= REFEED else high
        shifts = [max(0, target - k) for k in keep]
        for layer in self.layers:
            layer.trim(width - target)
            if any(shifts):
                layer.prepare(right_padding=shifts)
                layer.finalize()
        if any(shifts) and min(self.layers[0].left_padding.tolist()) > 0:
            rows = mx.arange(len(self.ids))
            for layer in self.layers:
                layer.filter(rows)  # keeps every row, drops the padding they all have
        return [min(k, target) for k in keep]
