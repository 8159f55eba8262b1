"""Long context: chunked prefill, quantized KV caches, YaRN, documents in prompts."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
import pytest
from click.testing import CliRunner

from qwen_mlx import load
from qwen_mlx.chat import ChatSession, store
from qwen_mlx.cli import main
from qwen_mlx.models.context import parse_context, rope_overrides
from qwen_mlx.engine.documents import with_document
from qwen_mlx.engine import KVSpec
from qwen_mlx.engine.kv_cache import make_cache
from qwen_mlx.engine.prefix_kv import PrefixQuantizedKVCache
from qwen_mlx.errors import QwenMlxError

TEXT = "The quick brown fox jumps over the lazy dog while the cat watches. " * 12


def run(*args, input=None):
    return CliRunner().invoke(main, list(map(str, args)), input=input)


def logits_in_chunks(model, tokens, spec: KVSpec, step: int) -> mx.array:
    cache = make_cache(model.net, spec)
    ids = mx.array(tokens)[None]
    out = [model.net(ids[:, i:i + step], cache=cache) for i in range(0, len(tokens), step)]
    return mx.concatenate(out, axis=1)


def test_chunked_prefill_gives_the_logits_of_one_pass(tiny_model):
    tokens = tiny_model.encode(TEXT)
    assert len(tokens) > 150
    whole = tiny_model.net(mx.array(tokens)[None])
    for step in (1, 7, 64):
        chunked = logits_in_chunks(tiny_model, tokens, KVSpec(), step)
        # float32 throughout; only the summation order inside attention differs
        assert mx.allclose(chunked, whole, atol=1e-4, rtol=1e-4).item(), step
    a = tiny_model.generate(tokens, temperature=0, max_tokens=20, prefill_step=16)
    b = tiny_model.generate(tokens, temperature=0, max_tokens=20, prefill_step=4096)
    assert a.tokens == b.tokens


def test_quantized_kv_agrees_with_full_precision(tiny_kv):
    model = load(tiny_kv)
    tokens = model.encode(TEXT)
    reference = model.generate(tokens, temperature=0, max_tokens=32).tokens
    agreement = {}
    for spec in (KVSpec(8, 32), KVSpec(4, 32), KVSpec(8, 32, start=16), KVSpec(4, 32, start=16)):
        model.kv = spec
        got = model.generate(tokens, temperature=0, max_tokens=32, prefill_step=64).tokens
        agreement[spec] = sum(x == y for x, y in zip(got, reference)) / len(reference)
        if spec.start:
            assert isinstance(model.new_cache().layers[0], PrefixQuantizedKVCache)
    print("greedy agreement with full-precision KV:",
          {f"{s.bits}-bit start {s.start}": a for s, a in agreement.items()})
    assert agreement[KVSpec(8, 32)] == 1.0  # 8-bit: identical on a short prompt
    assert agreement[KVSpec(8, 32, start=16)] == 1.0
    # 4-bit, measured on the CPU backend: 30/32 tokens (start 0) and 29/32 (start 16); one
    # token of slack for another backend's rounding, no more.
    assert agreement[KVSpec(4, 32)] >= 29 / 32
    assert agreement[KVSpec(4, 32, start=16)] >= 28 / 32


def test_prefix_cache_is_exact_while_it_holds_only_full_precision_tokens(tiny_kv):
    model = load(tiny_kv)
    tokens = model.encode(TEXT)
    reference = logits_in_chunks(model, tokens, KVSpec(), 64)
    exact = logits_in_chunks(model, tokens, KVSpec(4, 32, start=len(tokens)), 64)
    assert mx.array_equal(exact, reference).item()
    # past the start, the quantized tail adds error; keeping a prefix exact lowers it
    err_all = mx.abs(logits_in_chunks(model, tokens, KVSpec(4, 32), 64) - reference).max().item()
    err_prefix = mx.abs(logits_in_chunks(model, tokens, KVSpec(4, 32, start=128), 64)
                        - reference).max().item()
    assert 0 < err_prefix < err_all
    # one token at a time (decode) and in chunks (prefill) store the same cache
    stepwise = logits_in_chunks(model, tokens, KVSpec(4, 32, start=100), 1)
    chunked = logits_in_chunks(model, tokens, KVSpec(4, 32, start=100), 1000)
    assert mx.allclose(stepwise, chunked, atol=1e-4).item()


@pytest.mark.parametrize("spec", [KVSpec(8, 32), KVSpec(4, 32, start=24)])
def test_chat_session_saves_and_loads_with_a_quantized_cache(tiny_kv, spec):
    model = load(tiny_kv, kv_bits=spec.bits, kv_group_size=spec.group_size,
                 kv_start=spec.start)
    first = ChatSession(model, temperature=0, max_tokens=24)
    list(first.send("Tell me about foxes."))
    store.save(first, "quantized")
    after_save = "".join(p.text for p in first.send("And cats?"))

    second = ChatSession(load(tiny_kv, kv_bits=spec.bits, kv_group_size=spec.group_size,
                              kv_start=spec.start), temperature=0, max_tokens=24)
    store.load(second, "quantized")
    assert type(second.cache.layers[0]) is type(first.cache.layers[0])
    replies = list(second.send("And cats?"))
    assert "".join(p.text for p in replies) == after_save
    assert replies[-1].stats.cached_tokens > 0


def _parts(cache) -> list:
    return [p for layer in cache.layers for p in (getattr(layer, "caches", None) or (layer,))]


@pytest.mark.parametrize("spec", [KVSpec(), KVSpec(8, 32), KVSpec(4, 32, start=24)])
def test_a_head_copy_holds_the_prefix_and_leaves_the_cache_whole(tiny_kv, spec):
    """A server's other conversation that shares only a head with a kept one gets a copy
    of that head: the copy's KV equals the kept cache's first positions, it generates what
    the kept cache trimmed to that head would, and the kept cache is untouched."""
    model = load(tiny_kv, kv_bits=spec.bits, kv_group_size=spec.group_size,
                 kv_start=spec.start)
    long = model.encode(TEXT)
    other = long[:40] + model.encode("Dogs bark at night.", raw=True)
    kept, trimmed = model.new_cache(), model.new_cache()
    for cache in (kept, trimmed):
        model.generate(long, cache=cache, max_tokens=1, temperature=0)
    before = (len(kept), kept.offset, kept.nbytes)
    head = kept.head_copy(40)
    assert (len(head), head.offset, head.tokens) == (40, 40, kept.tokens[:40])
    for mine, theirs in zip(_parts(head), _parts(kept)):
        for a, b in zip(tree_flatten([mine.keys, mine.values]),
                        tree_flatten([theirs.keys, theirs.values])):
            n = mine.offset
            assert a[1].shape[-2] == n and mx.array_equal(a[1], b[1][..., :n, :]).item()
    trimmed.trim(40)  # what moving the kept cache out and trimming it gave before
    got = model.generate(other, cache=head, max_tokens=6, temperature=0)
    assert got.stats.cached_tokens == 40
    assert got.text == model.generate(other, cache=trimmed, max_tokens=6, temperature=0).text
    assert (len(kept), kept.offset, kept.nbytes) == before


def test_kv_options_are_checked_against_the_model(tiny_q4_f32, tiny_kv):
    with pytest.raises(QwenMlxError, match="--kv-group-size 64 must divide the head size 16"):
        load(tiny_q4_f32, kv_bits=8)
    result = run("generate", tiny_kv, "-p", "hi", "--kv-bits", "8", "--kv-group-size", "128")
    assert result.exit_code == 1
    assert result.output == "error: --kv-group-size 128 must divide the head size 32: use 32\n"
    assert run("generate", tiny_kv, "-p", "hi", "--kv-bits", "3").exit_code == 2


def yarn_inverse_frequencies(dim: int, base: float, factor: float, original: int,
                             beta_fast: float = 32, beta_slow: float = 1) -> np.ndarray:
    """YaRN (Peng et al. 2023) as Hugging Face's _compute_yarn_parameters computes it."""
    pos_freqs = base ** (np.arange(0, dim, 2) / dim)

    def correction(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction(beta_fast)), 0)
    high = min(math.ceil(correction(beta_slow)), dim - 1)
    ramp = np.clip((np.arange(dim // 2) - low) / max(high - low, 0.001), 0, 1)
    extrapolation = 1 - ramp
    return (1 / (factor * pos_freqs)) * (1 - extrapolation) + (1 / pos_freqs) * extrapolation


def test_context_1m_turns_on_yarn_with_the_right_rotary_frequencies(tiny_kv):
    plain = load(tiny_kv)
    assert type(plain.net.model.layers[0].self_attn.rope).__name__ == "RoPE"
    model = load(tiny_kv, context="1m")
    assert model.context_length == 1_048_576
    assert model.config["rope_scaling"] == {"rope_type": "yarn", "type": "yarn", "factor": 4.0,
                                            "original_max_position_embeddings": 262144}
    rope = model.net.model.layers[0].self_attn.rope
    dim, base = 32, 5_000_000
    inv = yarn_inverse_frequencies(dim, base, 4.0, 262144)
    mscale = 0.1 * math.log(4.0) + 1
    x = mx.concatenate([mx.ones((dim // 2,)), mx.zeros((dim // 2,))]).reshape(1, 1, 1, dim)
    np.testing.assert_allclose(1 / np.array(rope._freqs), inv, rtol=1e-6)
    for position in (0, 1, 1000, 300_000, 1_000_000):
        out = np.array(rope(x, offset=position)).reshape(dim)
        angle = position * inv
        expected = mscale * np.concatenate([np.cos(angle), np.sin(angle)])
        # float32 angles lose about position * 6e-8 radians: compare where that is small
        exact = np.tile(angle < 1e4, 2)
        np.testing.assert_allclose(out[exact], expected[exact], atol=2e-3, err_msg=str(position))
        assert exact.sum() >= 8
    # the high-frequency dimensions are extrapolated (unchanged), the lowest interpolated
    plain_inv = 1 / base ** (np.arange(0, dim, 2) / dim)
    assert inv[0] == plain_inv[0] and math.isclose(inv[-1], plain_inv[-1] / 4)


def test_context_parsing_and_overrides():
    assert [parse_context(t) for t in ("32k", "256k", "1m", "40000", "1.5k")] == \
        [32768, 262144, 1048576, 40000, 1536]
    with pytest.raises(QwenMlxError, match="cannot read '2x' as a context length"):
        parse_context("2x")
    config = {"max_position_embeddings": 262144}
    assert rope_overrides(config, 200_000) == {}
    assert rope_overrides(config, 524288)["rope_scaling"]["factor"] == 2.0


def test_generate_file_puts_the_document_in_the_prompt(tiny_model, tiny_q4_f32, tmp_path):
    doc = tmp_path / "notes.txt"
    doc.write_text("Line one of the notes.\nLine two, with ünïcödé.\n")
    result = run("generate", tiny_q4_f32, "--file", doc, "-p", "Summarize", "--temp", "0",
                 "--max-tokens", "8", "--json")
    assert result.exit_code == 0, result.output
    message = "notes.txt:\n\nLine one of the notes.\nLine two, with ünïcödé.\n\nSummarize"
    assert with_document(doc, "Summarize") == message
    expected = tiny_model.generate(message, temperature=0, max_tokens=8)
    assert result.stdout.split("\n")[0] == expected.text.split("\n")[0]
    assert f'"prompt_tokens": {len(tiny_model.encode(message))}' in result.stdout


def test_bad_documents_get_one_line_errors(tiny_q4_f32, tmp_path):
    (tmp_path / "bin.dat").write_bytes(b"ELF\0\1\2")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("  \n")
    cases = {"missing.txt": "error: no such file: {d}/missing.txt",
             "bin.dat": "error: {d}/bin.dat is a binary file, not text",
             "latin1.txt": "error: {d}/latin1.txt is not UTF-8 text (byte 3 is not)",
             "empty.txt": "error: {d}/empty.txt is empty",
             ".": "error: {d} is not a file"}
    for name, message in cases.items():
        result = run("generate", tiny_q4_f32, "--file", tmp_path / name, "-p", "x")
        assert result.exit_code == 1
        assert result.output == message.format(d=tmp_path) + "\n"


def test_chat_file_command(tiny_model, tiny_q4_f32, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("Foxes are quick.")
    lines = f"/file {doc} What is quick?\n/file {tmp_path}/none.txt\n/file\n"
    result = run("chat", tiny_q4_f32, "--temp", "0", "--max-tokens", "6", "-q", input=lines)
    assert result.exit_code == 0, result.output
    expected = tiny_model.generate("doc.txt:\n\nFoxes are quick.\n\nWhat is quick?",
                                   temperature=0, max_tokens=6)
    assert result.stdout.startswith(expected.text)
    assert f"error: no such file: {tmp_path}/none.txt" in result.stderr
    assert "error: usage: /file PATH [REQUEST]" in result.stderr


def test_prefill_reports_progress_chunk_by_chunk(tiny_model):
    tokens = tiny_model.encode(TEXT)
    calls = []
    out = tiny_model.generate(tokens, temperature=0, max_tokens=2, prefill_step=64,
                              on_prefill=lambda done, total: calls.append((done, total)))
    n = len(tokens)
    expected = [(d, n) for d in range(64, n - 1, 64)] + [(n - 1, n)]
    assert calls == expected
    assert out.stats.prefill_tokens == n


def test_prefill_bar_shows_only_for_long_prompts_and_closes():
    from qwen_mlx.cli.console import PrefillBar

    with PrefillBar(threshold=100) as bar:
        bar(50, 80)
        assert bar.bar is None  # short prompt: no bar
        bar(50, 400)
        assert bar.bar is not None and bar.bar.tasks[0].completed == 50
        bar(399, 400)  # the last prompt chunk: the bar goes before the reply is printed
        assert bar.bar is None
        bar(100, 400)
    assert bar.bar is None  # leaving the block (Ctrl-C, an error) closes it too


def test_prefix_cache_sizes_and_trims_across_its_two_parts(tiny_kv):
    model = load(tiny_kv, kv_bits=4, kv_group_size=32, kv_start=8)
    cache = model.new_cache()
    assert cache.layers[0].nbytes == 0
    model.generate(model.encode(TEXT)[:20], cache=cache, temperature=0, max_tokens=1)
    layer = cache.layers[0]
    assert (layer.head.offset, layer.tail.offset, layer.offset) == (8, 12, 20)
    full = layer.nbytes
    cache.trim(15)  # trims the quantized tail first
    assert (layer.head.offset, layer.tail.offset) == (8, 7)
    cache.trim(5)  # then into the full-precision head
    assert (layer.head.offset, layer.tail.offset) == (5, 0)
    model.generate(model.encode(TEXT)[:9], cache=cache, temperature=0, max_tokens=1)
    assert (layer.head.offset, layer.tail.offset) == (8, 1)  # the head refills to its start
    assert 0 < layer.nbytes <= full
