"""The fixture's tokenizer is Qwen3's; its chat template renders in Qwen3's format."""

from __future__ import annotations

import hashlib
import json

import pytest

from qwen_mlx.testing.tokenizer import TOKENIZER_JSON_SHA256

from .conftest import SHARED, shared_available

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
CONVERSATIONS = {
    "system": [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "Hi"}],
    "multi_turn_with_reasoning": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "again"},
        {"role": "user", "content": "thanks"}],
    "tool_round_trip": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "content": "{\"temp\": 18}"},
        {"role": "tool", "content": "{\"temp\": 24}"},
        {"role": "assistant", "content": "<think>compare</think>Rome is warmer."}],
}


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model):
    return tiny_model.tokenizer._tokenizer


def render(tok, messages, template=None, **kw):
    kw.setdefault("add_generation_prompt", True)
    return tok.apply_chat_template(messages, tokenize=False, chat_template=template, **kw)


def test_tokenizer_json_is_qwens(tokenizer_bytes):
    assert hashlib.sha256(tokenizer_bytes).hexdigest() == TOKENIZER_JSON_SHA256


def test_known_encodings(tiny_model):
    enc = tiny_model.tokenizer.encode
    assert enc("Hello world") == [9707, 1879]
    assert enc("你好") == [108386]
    assert enc("<|im_start|>user\n<think></think><|im_end|>") == [151644, 872, 198, 151667,
                                                                   151668, 151645]
    assert tiny_model.decode([108386, 11, 220, 9707]) == "你好, Hello"


def test_template_renders_qwen3_chatml(hf_tokenizer):
    assert render(hf_tokenizer, CONVERSATIONS["system"]) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert render(hf_tokenizer, CONVERSATIONS["multi_turn_with_reasoning"]) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n"
        "<|im_start|>user\nthanks<|im_end|>\n<|im_start|>assistant\n")
    assert render(hf_tokenizer, CONVERSATIONS["tool_round_trip"], add_generation_prompt=False) \
        == ("<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n<|im_start|>assistant\n"
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
            "</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
            "{\"city\": \"Rome\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n"
            "{\"temp\": 18}\n</tool_response>\n<tool_response>\n{\"temp\": 24}\n"
            "</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\ncompare\n</think>\n\n"
            "Rome is warmer.<|im_end|>\n")
    off = render(hf_tokenizer, CONVERSATIONS["system"], enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_tools_block_in_the_system_turn(hf_tokenizer):
    text = render(hf_tokenizer, CONVERSATIONS["system"], tools=TOOLS)
    head, rest = text.split("<tools>\n", 1)
    assert head.startswith("<|im_start|>system\nYou are terse.\n\n# Tools\n\n")
    tools_json, tail = rest.split("\n</tools>", 1)
    assert [json.loads(line) for line in tools_json.split("\n")] == TOOLS
    assert "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n" \
           "</tool_call><|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" in tail


@pytest.mark.skipif(not shared_available(), reason="../shared reference templates absent")
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("reference, kwargs", [
    ("chat_template_instruct_2507.jinja", {}),
    ("chat_template_qwen3_hybrid.jinja", {"enable_thinking": False}),
    ("chat_template_qwen3_hybrid.jinja", {"enable_thinking": True}),
])
def test_same_rendering_as_qwens_template(hf_tokenizer, name, reference, kwargs):
    template = (SHARED / "qwen3" / "reference" / reference).read_text()
    for gen in (True, False):
        ours = render(hf_tokenizer, CONVERSATIONS[name], add_generation_prompt=gen, **kwargs)
        theirs = render(hf_tokenizer, CONVERSATIONS[name], template, add_generation_prompt=gen,
                        **kwargs)
        assert ours == theirs


@pytest.mark.skipif(not shared_available(), reason="../shared tokenizer vectors absent")
def test_llama_cpp_tokenizer_vectors(tiny_model):
    base = SHARED / "qwen3" / "tokenizer-vectors" / "ggml-vocab-qwen2.gguf"
    inputs = base.with_suffix(".gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
    outputs = base.with_suffix(".gguf.out").read_text().strip("\n").split("\n")
    assert len(inputs) >= len(outputs) > 20
    for text, ids in zip(inputs, outputs):
        want = [int(i) for i in ids.split()]
        assert tiny_model.tokenizer.encode(text) == want, text


def test_folders_with_the_same_tokenizer_files_share_one_tokenizer(tiny_f32, tiny_q4_f32,
                                                                   tmp_path):
    """A tokenizer is shared by its files' content (a load costs about a second): two
    conversions of one source (other weights, other config.json) share one; other eos ids,
    one merge fewer or another chat template each get their own, which says so."""
    import shutil

    from qwen_mlx.models.loader import load_tokenizer

    source = load_tokenizer(tiny_f32, [151645])
    assert load_tokenizer(tiny_q4_f32, [151645]) is source
    assert load_tokenizer(tiny_f32, [151645, 151643]) is not source
    unmerged = shutil.copytree(tiny_f32, tmp_path / "unmerged")
    doc = json.loads((unmerged / "tokenizer.json").read_text())
    doc["model"]["merges"].remove([merge for merge in doc["model"]["merges"]
                                   if "".join(merge) == "Hello"][0])
    (unmerged / "tokenizer.json").write_text(json.dumps(doc))
    other = load_tokenizer(unmerged, [151645])
    assert source.encode("Hello") == [9707] and other is not source
    assert len(other.encode("Hello")) == 2
    templated = shutil.copytree(tiny_f32, tmp_path / "templated")
    config = json.loads((templated / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}!"
    (templated / "tokenizer_config.json").write_text(json.dumps(config))
    (templated / "chat_template.jinja").unlink(missing_ok=True)
    plain = load_tokenizer(templated, [151645])
    assert plain.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) \
        == "hi!"
    assert source.encode("Hello") == [9707]
