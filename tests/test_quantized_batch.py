"""Quantized KV in the continuous batch (qwen_mlx.engine.quantized_batch): every row holds
exactly what mlx-lm's own QuantizedKVCache holds for that sequence, through merge, steps,
right-padded prefill, filter, extend, trim and extract; and a batch of quantized sequences
replies as each does alone."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import QuantizedKVCache

from qwen_mlx import load
from qwen_mlx.engine.batch import Batch
from qwen_mlx.engine.quantized_batch import BatchQuantizedKVCache, QuantizedCache
from qwen_mlx.engine.speculative_batch import SpeculativeBatch

HEADS, DIM = 2, 64


def kv(n: int, seed: int) -> tuple[mx.array, mx.array]:
    mx.random.seed(seed)
    return mx.random.normal((1, HEADS, n, DIM)), mx.random.normal((1, HEADS, n, DIM))


def lone(n: int, seed: int, bits: int) -> QuantizedKVCache:
    """mlx-lm's cache, fed one sequence's n positions."""
    cache = QuantizedKVCache(group_size=32, bits=bits)
    if n:
        cache.update_and_fetch(*kv(n, seed))
    return cache


def ours(n: int, seed: int, bits: int) -> QuantizedCache:
    cache = QuantizedCache(group_size=32, bits=bits)
    if n:
        cache.update_and_fetch(*kv(n, seed))
    return cache


def same(batch_row: QuantizedKVCache, reference: QuantizedKVCache) -> bool:
    got, want = batch_row.keys_and_values(), reference.keys_and_values()
    return batch_row.offset == reference.offset and all(
        mx.array_equal(a, b).item() for pair_a, pair_b in zip(got, want)
        for a, b in zip(pair_a, pair_b))


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_hold_what_mlx_lms_quantized_cache_holds(bits):
    lengths = [5, 300, 0, 17]
    refs = [lone(n, i, bits) for i, n in enumerate(lengths)]
    batch = BatchQuantizedKVCache.merge([ours(n, i, bits) for i, n in enumerate(lengths)])
    assert (batch.bits, batch.group_size) == (bits, 32)
    for step in range(3):  # decode steps: one position per row
        k, v = kv(1, 100 + step)
        rows_k, rows_v = mx.concatenate([k] * 4), mx.concatenate([v] * 4)
        batch.update_and_fetch(rows_k, rows_v)
        for ref in refs:
            ref.update_and_fetch(k, v)
    for i, ref in enumerate(refs):
        assert same(batch.extract(i), ref), i
    # a newcomer joins (extend), one leaves (filter), all go back two positions (trim)
    newcomer = BatchQuantizedKVCache.merge([ours(40, 9, bits)])
    batch.extend(newcomer)
    refs.append(lone(40, 9, bits))
    batch.filter(mx.array([0, 2, 3, 4]))
    refs = [refs[i] for i in (0, 2, 3, 4)]
    batch.trim(2)
    for ref in refs:
        ref.trim(2)
    k, v = kv(1, 200)
    batch.update_and_fetch(mx.concatenate([k] * 4), mx.concatenate([v] * 4))
    for ref in refs:
        ref.update_and_fetch(k, v)
    for i, ref in enumerate(refs):
        assert same(batch.extract(i), ref), i
    assert batch.nbytes == sum(x.nbytes for x in (*batch.keys, *batch.values))


def test_a_right_padded_prefill_ends_left_padded():
    """Prompts of 3 and 5 positions prefilled together, right-padded, then rolled: each row
    then holds its own positions only, as mlx-lm's cache would."""
    batch = BatchQuantizedKVCache([0, 0], group_size=32, bits=8)
    batch.prepare(right_padding=[2, 0])
    (k1, v1), (k2, v2) = kv(5, 1), kv(5, 2)
    batch.update_and_fetch(mx.concatenate([k1, k2]), mx.concatenate([v1, v2]))
    batch.finalize()
    short = QuantizedKVCache(group_size=32, bits=8)
    short.update_and_fetch(k1[..., :3, :], v1[..., :3, :])
    full = QuantizedKVCache(group_size=32, bits=8)
    full.update_and_fetch(k2, v2)
    assert same(batch.extract(0), short) and same(batch.extract(1), full)


@pytest.fixture(scope="module")
def kv8(tiny_kv):
    return load(tiny_kv, kv_bits=8, kv_group_size=32)


PROMPTS = ["Tell me a story about a lighthouse.", "Hi", "Count: one two three four five six"]


def drain(batch, requests: list, joins: dict[int, list] | None = None) -> list[str]:
    """Step the batch until every request has ended; ``joins``: {step: [request indices]}."""
    joins = joins or {0: list(range(len(requests)))}
    texts, keys, step = [""] * len(requests), {}, 0
    while len(batch) or any(s >= step for s in joins):
        for i in joins.get(step, []):
            keys[batch.add(requests[i], batch.model.new_cache())] = i
        for event in batch.step():
            texts[keys[event.uid]] += event.piece.text
        step += 1
    return texts


def batched_replies_are_lone_ones(model) -> None:
    """PROMPTS in the batch, two at once and the third joining while they run: each one's
    greedy text is the one it gets alone."""
    alone = [model.generate(p, temperature=0, max_tokens=20).text for p in PROMPTS]
    requests = [model.request(p, temperature=0, max_tokens=20) for p in PROMPTS]
    batch = Batch(model, parallel=3)
    try:
        assert drain(batch, requests, {0: [0, 1], 3: [2]}) == alone
    finally:
        batch.close()


def speculating_replies_are_lone_ones(model) -> None:
    """PROMPTS in the speculative batch (prompt lookup), the third joining two steps late:
    each one's greedy text is the one it gets alone."""
    alone = [model.generate(p, temperature=0, max_tokens=16).text for p in PROMPTS]
    requests = [model.request(p, temperature=0, max_tokens=16, lookup=3) for p in PROMPTS]
    assert drain(SpeculativeBatch(model), requests, {0: [0, 1], 2: [2]}) == alone


def test_quantized_sequences_batched_reply_as_each_alone(kv8):
    batched_replies_are_lone_ones(kv8)


def test_quantized_sequences_speculate_together_as_each_alone(kv8):
    speculating_replies_are_lone_ones(kv8)
