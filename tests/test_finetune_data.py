"""Training data: validation errors with file and line, splits, and the loss mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qwen_mlx.cli import main
from qwen_mlx.errors import QwenMlxError
from qwen_mlx.finetune.batches import collate, fit_length
from qwen_mlx.finetune.data import load_data
from qwen_mlx.finetune.tokens import Encoder
from qwen_mlx.models.loader import load_tokenizer
from qwen_mlx.hub.spec import ModelSpec

from .conftest import SHARED, shared_available

CHAT = {"messages": [{"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}]}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("lines, message", [
    ([CHAT, '{"messages": [', CHAT], r"train.jsonl:2: not valid JSON \(Expecting value at "
                                     r"column 15\)$"),
    ([CHAT, CHAT, {"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}],
     r"train.jsonl:3: message 2 \(assistant\) has no 'content'$"),
    ([{"messages": [{"role": "user", "content": "only a question"}]}],
     r"train.jsonl:1: has no assistant message to learn from$"),
    ([{"messages": [{"role": "robot", "content": "x"}]}],
     r"train.jsonl:1: message 1 has role 'robot' \(expected one of system, user, assistant, "
     r"tool\)$"),
    ([CHAT, {"text": "plain"}], r"train.jsonl:2: a text example, but .*train.jsonl:1 is "
                                r"messages; mixed formats are not supported$"),
    ([{"prompt": "2+2?"}], r"train.jsonl:1: has no 'completion'$"),
    ([{"prompt": "2+2?", "completion": 4}], r"train.jsonl:1: 'completion' is not a string$"),
    ([{"input": "x"}], r"train.jsonl:1: has none of the keys 'messages', 'prompt'/'completion' "
                       r"or 'text'$"),
    (["[1, 2]"], r"train.jsonl:1: is not a JSON object$"),
    ([CHAT, "{bad", "{worse"], r"train.jsonl:2: not valid JSON .* \(and 1 more bad lines\)$"),
    (["", "  "], r"train.jsonl has no examples$"),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, lines, message):
    path = write_lines(tmp_path / "train.jsonl", lines)
    with pytest.raises(QwenMlxError, match=message):
        load_data(path)


def test_cli_refuses_bad_data_in_one_line_and_writes_nothing(tmp_path, tiny_f32):
    data = write_lines(tmp_path / "train.jsonl", [CHAT, {"messages": "nope"}])
    out = tmp_path / "adapter"
    result = CliRunner().invoke(main, ["finetune", str(tiny_f32), "--data", str(data),
                                       "-o", str(out)])
    assert result.exit_code == 1
    assert result.output == f"error: {data}:2: 'messages' must be a non-empty list\n"
    assert not out.exists()


def test_folder_with_valid_file_and_split(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_lines(folder / "train.jsonl", [CHAT] * 5)
    write_lines(folder / "valid.jsonl", [CHAT, {"text": "x"}])
    with pytest.raises(QwenMlxError, match=r"valid.jsonl:2: a text example, but the train "
                                           r"file is messages; mixed formats"):
        load_data(folder)
    write_lines(folder / "valid.jsonl", [CHAT] * 2)
    data = load_data(folder)
    assert (len(data.train), len(data.valid), data.split_from_train) == (5, 2, False)
    (folder / "valid.jsonl").unlink()
    split = load_data(folder, valid_split=0.2)
    assert (len(split.train), len(split.valid), split.split_from_train) == (4, 1, True)
    assert len(load_data(folder, valid_split=0).valid) == 0
    with pytest.raises(QwenMlxError, match="has no train.jsonl"):
        load_data(tmp_path)
    with pytest.raises(QwenMlxError, match="no such data file or folder"):
        load_data(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def encoder(tiny_f32):
    return Encoder(load_tokenizer(tiny_f32, ModelSpec.of_folder(tiny_f32).eos_ids))


CONVERSATION = {
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}],
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Weather there?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "Sunny and 21 C."},
    ]}


def spans(ids: list[int], mask: list[bool]) -> list[list[int]]:
    out, current = [], []
    for token, on in zip(ids, mask):
        if on:
            current.append(token)
        elif current:
            out.append(current)
            current = []
    return out + ([current] if current else [])


def test_mask_is_every_assistant_turn_token_by_token(encoder):
    from qwen_mlx.finetune.data import Example

    tok = encoder.tokenizer
    encoded = encoder.encode("messages", Example(CONVERSATION, "t:1"))
    rendered = tok.apply_chat_template(CONVERSATION["messages"], tools=CONVERSATION["tools"],
                                       tokenize=False)
    assert encoded.ids == tok.encode(rendered, add_special_tokens=False)
    # The oracle: character spans of each assistant turn in the rendered text (less an
    # empty think block), mapped to tokens through the tokenizer's offsets (not the id scan
    # the encoder uses).
    header, end, empty = "<|im_start|>assistant\n", "<|im_end|>", "<think>\n\n</think>\n\n"
    wanted_chars, start = [], 0
    while (at := rendered.find(header, start)) != -1:
        stop = rendered.index(end, at) + len(end)
        begin = at + len(header)
        begin += len(empty) if rendered.startswith(empty, begin) else 0
        wanted_chars.append((begin, stop))
        start = stop
    offsets = tok._tokenizer(rendered, add_special_tokens=False,
                             return_offsets_mapping=True)["offset_mapping"]
    expected = [any(a <= s and e <= b for a, b in wanted_chars) for s, e in offsets]
    assert encoded.mask == expected
    assert [tok.decode(s) for s in spans(encoded.ids, encoded.mask)] == [
        "Paris.<|im_end|>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call><|im_end|>',
        "Sunny and 21 C.<|im_end|>",  # the template's empty think block is not trained
    ]


def test_train_on_all_text_and_prompt_completion(encoder):
    from qwen_mlx.finetune.data import Example

    tok = encoder.tokenizer
    everything = Encoder(tok, train_on_all=True).encode("messages", Example(CHAT, "t:1"))
    assert everything.mask == [False] + [True] * (len(everything.ids) - 1)
    text = encoder.encode("text", Example({"text": "Plain words."}, "t:1"))
    assert text.ids == tok.encode("Plain words.", add_special_tokens=False) + [tok.eos_token_id]
    assert text.mask == [False] + [True] * (len(text.ids) - 1)
    pc = encoder.encode("prompt/completion",
                        Example({"prompt": "2+2?", "completion": "4"}, "t:1"))
    assert [tok.decode(s) for s in spans(pc.ids, pc.mask)] == ["4<|im_end|>"]
    assert "<think>\n\n</think>\n\n4" in tok.decode(pc.ids)  # still in the input
    reasoned = encoder.encode("messages", Example({"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"}]}, "t:1"))
    assert [tok.decode(s) for s in spans(reasoned.ids, reasoned.mask)] == \
        ["<think>\nAdd them.\n</think>\n\n4<|im_end|>"]


def test_max_seq_len_truncates_or_drops_and_counts(encoder):
    from qwen_mlx.finetune.data import Example

    long = encoder.encode("text", Example({"text": "word " * 50}, "t:1"))
    short = encoder.encode("text", Example({"text": "hi"}, "t:2"))
    chat = encoder.encode("messages", Example(CHAT, "t:3"))  # its reply starts late
    cut = fit_length([long, short, chat], 8, "truncate")
    assert (cut.truncated, cut.dropped, cut.empty) == (2, 0, 1)
    assert [len(e.ids) for e in cut.examples] == [8, len(short.ids)]
    dropped = fit_length([long, short, chat], 8, "drop")
    assert (dropped.truncated, dropped.dropped, len(dropped.examples)) == (0, 2, 1)


def test_batches_pad_and_select_only_trained_positions(encoder):
    from qwen_mlx.finetune.data import Example

    a = encoder.encode("messages", Example(CHAT, "t:1"))
    b = encoder.encode("text", Example({"text": "one two three"}, "t:2"))
    batch = collate([a, b])
    width = batch.inputs.shape[1]
    assert width % 32 == 0 and width >= len(a.ids) - 1
    assert batch.inputs[0, :len(a.ids) - 1].tolist() == a.ids[:-1]
    assert batch.targets[1, :len(b.ids) - 1].tolist() == b.ids[1:]
    expected = [i for i, on in enumerate(a.mask[1:]) if on] + \
        [width + i for i, on in enumerate(b.mask[1:]) if on]
    assert batch.select.tolist() == expected
    assert batch.tokens == len(a.ids) + len(b.ids) - 2


def test_batch_order_is_a_function_of_seed_and_epoch(encoder):
    from qwen_mlx.finetune.batches import Batches
    from qwen_mlx.finetune.data import Example

    examples = [encoder.encode("text", Example({"text": "word " * n}, f"t:{n}"))
                for n in range(1, 21)]
    batches = Batches(examples, 2, seed=3)
    assert len(batches) == 10
    # Sorted by length into fixed groups; each epoch a permutation of them.
    assert sorted(batches.epoch_order(0)) == list(range(10))
    assert batches.epoch_order(0) != batches.epoch_order(1)
    # Each epoch shows every example exactly once, two of similar length per batch.
    def rows(batch):  # the examples in a batch, by their word count
        return sorted(int((row != 0).sum()) for row in batch.targets)

    for epoch in (0, 1):
        seen = [rows(batches.at(epoch * 10 + i)) for i in range(10)]
        assert sorted(n for batch in seen for n in batch) == sorted(
            len(e.ids) - 1 for e in examples)
        assert all(b - a <= 2 for a, b in seen)  # 1+2 words, 3+4 words, ...
    assert [rows(batches.at(i)) for i in range(10)] != [rows(batches.at(i))
                                                         for i in range(10, 20)]
    again = Batches(examples, 2, seed=3)
    assert [rows(again.at(i)) for i in range(30)] == [rows(batches.at(i)) for i in range(30)]
    # Validation: every batch, shortest first; or `limit` of them spread over the lengths.
    every = [rows(b) for b in batches.in_order()]
    assert every == sorted(every) and len(every) == 10
    assert [rows(b) for b in batches.in_order(3)] == [every[0], every[3], every[6]]


@pytest.mark.skipif(not shared_available(), reason="needs ../shared (Qwen's templates)")
@pytest.mark.parametrize("template", ["chat_template_instruct_2507.jinja",
                                      "chat_template_qwen3_hybrid.jinja"])
def test_mask_with_qwens_own_templates(tiny_f32, template, tmp_path):
    from qwen_mlx.finetune.data import Example
    from qwen_mlx.models.loader import TOKENIZER_FILES

    # a folder of its own with the template beside the tokenizer, as a checkpoint has it (a
    # loaded tokenizer is shared by the folders with its files: changing it in place once
    # gave a later test's model, in the same worker, Instruct-2507's template)
    for path in tiny_f32.iterdir():
        if path.name in TOKENIZER_FILES or path.name == "config.json":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    text = (SHARED / "qwen3" / "reference" / template).read_text()
    (tmp_path / "chat_template.jinja").write_text(text)
    tok = load_tokenizer(tmp_path, ModelSpec.of_folder(tmp_path).eos_ids)
    assert tok.chat_template == text
    encoded = Encoder(tok).encode("messages", Example(CONVERSATION, "t:1"))
    assert [tok.decode(s) for s in spans(encoded.ids, encoded.mask)] == [
        "Paris.<|im_end|>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call><|im_end|>',
        "Sunny and 21 C.<|im_end|>"]
