"""Speculative decoding: a draft model or prompt lookup proposes, the model checks several
tokens per forward. Greedy text is token-identical to plain decoding (with stop strings,
penalties, quantized KV, a chat's turns); with the draft equal to the model every proposal is
kept (N+1 tokens per forward); sampling keeps the model's distribution exactly (the rule on
a fixed p and q, and the first token of the tiny model over 1,500 seeds against the exact
distribution)."""

from __future__ import annotations

import json
import math
from collections import Counter

import mlx.core as mx
import pytest

from qwen_mlx import load
from qwen_mlx.chat import ChatSession
from qwen_mlx.engine.sampling import SamplingParams, make_distribution
from qwen_mlx.engine.speculative import LookupIndex, RowsFitted, verify
from qwen_mlx.engine.speculative_batch import SpeculativeBatch
from qwen_mlx.errors import QwenMlxError
from qwen_mlx.models.recipes import Recipe
from qwen_mlx.quant.convert import convert
from qwen_mlx.testing import make_checkpoint

COPY = ("Edit the code: def area(width, height): return width * height. "
        "def area(width, height): return width * height. def area(width, height):")
GREEDY = dict(temperature=0, max_tokens=40)


@pytest.fixture(scope="module")
def other(other_q4_f32):
    """A second tiny model (other random weights, the same tokenizer): a draft that
    disagrees with the model."""
    return load(other_q4_f32)


@pytest.mark.parametrize("how", ["lookup", "self", "other"])
def test_greedy_text_is_plain_decodings(tiny_model, other, how):
    speculate = {"lookup": dict(lookup=4), "self": dict(draft=tiny_model, draft_tokens=3),
                 "other": dict(draft=other, draft_tokens=2)}[how]
    for extra in [{}, dict(presence_penalty=1.5, frequency_penalty=0.5)]:
        plain = tiny_model.generate(COPY, **GREEDY, **extra)
        fast = tiny_model.generate(COPY, **GREEDY, **extra, **speculate)
        assert fast.tokens == plain.tokens and fast.text == plain.text
        assert fast.stats.target_forwards < 40 or how == "other"
    # a stop string inside an accepted run of proposals ends the text where plain does
    plain = tiny_model.generate(COPY, **GREEDY)
    stop = plain.text[len(plain.text) // 2:len(plain.text) // 2 + 3]
    cut = tiny_model.generate(COPY, **GREEDY, stop=[stop], **speculate)
    assert cut.text == tiny_model.generate(COPY, **GREEDY, stop=[stop]).text
    assert cut.stats.finish_reason == "stop"


@pytest.fixture(scope="module")
def other_rows(tmp_path_factory, tokenizer_bytes):
    """Drafts with the tokenizer's own 151,669 rows and with 160,000, against the model's
    151,936 (checkpoints pad their output rows differently)."""
    drafts = {}
    for rows in (151_669, 160_000):
        hf = make_checkpoint(tmp_path_factory.mktemp(f"hf-{rows}"), "tiny", seed=1,
                             config_overrides={"vocab_size": rows},
                             tokenizer_json_bytes=tokenizer_bytes)
        out = tmp_path_factory.mktemp(f"q4-{rows}") / "model"
        convert(hf, out, Recipe(dtype="float32"))
        drafts[rows] = load(out)
    return drafts


@pytest.mark.parametrize("rows", [151_669, 160_000])
def test_a_draft_with_other_vocabulary_rows_proposes_over_the_models(tiny_model, other_rows,
                                                                       rows):
    """Before, the draft's logits met the model's in a [broadcast_shapes] error (generate
    died, serve answered every request with a 500)."""
    draft = other_rows[rows]
    assert tiny_model.config["vocab_size"] == 151_936
    plain = tiny_model.generate(COPY, **GREEDY)
    fast = tiny_model.generate(COPY, **GREEDY, draft=draft, draft_tokens=2)
    assert fast.tokens == plain.tokens and fast.stats.draft_tokens > 0
    sampled = dict(temperature=0.9, max_tokens=12, seed=5)
    assert tiny_model.generate(COPY, **sampled, draft=draft).stats.generated_tokens == 12
    batch = SpeculativeBatch(tiny_model)  # the server's path: two rows of that draft
    uids = [batch.add(tiny_model.request(COPY, temperature=0, max_tokens=40, draft=draft),
                      tiny_model.new_cache()) for _ in range(2)]
    texts = dict.fromkeys(uids, "")
    while len(batch):
        for event in batch.step():
            texts[event.uid] += event.piece.text
    assert list(texts.values()) == [plain.text, plain.text]


def test_rows_fitted_cuts_pads_and_clamps():
    seen = []

    def net(inputs, cache=None):
        seen.append(inputs.tolist())
        return mx.zeros((*inputs.shape, 5))

    wide = RowsFitted(net, own=5, rows=3)(mx.array([[4]]))
    assert wide.shape == (1, 1, 3) and seen[-1] == [[4]]
    narrow = RowsFitted(net, own=5, rows=7)(mx.array([[6, 2]]))
    assert narrow[0, 0].tolist() == [0] * 5 + [-math.inf] * 2
    assert seen[-1] == [[4, 2]]  # an id past the draft's rows is read as its last


def test_a_draft_equal_to_the_model_keeps_every_proposal(tiny_model):
    for n in (1, 3, 4):
        out = tiny_model.generate(COPY, temperature=0, max_tokens=(n + 1) * 6, draft=tiny_model,
                                  draft_tokens=n)
        s = out.stats
        assert (s.acceptance_rate, s.target_forwards, s.tokens_per_forward) == (1.0, 6, n + 1)
        assert s.draft_tokens == s.accepted_tokens == 6 * n
    sampled = tiny_model.generate(COPY, temperature=0.8, max_tokens=20, seed=3,
                                  draft=tiny_model)
    assert sampled.stats.acceptance_rate == 1.0  # p = q: every proposal is kept


def test_quantized_kv_and_a_chats_turns(tiny_kv):
    model = load(tiny_kv, kv_bits=8, kv_group_size=32)
    plain = ChatSession(model, temperature=0, max_tokens=12)
    fast = ChatSession(model, temperature=0, max_tokens=12, draft=model, draft_tokens=3)
    looked = ChatSession(model, temperature=0, max_tokens=12, lookup=3)
    for turn in ["Hello there", "Tell me more", "And then?"]:
        expected = "".join(p.text for p in plain.send(turn))
        assert "".join(p.text for p in fast.send(turn)) == expected
        assert "".join(p.text for p in looked.send(turn)) == expected
        # the cache is reused across turns as without speculation
        assert fast.last_stats.cached_tokens == plain.last_stats.cached_tokens
        assert fast.last_stats.tokens_per_forward == 4.0


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                          "sizes": {"type": "array", "items": {
                                              "type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 3}},
          "required": ["name", "sizes"]}


@pytest.mark.parametrize("how", ["lookup", "self", "other"])
def test_constrained_replies_are_plain_decodings(tiny_model, other, how):
    """A grammar masks every row of a step with the tokens before it; a proposal it
    forbids is rejected there, and the matcher is rolled back to the kept ones: greedy
    text equals plain decoding's, with sampling it matches the grammar too."""
    from qwen_mlx.engine.constraint import Constraint

    speculate = {"lookup": dict(lookup=4), "self": dict(draft=tiny_model, draft_tokens=3),
                 "other": dict(draft=other, draft_tokens=2)}[how]
    for constraint in (Constraint.schema(SCHEMA), Constraint.regex(r"(ab|cd){3,8}x")):
        # raw: the grammar applies from the first token (the hybrid fixture thinks first)
        plain = tiny_model.generate(COPY, raw=True, **GREEDY, constraint=constraint)
        fast = tiny_model.generate(COPY, raw=True, **GREEDY, constraint=constraint,
                                   **speculate)
        assert fast.tokens == plain.tokens and fast.text == plain.text
        assert plain.stats.finish_reason == "stop"
    sampled = tiny_model.generate(COPY, raw=True, temperature=1.0, seed=5, max_tokens=80,
                                  constraint=Constraint.schema(SCHEMA), **speculate)
    assert sampled.stats.finish_reason == "stop"
    value = json.loads(sampled.text)
    assert set(value) == {"name", "sizes"} and len(value["name"]) <= 12


def test_refusals_name_what_is_wrong(tiny_model, other):
    with pytest.raises(QwenMlxError, match=r"not both"):
        tiny_model.request("Hi", draft=other, lookup=3)
    with pytest.raises(QwenMlxError, match=r"lookup must be from 1 to 16"):
        tiny_model.request("Hi", lookup=17)
    with pytest.raises(QwenMlxError, match=r"draft_tokens needs a draft model"):
        tiny_model.request("Hi", draft_tokens=3)

    class Stranger:  # another vocabulary
        path = "other-model"
        eos_ids = other.eos_ids

        class tokenizer:
            @staticmethod
            def get_vocab():
                return {"a": 0}

    with pytest.raises(QwenMlxError) as e:
        tiny_model.request("Hi", draft=Stranger())
    assert str(e.value) == (f"the draft other-model has a different tokenizer from "
                            f"{tiny_model.path}: speculative decoding needs the same vocabulary")


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    index = LookupIndex([1, 2, 3, 4, 9, 2, 3, 5, 6, 2, 3])
    assert index.propose(2) == [5, 6]  # the latest earlier "2 3" was followed by 5 6
    index.add(7)
    assert index.propose(3) == []  # "3 7", "7": never seen before
    assert LookupIndex([5, 5, 5]).propose(4) == [5]


def test_the_rule_keeps_the_models_distribution_exactly():
    """p and q fixed; x drawn from q, kept or redrawn by the rule: the token that comes out
    follows p (within sampling error over 20,000 draws), and proposals are kept as often as
    the rule says (sum of min(p, q))."""
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)
    distribution = make_distribution(params)
    logits = mx.array([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]] * 2)
    p = distribution(logits)[0]
    q = mx.array([0.05, 0.4, 0.3, 0.1, 0.1, 0.05])
    key = mx.random.key(7)

    def draw():
        nonlocal key
        key, now = mx.random.split(key)
        return now

    seen, kept, n = Counter(), 0, 20_000
    for _ in range(n):
        x = mx.random.categorical(mx.log(q), key=draw()).item()
        accepted, token = verify(logits, [x], mx.stack([q, q]), distribution, draw)
        seen[accepted[0] if accepted else token] += 1
        kept += bool(accepted)
    expected = p.tolist()
    for t, prob in enumerate(expected):
        sd = math.sqrt(prob * (1 - prob) / n)
        assert abs(seen[t] / n - prob) < 5 * sd + 1e-3, (t, seen[t] / n, prob)
    accept = sum(min(a, b) for a, b in zip(expected, q.tolist()))
    assert abs(kept / n - accept) < 5 * math.sqrt(accept * (1 - accept) / n)


def test_the_first_tokens_follow_plain_sampling(tiny_model, other):
    """The tiny model's first token at temperature 1 over the top 8, drawn with a draft of
    other weights over 1,500 seeds: its histogram fits the exact distribution plain sampling
    draws from (the model's logits through the same narrowing; chi-square, p = 0.001)."""
    settings = dict(temperature=1.0, top_k=8, top_p=1.0, max_tokens=2)
    prompt = tiny_model.encode("Once upon a time")  # token ids: rendered once
    logits = tiny_model.net(mx.array(prompt)[None])[0, -1:]
    exact = make_distribution(SamplingParams(**{k: v for k, v in settings.items()
                                                if k != "max_tokens"}))(logits)[0]
    support = [t for t in mx.argsort(-exact).tolist()[:8] if exact[t].item() > 0]
    cache = tiny_model.new_cache()
    n, fast = 1500, Counter()
    for seed in range(n):  # two tokens' room, for one proposal; cut after the first token
        fast[tiny_model.generate(prompt, seed=seed, cache=cache, draft=other, draft_tokens=1,
                                 cut=lambda: True, **settings).tokens[0]] += 1
    assert set(fast) <= set(support)  # nothing outside the top 8
    bins = [[t] for t in support if exact[t].item() * n >= 5]
    bins.append([t for t in support if exact[t].item() * n < 5])
    chi2 = 0.0
    for tokens in bins:
        expected = n * sum(exact[t].item() for t in tokens)
        if expected:
            chi2 += (sum(fast[t] for t in tokens) - expected) ** 2 / expected
    critical = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12}
    assert chi2 < critical[len(bins) - 1]  # degrees of freedom: bins - 1

def test_each_verified_row_is_processed_with_the_last_tokens_before_it():
    """A penalty sees, for each row the model verifies, the RECENT tokens before that row:
    the context's tail and the proposals up to it (a window of the context, not a copy of a
    long one per row)."""
    from qwen_mlx.engine.speculative import RECENT, processed

    seen = []

    def record(tokens, row):
        seen.append(tokens.tolist())
        return row

    context, proposals = list(range(3000)), [7, 8, 9]
    rows, marks = processed(mx.zeros((4, 16)), context, proposals, [record])
    assert rows.shape == (4, 16) and marks == []
    assert seen == [(context + proposals[:i])[-RECENT:] for i in range(4)]
