"""Generation: same greedy ids as mlx-lm, exact streamed text, eos and length stops."""

from __future__ import annotations

import json

import pytest
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import load as mlx_lm_load

from qwen_mlx import load
from qwen_mlx.errors import QwenMlxError

MESSAGES = [{"role": "user", "content": "Write a haiku about the sea."}]


def mlx_lm_greedy(folder, prompt_ids, n):
    model, tokenizer = mlx_lm_load(str(folder))
    return [r.token for r in stream_generate(model, tokenizer, prompt_ids, max_tokens=n,
                                             sampler=make_sampler(temp=0.0))]


def test_greedy_ids_equal_mlx_lm_stream_generate(tiny_model, tiny_q4_f32):
    prompt = tiny_model.encode(MESSAGES)
    ours = tiny_model.generate(prompt, temperature=0, max_tokens=40)
    assert len(ours.tokens) == 40 and len(set(ours.tokens)) > 5
    assert ours.tokens == mlx_lm_greedy(tiny_q4_f32, prompt, 40)
    assert ours.stats.finish_reason == "length"


def test_long_prompt_is_prefilled_in_chunks_with_the_same_result(tiny_model):
    prompt = tiny_model.encode("lorem ipsum dolor sit amet " * 60, raw=True)
    assert len(prompt) > 300
    seen = []
    chunked = tiny_model.generate(prompt, temperature=0, max_tokens=8, prefill_step=64,
                                  on_prefill=lambda done, total: seen.append((done, total)))
    whole = tiny_model.generate(prompt, temperature=0, max_tokens=8, prefill_step=4096)
    assert chunked.tokens == whole.tokens
    assert seen[0] == (64, len(prompt)) and seen[-1] == (len(prompt) - 1, len(prompt))


def test_streamed_chinese_and_emoji_text_equals_the_decoded_text(tiny_model):
    pieces = list(tiny_model.stream("用中文写一首关于大海的诗 🌊🐚", temperature=1.0, top_p=1.0,
                                    top_k=0, seed=7, max_tokens=60))
    tokens = [t for p in pieces for t in p.tokens]
    text = "".join(p.text for p in pieces)
    assert len(tokens) == 60
    assert text == tiny_model.decode(tokens)
    assert any(ord(c) > 0x2E80 for c in text)  # the sample did produce CJK characters
    assert "\ufffd" not in text  # no character was split between pieces


def test_generation_stops_at_every_eos_id_from_generation_config(tiny_q4_f32, copy_of):
    free = load(tiny_q4_f32).generate(MESSAGES, temperature=0, max_tokens=12).tokens
    k = next(i for i in range(3, 12) if free[i] not in free[:i])
    folder = copy_of(tiny_q4_f32)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["eos_token_id"] = [151645, free[k]]  # pretend this greedy token ends the reply
    (folder / "generation_config.json").write_text(json.dumps(gen))
    model = load(folder)
    assert set(model.eos_ids) == {151645, free[k]}
    out = model.generate(MESSAGES, temperature=0, max_tokens=12)
    assert out.tokens == free[:k]  # the eos id itself is not part of the reply
    assert out.stats.finish_reason == "stop" and out.stats.generated_tokens == k + 1
    assert out.text == model.decode(free[:k])


def test_stop_string_cuts_the_text(tiny_model):
    full = tiny_model.generate(MESSAGES, temperature=0, max_tokens=20).text
    stop = full[10:14]
    cut = tiny_model.generate(MESSAGES, temperature=0, max_tokens=20, stop=[stop])
    assert cut.text == full[:full.index(stop)]
    assert (cut.stats.finish_reason, cut.stats.stop_string) == ("stop", stop)


def test_seeded_sampling_repeats_and_defaults_come_from_generation_config(tiny_model):
    d = tiny_model.defaults
    assert (d.temperature, d.top_p, d.top_k) == (0.7, 0.8, 20)
    a = tiny_model.generate(MESSAGES, seed=3, max_tokens=15).tokens
    b = tiny_model.generate(MESSAGES, seed=3, max_tokens=15).tokens
    c = tiny_model.generate(MESSAGES, seed=4, max_tokens=15).tokens
    assert a == b and a != c
    top1 = tiny_model.generate(MESSAGES, top_k=1, temperature=1.0, seed=5, max_tokens=15)
    assert top1.tokens == tiny_model.generate(MESSAGES, temperature=0, max_tokens=15).tokens


def test_cache_reuse_prefills_only_the_new_suffix(tiny_model):
    cache = tiny_model.new_cache()
    first = tiny_model.generate(MESSAGES, temperature=0, max_tokens=6, cache=cache)
    assert first.stats.prefill_tokens == first.stats.prompt_tokens
    history = MESSAGES + [{"role": "assistant", "content": first.text},
                          {"role": "user", "content": "Another one."}]
    prompt = tiny_model.encode(history)
    second = tiny_model.generate(prompt, temperature=0, max_tokens=6, cache=cache)
    fresh = tiny_model.generate(prompt, temperature=0, max_tokens=6)
    assert second.tokens == fresh.tokens
    assert second.stats.cached_tokens > first.stats.prompt_tokens
    assert second.stats.prefill_tokens == len(prompt) - second.stats.cached_tokens
    assert cache.tokens == (prompt + second.tokens)[:cache.offset]


def test_stats_agree_with_a_clock_outside(tiny_model):
    import time

    start = time.perf_counter()
    out = tiny_model.generate(MESSAGES, temperature=0, max_tokens=10)
    elapsed = time.perf_counter() - start
    s = out.stats
    assert s.prompt_tokens == len(tiny_model.encode(MESSAGES)) == s.prefill_tokens
    assert s.generated_tokens == 10 and s.peak_memory > 0
    assert 0 < s.time_to_first_token < s.time_to_first_token + s.decode_seconds <= elapsed
    # rates over time measured inside the run: never below what the outside clock allows
    assert s.generation_tps >= 9 / elapsed and s.prompt_tps >= s.prompt_tokens / elapsed


def test_stats_summary_line():
    from qwen_mlx import Stats

    s = Stats(prompt_tokens=120, prefill_tokens=20, cached_tokens=100, generated_tokens=11,
              time_to_first_token=0.25, decode_seconds=0.5, peak_memory=2_500_000_000,
              finish_reason="stop")
    assert s.summary() == ("120 prompt tokens (20 prefilled, 100 cached) at 80.0 tok/s, "
                           "11 generated at 20.0 tok/s, first token 250 ms, peak memory 2.50 GB "
                           "(stop)")


def test_common_prefix():
    from qwen_mlx.engine.prompt_cache import common_prefix

    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([5], [6]) == 0


def test_the_request_owns_the_context_budget(tiny_model):
    """One place fits a reply into the context: the model's, or a tighter one asked for."""
    from qwen_mlx.errors import ContextExceeded

    tokens = tiny_model.encode("Hello")
    assert len(tokens) == 9
    req = tiny_model.request(tokens, max_tokens=100, context=12, stop=["\n\n"])
    assert (req.tokens, req.params.max_tokens, req.stop) == (tuple(tokens), 3, ("\n\n",))
    assert tiny_model.request(tokens).params.max_tokens == 2048  # the default, room to spare
    with pytest.raises(ContextExceeded, match=r"^the prompt is 9 tokens; the context is 9$"):
        tiny_model.request(tokens, context=9)
    with pytest.raises(QwenMlxError, match=r"^top_p must be in \(0, 1\]$"):
        tiny_model.request(tokens, top_p=0)
    with pytest.raises(QwenMlxError, match=r"^a stop string must be non-empty text$"):
        tiny_model.request(tokens, stop=[""])
    with pytest.raises(TypeError, match="a Request is already validated; drop temperature"):
        tiny_model.stream(req, temperature=0.5)
    pieces = list(tiny_model.stream(tiny_model.request(tokens, temperature=0, max_tokens=5,
                                                       context=12)))
    assert pieces[-1].stats.generated_tokens == 3 and pieces[-1].stats.finish_reason == "length"


def test_stop_strings_across_pieces():
    """A stop string split over pieces is cut where it completes; a tail that may begin one
    is held back, then given back at the end when none completes."""
    from qwen_mlx.engine.generate import StopStrings

    stops = StopStrings(["</end>", "STOP", "\n\n"])
    assert stops.feed("Hello </e") == ("Hello ", False)
    assert stops.feed("nd") == ("", False)
    assert stops.feed(">never shown") == ("", True)
    assert stops.matched == "</end>"  # named (Anthropic's stop_sequence)
    stops = StopStrings(["STOP"])
    assert [stops.feed(p) for p in ("a S", "T", "x")] == [("a ", False), ("", False),
                                                          ("STx", False)]
    assert stops.feed("ST") == ("", False) and stops.flush() == "ST"
    assert StopStrings([]).feed("ST") == ("ST", False)
    first = StopStrings(["abc", "b"])  # streaming: "b" completes first
    assert first.feed("abc") == ("a", True) and first.matched == "b"


def test_each_reply_reports_its_own_peak_memory(tiny_model):
    long = tiny_model.generate(list(range(1000, 1900)), temperature=0, max_tokens=2)
    short = tiny_model.generate(list(range(1000, 1005)), temperature=0, max_tokens=2)
    assert 0 < short.stats.peak_memory < long.stats.peak_memory
