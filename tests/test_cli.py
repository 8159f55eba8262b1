"""The command line: help and version, generate's output contract, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from qwen_mlx import __version__
from qwen_mlx.cli import main


def run(*args, input=None):
    return CliRunner().invoke(main, list(map(str, args)), input=input)


def test_version_and_help_on_every_command():
    assert run("--version").output.strip() == f"qwen-mlx, version {__version__}"
    for command in ([], ["convert"], ["generate"], ["chat"], ["serve"], ["plan"], ["bench"],
                    ["models"], ["models", "rm"], ["models", "prune"], ["models", "sources"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage: " in result.output
    assert "--q4" in run("convert", "--help").output
    for flag in ("--temp", "--top-p", "--top-k", "--min-p", "--seed", "--max-tokens", "--raw",
                 "--json", "--adapter"):
        assert flag in run("generate", "--help").output


def test_generate_streams_then_ends_with_one_json_record(tiny_model, tiny_q4_f32):
    result = run("generate", tiny_q4_f32, "-p", "Hi there", "--temp", "0", "--max-tokens", "12",
                 "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.rstrip("\n").split("\n")
    record = json.loads(lines[-1])
    expected = tiny_model.generate("Hi there", temperature=0, max_tokens=12)
    assert "\n".join(lines[:-1]) == expected.text
    assert record["generated_tokens"] == 12
    assert record["prompt_tokens"] == len(tiny_model.encode("Hi there")) == 10
    for key in ("prompt_tps", "generation_tps", "time_to_first_token", "peak_memory"):
        assert record[key] > 0
    assert record["finish_reason"] == "length"


def test_generate_reads_the_prompt_from_stdin_and_raw_skips_the_template(tiny_model,
                                                                         tiny_q4_f32):
    result = run("generate", tiny_q4_f32, "--raw", "--temp", "0", "--max-tokens", "5", "-q",
                 input="The capital of France is")
    assert result.exit_code == 0, result.output
    raw = tiny_model.generate("The capital of France is", raw=True, temperature=0, max_tokens=5)
    assert result.stdout == raw.text + "\n"
    assert result.stderr == ""


def test_sampling_flags_reach_the_engine(tiny_model, tiny_q4_f32):
    args = ("generate", tiny_q4_f32, "-p", "Hello", "--seed", "11", "--top-k", "5", "--temp",
            "1.2", "--max-tokens", "8", "-q")
    out = run(*args).stdout
    expected = tiny_model.generate("Hello", seed=11, top_k=5, temperature=1.2, max_tokens=8)
    assert out == expected.text + "\n"


@pytest.mark.parametrize("args, message", [
    (["generate", "{tiny}"], "error: no prompt: pass -p TEXT, --file PATH, or pipe the prompt on stdin"),
    (["generate", "{tiny}", "-p", "  "], "error: the prompt is empty"),
    (["generate", "./no/such/folder", "-p", "x"], "error: model folder ./no/such/folder does "
                                                  "not exist"),
    (["generate", "not a model", "-p", "x"], "error: model 'not a model' not found: not a folder,"
                                             " an alias (qwen3-4b-instruct-2507, qwen3-4b, "
                                             "qwen3-embedding-0.6b, qwen3-embedding-4b, "
                                             "qwen3-embedding-8b, qwen3-reranker-0.6b, "
                                             "qwen3-reranker-4b, qwen3-reranker-8b) or a "
                                             "Hugging Face repo id"),
    (["generate", "{tiny}", "-p", "x", "--recipe", "q7z"],
     "error: unknown recipe 'q7z' (examples: q4, q4-g32, q8, bf16, q4-f32, mix-1.8gb, "
     "q4-dwq)"),
    (["generate", "{tiny}", "-p", "x", "--adapter", "{tiny}"],
     "error: {tiny} holds no adapter (no adapter_config.json)"),
    (["convert", "{tiny}"], "error: {tiny} is already an MLX model; nothing to convert"),
])
def test_bad_input_gets_one_line(tiny_q4_f32, args, message):
    result = CliRunner().invoke(main, [a.format(tiny=tiny_q4_f32) for a in args], input="")
    assert result.exit_code == 1
    assert result.stderr == message.format(tiny=tiny_q4_f32) + "\n"


def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    proc = subprocess.run([sys.executable, "-m", "qwen_mlx", "convert", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {bad} is a LlamaForCausalLM model; qwen-mlx supports " \
                          "Qwen3ForCausalLM and Qwen3Model only\n"
    assert proc.stdout == ""


def test_the_command_line_starts_without_importing_mlx_lm():
    """`qwen-mlx --help` and friends stay fast: mlx-lm (and transformers) load on first use."""
    code = ("import sys, qwen_mlx.cli; "
            "print(sorted(m for m in ('mlx_lm', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout == "[]\n", proc.stderr


def test_generate_file_takes_its_request_from_a_pipe(tiny_model, tiny_q4_f32, tmp_path):
    from qwen_mlx.engine.documents import with_document

    doc = tmp_path / "doc.txt"
    doc.write_text("The sea is blue.\nThe sky is grey.\n")
    result = run("generate", tiny_q4_f32, "--file", doc, "--temp", "0", "--max-tokens", "6",
                 "--json", input="Summarize")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[-1])
    expected = tiny_model.generate(with_document(doc, "Summarize"), temperature=0, max_tokens=6)
    assert record["text"] == expected.text
    assert record["prompt_tokens"] == len(tiny_model.encode(with_document(doc, "Summarize")))
    alone = run("generate", tiny_q4_f32, "--file", doc, "--temp", "0", "--max-tokens", "6",
                "--json", input="")
    assert json.loads(alone.stdout.splitlines()[-1])["prompt_tokens"] == \
        len(tiny_model.encode(with_document(doc, None)))


def test_generate_stop_ends_the_reply_before_the_stop_text(tiny_model, tiny_q4_f32):
    full = tiny_model.generate("Hello", temperature=0, max_tokens=12).text
    stop = full[6:8]
    result = run("generate", tiny_q4_f32, "-p", "Hello", "--temp", "0", "--max-tokens", "12",
                 "--stop", stop, "--json")
    record = json.loads(result.stdout.splitlines()[-1])
    assert record["text"] == full[:full.index(stop)]
    assert result.stdout == record["text"] + "\n" + result.stdout.splitlines()[-1] + "\n"
    assert record["finish_reason"] == "stop"


def test_a_broken_chat_template_names_its_file(copy_of, tiny_q4_f32):
    model = copy_of(tiny_q4_f32)
    with open(model / "chat_template.jinja", "a") as f:
        f.write("{% if %}")
    result = run("generate", model, "-p", "Hi")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: the chat template in {model}/chat_template.jinja "
                                    "is broken: Expected an expression")
    assert result.stderr.count("\n") == 1
