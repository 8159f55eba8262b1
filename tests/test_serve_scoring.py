"""/v1/completions for evaluation harnesses, through the official ``openai`` SDK: ``echo``
with ``logprobs`` scores the prompt's own tokens, equal within 1e-4 to an independent
computation with ``mlx_lm.load`` (a full forward and a log-softmax); ``max_tokens: 0``
scores without generating; a list of prompts gives one choice per prompt, each what it gets
alone. Before, echo and several prompts were refused."""

from __future__ import annotations

import math

import mlx.core as mx
import openai
import pytest

from .serving import MODEL

PROMPTS = ["The cat sat on the mat, and then it", "Once upon a time there was"]


def independent(folder, text: str) -> tuple[list[int], mx.array]:
    """The token ids of ``text`` and the log-softmax at every position, from mlx-lm."""
    from mlx_lm import load

    net, tokenizer = load(str(folder))
    ids = tokenizer.encode(text)
    logits = net(mx.array(ids)[None])[0].astype(mx.float32)
    return ids, logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def test_echo_scores_the_prompt_as_mlx_lm_does(running, tiny_q4_f32):
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    out = client.completions.create(model=MODEL, prompt=PROMPTS, echo=True, logprobs=3,
                                    max_tokens=0)
    assert [c.index for c in out.choices] == [0, 1]
    total = 0
    for choice, text in zip(out.choices, PROMPTS):
        ids, logp = independent(tiny_q4_f32, text)
        total += len(ids)
        got = choice.logprobs
        assert choice.text == text and choice.finish_reason == "length"
        assert len(got.token_logprobs) == len(ids) and "".join(got.tokens) == text
        assert got.token_logprobs[0] is None and got.top_logprobs[0] is None
        want = [logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
        assert got.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
        for i in range(1, len(ids)):  # the 3 likeliest after each prefix, by value
            best = sorted(logp[i - 1].tolist(), reverse=True)[:3]
            assert sorted(got.top_logprobs[i].values(), reverse=True) == \
                pytest.approx(best, abs=1e-4)
            assert got.token_logprobs[i] <= best[0] + 1e-4
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (total, 0)
    # lm-eval's other form: one token generated after the echoed prompt (greedy: the
    # likeliest after the whole prompt)
    one = client.completions.create(model=MODEL, prompt=PROMPTS[0], echo=True, logprobs=1,
                                    max_tokens=1, temperature=0)
    ids, logp = independent(tiny_q4_f32, PROMPTS[0])
    got = one.choices[0].logprobs
    assert len(got.token_logprobs) == len(ids) + 1 and one.choices[0].text.startswith(PROMPTS[0])
    assert got.token_logprobs[-1] == pytest.approx(max(logp[-1].tolist()), abs=1e-4)
    assert got.text_offset[len(ids)] == len(PROMPTS[0])
    assert not math.isnan(got.token_logprobs[1])


def test_several_prompts_are_each_what_they_get_alone(running, tiny_q4_f32):
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=6,
                                       temperature=0).choices[0].text for p in PROMPTS]
    many = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=6, temperature=0)
    assert [c.text for c in many.choices] == alone
    assert many.usage.completion_tokens == 12
    ids = [independent(tiny_q4_f32, p)[0] for p in PROMPTS]  # token ids work the same way
    as_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert [c.text for c in as_ids.choices] == alone
    for kwargs, message in (
            ({"prompt": PROMPTS, "stream": True}, "'echo' and several prompts are answered "
                                                  "without streaming"),
            ({"prompt": PROMPTS[0], "echo": True, "stream": True}, "'echo' and several "),
            ({"prompt": PROMPTS[0], "max_tokens": 0}, "'max_tokens' is out of range"),
            ({"prompt": [PROMPTS[0], 5]}, "'prompt' must be non-empty text")):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, **{"max_tokens": 2, **kwargs})
        assert message in e.value.body["message"]


def test_tokenize_and_detokenize_in_llama_cpps_shapes(running, tiny_q4_f32):
    import httpx
    from mlx_lm import load

    _, tokenizer = load(str(tiny_q4_f32))
    text = "Hello, wörld! 😀 龘"
    ids = tokenizer.encode(text)
    r = httpx.post(f"{running.url}/tokenize", json={"content": text})
    assert r.status_code == 200 and r.json() == {"tokens": ids}
    pieces = httpx.post(f"{running.url}/tokenize", json={"content": text, "with_pieces": True,
                                                          "add_special": False}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    # whole pieces are text; a piece holding part of a character is its bytes
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else
                      bytes(p["piece"]) for p in pieces)
    assert joined.decode() == text
    assert any(isinstance(p["piece"], list) for p in pieces)  # 龘 is two tokens of bytes
    r = httpx.post(f"{running.url}/detokenize", json={"tokens": ids})
    assert r.json() == {"content": text}
    for path, body, message in (("/tokenize", {"content": 5}, "'content' must be text"),
                                ("/detokenize", {"tokens": [-1]}, "'tokens' must be a list"),
                                ("/tokenize", {"content": "x", "n": 1},
                                 "'n' is not supported by qwen-mlx")):
        r = httpx.post(f"{running.url}{path}", json=body)
        assert r.status_code == 400 and message in r.json()["error"]["message"]
