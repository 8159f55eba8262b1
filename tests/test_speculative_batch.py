"""The speculative batch: several speculating sequences checked in one forward, each with
its own proposals and accepted length. Greedy texts are plain decoding's whatever joins or
leaves when; a seeded reply draws the same tokens alone or batched; a newcomer's prompt is
prefilled a chunk per step while the others stream; a sequence leaves with a cache that
holds exactly the tokens it names."""

from __future__ import annotations

import pytest

from qwen_mlx import load
from qwen_mlx.engine.ragged import REFEED
from qwen_mlx.engine.speculative_batch import SpeculativeBatch

COPY = ("Edit the code: def area(width, height): return width * height. "
        "def area(width, height): return width * height. def area(width, height):")
PROMPTS = [COPY, "Hello there, tell me a story about a cat. " * 3, COPY + " Again.", "Hi"]


@pytest.fixture(scope="module")
def other(other_q4_f32):
    """Other random weights, the same tokenizer: a draft that mostly disagrees."""
    return load(other_q4_f32)


def run(batch: SpeculativeBatch, joins: dict[int, list], log: list | None = None) -> dict:
    """Step until every sequence has ended; ``joins``: at a step, requests to add (with
    their caches, and optionally a key first). Returns each sequence's text, stats and
    cache, by key (or by the order added)."""
    out, keys, step = {}, {}, 0
    while len(batch) or any(s >= step for s in joins):
        for join in joins.get(step, []):
            key, request, cache = join if len(join) == 3 else (len(keys), *join)
            uid = batch.add(request, cache, on_prefill=(
                None if log is None else lambda d, t, n=key: log.append(("prefill", n))))
            keys[uid] = key
            out[key] = {"text": ""}
        for event in batch.step():
            n = keys[event.uid]
            out[n]["text"] += event.piece.text
            if log is not None and event.piece.text:
                log.append(("piece", n))
            if event.last:
                out[n].update(stats=event.piece.stats, cache=event.cache)
        step += 1
    return out


def test_greedy_texts_are_plain_decodings_as_sequences_join_and_leave(tiny_model, other):
    m = tiny_model
    prompts = PROMPTS + [COPY + " Twice."]
    asks = [dict(lookup=4, max_tokens=30), dict(draft=m, draft_tokens=3, max_tokens=40),
            dict(draft=other, draft_tokens=2, max_tokens=30, presence_penalty=1.5),
            dict(lookup=2, max_tokens=30, stop=["a"]),
            dict(draft=m, draft_tokens=2, max_tokens=30)]  # the model's draft, a second row
    expected = []
    for prompt, ask in zip(prompts, asks):
        plain = {k: v for k, v in ask.items() if k not in ("lookup", "draft", "draft_tokens")}
        expected.append(m.generate(prompt, temperature=0, **plain))
    requests = [(n, m.request(p, temperature=0, **ask), m.new_cache())
                for n, (p, ask) in enumerate(zip(prompts, asks))]
    batch = SpeculativeBatch(m)
    # two at once, two while they run, one after the first has left
    out = run(batch, {0: requests[:2], 3: requests[2:3] + requests[4:], 9: requests[3:4]})
    for n, want in enumerate(expected):
        assert out[n]["text"] == want.text, n
        assert out[n]["stats"].finish_reason == want.stats.finish_reason
        assert out[n]["stats"].generated_tokens == want.stats.generated_tokens
    own = [out[n]["stats"].target_forwards for n in range(len(prompts))]
    for n in (1, 4):  # the model as its own draft: every proposal kept
        assert out[n]["stats"].accepted_tokens == out[n]["stats"].draft_tokens
    assert batch.forwards < sum(own)  # checked together
    assert len(batch) == 0 and batch.rows.layers is None
    for n, prompt in enumerate(prompts):
        cache = out[n]["cache"]  # holds prompt and reply, exactly the tokens it names
        held = m.encode(prompt) + expected[n].tokens
        assert cache.offset == len(cache.tokens) and cache.tokens == held[:cache.offset]
        assert cache.offset >= len(held) - 1 - REFEED  # the last few may wait to be fed
        # and a cache to go on from: the next turn reuses it and says what a fresh one says
        turn, had = held + m.encode("Go on.", raw=True), cache.offset
        again = m.generate(turn, temperature=0, max_tokens=8, cache=cache)
        assert again.stats.cached_tokens == had and \
            again.text == m.generate(turn, temperature=0, max_tokens=8).text


def test_a_seeded_reply_draws_the_same_alone_or_batched(tiny_model, other):
    """Seeded, sampled, one with prompt lookup and one with a draft that proposes for two
    rows at once: each reply's tokens and counts are what it draws alone."""
    m = tiny_model
    ask = dict(temperature=0.9, top_k=0, top_p=1.0, max_tokens=20)
    alone = [m.generate(COPY, seed=5, lookup=3, **ask),
             m.generate(PROMPTS[1], seed=8, draft=other, draft_tokens=3, **ask)]
    requests = [(m.request(COPY, seed=5, lookup=3, **ask), m.new_cache()),
                (m.request(PROMPTS[1], seed=8, draft=other, draft_tokens=3, **ask),
                 m.new_cache()),
                (m.request(PROMPTS[2], draft=other, draft_tokens=3, **ask),  # unseeded company
                 m.new_cache())]
    batch = SpeculativeBatch(m)
    out = run(batch, {0: requests})
    assert [out[0]["text"], out[1]["text"]] == [a.text for a in alone]
    assert out[1]["stats"].draft_tokens == alone[1].stats.draft_tokens
    assert out[1]["stats"].accepted_tokens == alone[1].stats.accepted_tokens
    (drafts,) = batch.drafts.values()  # one draft network, its rows proposing together
    assert drafts.forwards < out[1]["stats"].draft_tokens + out[2]["stats"].draft_tokens


def test_a_newcomer_prefills_a_chunk_per_step_while_others_stream(tiny_model, monkeypatch):
    m = tiny_model
    monkeypatch.setattr(m, "prefill_step", 8)
    long = " ".join(f"word{i}" for i in range(40))
    log = []
    out = run(SpeculativeBatch(m), {
        0: [(m.request(COPY, temperature=0, max_tokens=40, lookup=3), m.new_cache())],
        2: [(m.request(long, temperature=0, max_tokens=4, lookup=3), m.new_cache())]}, log)
    chunks = [i for i, (what, n) in enumerate(log) if what == "prefill" and n == 1]
    total = len(m.encode(long))
    assert len(chunks) == -(-(total - 1) // 8) > 3  # its prompt in chunks of 8, one per step
    between = [log[i] for i in range(chunks[0], chunks[-1])]
    assert between.count(("piece", 0)) >= len(chunks) - 1  # the first streamed meanwhile
    assert out[1]["text"] == m.generate(long, temperature=0, max_tokens=4).text
    assert out[0]["text"] == m.generate(COPY, temperature=0, max_tokens=40).text


def test_removed_and_timed_out_sequences_leave_with_their_caches(tiny_model):
    m = tiny_model
    batch = SpeculativeBatch(m)
    keep = batch.add(m.request(COPY, temperature=0, max_tokens=30, lookup=4), m.new_cache())
    gone = batch.add(m.request(PROMPTS[1], temperature=0, max_tokens=30, draft=m),
                     m.new_cache())
    late = batch.add(m.request(PROMPTS[2], temperature=0, max_tokens=30, lookup=2),
                     m.new_cache(), time_limit=0)  # its time is up at the first step
    texts = {keep: "", gone: ""}
    for _ in range(6):  # each has prefilled and joined (the draft's prompt a chunk after)
        for event in batch.step():
            if event.uid == late:
                assert event.last and event.piece.stats.finish_reason == "length"
                assert event.cache.tokens == m.encode(PROMPTS[2])[:event.cache.offset]
            else:
                texts[event.uid] += event.piece.text
    assert texts[gone]
    last = batch.remove(gone)  # its client left
    assert last.last and last.cache.offset == len(last.cache.tokens) > len(m.encode(PROMPTS[1]))
    assert last.cache.tokens == (m.encode(PROMPTS[1]) + m.generate(
        PROMPTS[1], temperature=0, max_tokens=30).tokens)[:last.cache.offset]
    while len(batch):
        for event in batch.step():
            texts[event.uid] += event.piece.text
    assert texts[keep] == m.generate(COPY, temperature=0, max_tokens=30).text


def test_ragged_rows_keep_each_rows_positions_in_order():
    """Rows that keep different counts step after step (re-fed surpluses, moved rows, the
    padding they all gain cut off): each row's cache holds exactly what it kept, in order,
    and the cache is never longer than its longest row."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    from qwen_mlx.engine.ragged import RaggedRows

    rows, layer_count = RaggedRows(), 2
    held, surplus, counter = {}, {}, iter(range(1, 10_000))
    for uid, start in ((0, 3), (1, 1)):
        layers = [KVCache() for _ in range(layer_count)]
        values = [float(next(counter)) for _ in range(start)]
        for layer in layers:
            x = mx.array(values).reshape(1, 1, start, 1)
            layer.update_and_fetch(x, x)
        rows.join(uid, layers)
        held[uid], surplus[uid] = values, []
    # kept counts per step (of what each row was fed): alike, apart, then the other way
    for keep_new in ([2, 2], [5, 1], [1, 1], [1, 5], [5, 0], [0, 5], [3, 3], [5, 1], [5, 1]):
        fed = {uid: surplus[uid] + [float(next(counter)) for _ in range(5)]
               for uid in rows.ids}
        width = max(len(f) for f in fed.values())
        batch = mx.array([f + [0.0] * (width - len(f)) for f in fed.values()])
        for layer in rows.layers:
            x = batch.reshape(len(rows.ids), 1, width, 1)
            layer.update_and_fetch(x, x)
        keep = [len(surplus[uid]) + k for uid, k in zip(rows.ids, keep_new)]
        kept = rows.trim(width, keep)
        for uid, k, n in zip(rows.ids, keep, kept):
            held[uid] += fed[uid][:n]
            surplus[uid] = fed[uid][n:k]
        longest = max(len(v) for v in held.values())
        assert min(rows.layers[0].left_padding.tolist()) == 0
        assert all(layer.keys_and_values()[0].shape[2] == longest for layer in rows.layers)
    assert max(len(s) for s in surplus.values()) <= REFEED
    out = rows.leave({0, 1})
    for uid in (0, 1):
        for layer in out[uid]:
            assert layer.keys[0, 0, :, 0].tolist() == held[uid]
            assert layer.values[0, 0, :, 0].tolist() == held[uid]
    assert rows.layers is None and not rows.ids
