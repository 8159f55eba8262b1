"""Input the commands refuse in one line, before any work: stdin that is not UTF-8 (a chat
goes on), a document too long for the context (refused before it is tokenized), an adapter
folder without an adapter, eval limits that are not whole chunks, generate's thinking
switch. The output side of the fault matrix is test_faults.py and test_outputs_guarded.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .test_faults import TIMEOUT, cli, one_line_error


def _run_bytes(args, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_mlx", *map(str, args)], input=data,
                          capture_output=True, timeout=TIMEOUT)


def test_stdin_that_is_not_utf8_is_one_line_and_a_chat_goes_on(tiny_q4_f32):
    r = _run_bytes(["generate", tiny_q4_f32, "--max-tokens", "2"], b"caf\xe9 au lait\n")
    r = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())
    assert one_line_error(r) == "error: stdin is not UTF-8 text (byte 0xe9 at offset 3)"
    r = _run_bytes(["chat", tiny_q4_f32, "--jsonl", "--max-tokens", "2", "--temp", "0"],
                   b"Hi\n\xff\xfe\nHi again\n")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert len(records) == 3 and "reply" in records[0] and "reply" in records[2]
    assert records[1] == {"error": "stdin is not UTF-8 text (byte 0xff at offset 3)"}
    r = _run_bytes(["chat", tiny_q4_f32, "--max-tokens", "2", "-q"], b"Hi\n\xff\nHi\n")
    assert r.returncode == 0 and "Traceback" not in r.stderr.decode()
    assert "stdin is not UTF-8 text (byte 0xff at offset 3)" in r.stderr.decode()


def test_a_document_too_long_for_the_context_is_refused_before_it_is_tokenized(
        tiny_model, monkeypatch):
    """By its size first (no token is longer than 128 bytes), then by counting pieces and
    stopping once past the context: the tokenizer never sees the whole text."""
    from qwen_mlx.errors import ContextExceeded

    limit = tiny_model.context_length
    assert tiny_model.longest_token == 128
    huge = "x" * (limit * 128 + 1)
    with pytest.raises(ContextExceeded) as e:
        tiny_model.request(huge)
    assert str(e.value) == f"the prompt is {len(huge):,} bytes: at least {limit + 1:,} tokens " \
                           f"(no token is longer than 128 bytes); the context is {limit:,}"
    seen = []
    hf = tiny_model.tokenizer._tokenizer  # what mlx-lm's wrapper hands encode() to
    encode = hf.encode

    def counting(text, **kw):
        seen.append(len(text))
        return encode(text, **kw)

    monkeypatch.setattr(hf, "encode", counting)
    lines = "".join(f"Line {i} of a long document about rivers.\n" for i in range(200_000))
    with pytest.raises(ContextExceeded) as e:
        tiny_model.request([{"role": "user", "content": lines}])
    assert str(e.value).startswith("the prompt is over ") and \
        str(e.value).endswith(f"; the context is {limit:,}")
    assert sum(seen) < len(lines) // 4  # stopped early


def test_an_adapter_folder_is_checked_first_and_its_base_used(tiny_q4_f32, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert one_line_error(cli("generate", "--adapter", empty, "-p", "Hi")) == \
        f"error: {empty} holds no adapter (no adapter_config.json)"
    assert one_line_error(cli("generate", "--adapter", tmp_path / "nope", "-p", "Hi")) == \
        f"error: adapter folder {tmp_path / 'nope'} does not exist"


def test_eval_refuses_a_token_limit_that_is_not_whole_chunks(tiny_q4_f32):
    assert one_line_error(cli("eval", tiny_q4_f32, "--max-tokens", 256)) == \
        "error: --max-tokens 256 is not a whole number of --chunk 512 (each chunk is scored " \
        "whole): give 512, or another --chunk"
    assert one_line_error(cli("eval", tiny_q4_f32, "--max-tokens", 600, "--chunk", 256)) == \
        "error: --max-tokens 600 is not a whole number of --chunk 256 (each chunk is scored " \
        "whole): give 512 or 768, or another --chunk"


def test_generate_switches_a_hybrid_models_thinking(tiny_q4_f32):
    def record(*args):
        r = cli("generate", tiny_q4_f32, "-p", "Pick one", "--temp", "0", "--max-tokens", "8",
                "--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    on, off = record("--think"), record("--no-think")
    assert off["prompt_tokens"] == on["prompt_tokens"] + 4  # the empty <think></think> block
    assert record("--no-think", "--choice", "yes,no")["text"] in ("yes", "no")
    assert one_line_error(cli("generate", tiny_q4_f32, "-p", "x", "--raw", "--think")) == \
        "error: --think/--no-think needs the chat template; drop --raw"



def test_arguments_that_are_not_utf8_or_not_finite_are_one_line(tiny_q4_f32):
    """Before: ``internal error: TypeError: TextEncodeInput`` for the bytes, and nan, inf or
    1e400 taken as a temperature (garbage sampled)."""
    r = subprocess.run([sys.executable, "-m", "qwen_mlx", "generate", str(tiny_q4_f32), "-p",
                        b"hi\xff"], capture_output=True, text=True, timeout=TIMEOUT)
    assert one_line_error(r) == "error: --prompt is not UTF-8 text (byte 0xff at character 3)"
    # in this process: Python reads such bytes as surrogate escapes, as above
    for args, why in [(["--system", "\udcfeok"], "--system is not UTF-8 text (byte 0xfe at "
                                                "character 1)"),
                      (["--stop", "a", "--stop", "b\udcc3"], "--stop is not UTF-8 text (byte "
                                                            "0xc3 at character 2)"),
                      (["--temp", "nan"], "--temp must be a finite number, not nan"),
                      (["--temp", "inf"], "--temp must be a finite number, not inf"),
                      (["--temp", "1e400"], "--temp must be a finite number, not inf"),
                      (["--top-p", "nan"], "--top-p must be a finite number, not nan")]:
        r = cli("generate", tiny_q4_f32, "-p", "hi", *args)
        assert one_line_error(r) == f"error: {why}", args
    r = cli("chat", tiny_q4_f32, "--system", "\udcff")
    assert one_line_error(r) == "error: --system is not UTF-8 text (byte 0xff at character 1)"
    r = cli("serve", tiny_q4_f32, "--tool-timeout", "nan")  # every command's options
    assert one_line_error(r) == "error: --tool-timeout must be a finite number, not nan"


def test_symbolic_link_loops_are_named(tiny_hf, tmp_path):
    """Before: ``internal error: RuntimeError: Symlink loop`` for -o, and a MODEL that is a
    loop was "not a folder, an alias or a Hugging Face repo id"."""
    loop, dangling = tmp_path / "loop", tmp_path / "dangling"
    loop.symlink_to(loop)
    dangling.symlink_to(tmp_path / "gone")
    for out in (loop, loop / "model"):
        r = cli("convert", tiny_hf, "-o", out)
        assert one_line_error(r) == f"error: {out} is a loop of symbolic links"
    r = cli("generate", "loop", "-p", "hi", cwd=tmp_path)
    assert one_line_error(r) == "error: model folder loop is a loop of symbolic links"
    r = cli("generate", dangling, "-p", "hi")
    assert one_line_error(r) == \
        f"error: model folder {dangling} is a symbolic link to {tmp_path / 'gone'}, which " \
        "does not exist"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop"]
