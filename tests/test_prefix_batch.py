"""--kv-start in the continuous batch (qwen_mlx.engine.prefix_kv): every row holds exactly
what the lone prefix-quantized cache holds for that sequence (its first positions at full
precision, the rest quantized) through merge, steps that cross the start, a right-padded
prefill, filter, extend, trim and extract; batched attention is the lone cache's; and a
batch of such sequences replies as each does alone, plainly and speculating."""

from __future__ import annotations

import mlx.core as mx
import pytest

from qwen_mlx import load
from qwen_mlx.engine.prefix_kv import BatchPrefixQuantizedKVCache, PrefixQuantizedKVCache

from .test_quantized_batch import (PROMPTS, batched_replies_are_lone_ones,
                                   speculating_replies_are_lone_ones)

HEADS, DIM, START = 2, 64, 8


def kv(n: int, seed: int) -> tuple[mx.array, mx.array]:
    mx.random.seed(seed)
    return mx.random.normal((1, HEADS, n, DIM)), mx.random.normal((1, HEADS, n, DIM))


def lone(n: int, seed: int, bits: int = 8) -> PrefixQuantizedKVCache:
    cache = PrefixQuantizedKVCache(START, group_size=32, bits=bits)
    if n:
        cache.update_and_fetch(*kv(n, seed))
    return cache


def same(got: PrefixQuantizedKVCache, want: PrefixQuantizedKVCache) -> bool:
    def arrays(c):
        head = c.head.keys_and_values() if c.head.offset else ()
        tail = c.tail.keys_and_values() if c.tail.offset else ((), ())
        return [*head, *tail[0], *tail[1]]

    return (got.head.offset, got.tail.offset) == (want.head.offset, want.tail.offset) and \
        all(a.shape == b.shape and mx.array_equal(a, b).item()
            for a, b in zip(arrays(got), arrays(want), strict=True))


def step_all(batch, refs, seed: int, n: int = 1) -> None:
    """Every row and its lone cache fed the same ``n`` new positions."""
    k, v = kv(n, seed)
    batch.update_and_fetch(mx.concatenate([k] * len(refs)), mx.concatenate([v] * len(refs)))
    for ref in refs:
        ref.update_and_fetch(k, v)


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_hold_what_the_lone_cache_holds(bits):
    # empty, inside the head, at its end, and far past it
    lengths = [0, 5, START, 300]
    refs = [lone(n, i, bits) for i, n in enumerate(lengths)]
    batch = BatchPrefixQuantizedKVCache.merge([lone(n, i, bits) for i, n in enumerate(lengths)])
    for step in range(6):  # decode steps: the short rows cross the start
        step_all(batch, refs, 100 + step)
    for i, ref in enumerate(refs):
        assert same(batch.extract(i), ref), i
    # a newcomer joins (extend), one leaves (filter), all go back two positions (trim)
    batch.extend(BatchPrefixQuantizedKVCache.merge([lone(3, 9, bits)]))
    refs.append(lone(3, 9, bits))
    batch.filter([0, 1, 2, 4])
    refs = [refs[i] for i in (0, 1, 2, 4)]
    batch.trim(2)
    for ref in refs:
        ref.trim(2)
    step_all(batch, refs, 200, n=7)  # a chunk: the newcomer crosses the start inside it
    for i, ref in enumerate(refs):
        assert same(batch.extract(i), ref), i
    assert batch.nbytes == sum(x.nbytes for x in (*batch.keys, *batch.values, *batch.head))


def test_the_tail_drops_columns_every_row_holds_in_its_head():
    """Rows past the start: the tail keeps their quantized parts, not the copies of their
    heads (with the 300-token row gone, the rest are at most 9 columns past the start)."""
    refs = [lone(n, i) for i, n in enumerate((300, 10, 12))]
    batch = BatchPrefixQuantizedKVCache.merge([lone(n, i) for i, n in enumerate((300, 10, 12))])
    batch.filter([1, 2])
    refs = refs[1:]
    for step in range(3):
        step_all(batch, refs, 50 + step)
    assert batch._idx == 12 + 3 - START
    for i, ref in enumerate(refs):
        assert same(batch.extract(i), ref), i


def test_a_right_padded_prefill_ends_left_padded():
    """Prompts of 5 and 12 positions prefilled together from empty caches, right-padded,
    then rolled: the short one never reaches the start, the long one crosses it."""
    batch = BatchPrefixQuantizedKVCache.merge([lone(0, 0), lone(0, 0)])
    batch.prepare(right_padding=[7, 0])
    (k1, v1), (k2, v2) = kv(12, 1), kv(12, 2)
    batch.update_and_fetch(mx.concatenate([k1, k2]), mx.concatenate([v1, v2]))
    batch.finalize()
    short, full = lone(0, 0), lone(0, 0)
    short.update_and_fetch(k1[..., :5, :], v1[..., :5, :])
    full.update_and_fetch(k2, v2)
    assert same(batch.extract(0), short) and same(batch.extract(1), full)
    step_all(batch, [short, full], 7, n=4)  # the short one crosses the start now
    assert same(batch.extract(0), short) and same(batch.extract(1), full)


def test_batched_attention_is_each_rows_own():
    """One chunk of queries per row against rows of 3, 8 and 40 positions: what each row's
    lone cache computes (the same scores, masked to the row's own positions)."""
    lengths = [3, 8, 40]
    refs = [lone(n, i) for i, n in enumerate(lengths)]
    batch = BatchPrefixQuantizedKVCache.merge([lone(n, i) for i, n in enumerate(lengths)])
    step_all(batch, refs, 5, n=6)
    mx.random.seed(11)
    queries = mx.random.normal((1, 4, 6, DIM))  # 4 query heads over 2 KV heads
    got = batch.attend(mx.concatenate([queries] * 3), DIM ** -0.5, None)
    for i, ref in enumerate(refs):
        want = ref.attend(queries, DIM ** -0.5, "causal")
        assert mx.allclose(got[i:i + 1], want, atol=1e-5).item(), i


@pytest.fixture(scope="module")
def kv_start(tiny_kv):
    # prompts of 9-17 tokens: two cross the start in their prefill, one while decoding
    return load(tiny_kv, kv_bits=8, kv_group_size=32, kv_start=12)


def test_prefix_quantized_sequences_batched_reply_as_each_alone(kv_start):
    assert [len(kv_start.request(p).tokens) for p in PROMPTS] == [17, 9, 16]
    batched_replies_are_lone_ones(kv_start)


def test_prefix_quantized_sequences_speculate_together_as_each_alone(kv_start):
    speculating_replies_are_lone_ones(kv_start)
