"""Bad checkpoints: each failure is one line, a non-zero exit, and no output left behind."""

from __future__ import annotations

import json
import os

import mlx.core as mx
import pytest
from click.testing import CliRunner

from qwen_mlx.cli import main


def convert_cli(src, out, *extra):
    return CliRunner().invoke(main, ["convert", str(src), "-o", str(out), *extra])


def assert_fails_cleanly(result, out, message):
    assert result.exit_code == 1
    assert result.stderr == f"error: {message}\n"
    assert "Traceback" not in result.output
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []


def test_missing_folder(tmp_path):
    out = tmp_path / "out"
    result = convert_cli(tmp_path / "nope", out)
    assert_fails_cleanly(result, out, f"model folder {tmp_path / 'nope'} does not exist")
    assert not out.exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    result = convert_cli(tmp_path / "empty", out)
    assert_fails_cleanly(result, out, f"{tmp_path / 'empty'} has no config.json: not a model "
                                      "folder")


def test_not_qwen3(tiny_hf, copy_of):
    src = copy_of(tiny_hf)
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (src / "config.json").write_text(json.dumps(config))
    out = src.parent / "out"
    assert_fails_cleanly(convert_cli(src, out), out,
                         f"{src} is a LlamaForCausalLM model; qwen-mlx supports Qwen3ForCausalLM "
                         "and Qwen3Model only")
    assert not out.exists()


def test_truncated_safetensors(tiny_hf, copy_of):
    src = copy_of(tiny_hf)
    shard = src / "model.safetensors"
    size = shard.stat().st_size
    os.truncate(shard, size - 1000)
    out = src.parent / "out"
    assert_fails_cleanly(convert_cli(src, out), out,
                         f"{shard} is truncated: {size - 1000:,} bytes, its header promises "
                         f"{size:,} (download or copy it again)")
    assert not out.exists()


def test_missing_tokenizer(tiny_hf, copy_of):
    src = copy_of(tiny_hf)
    (src / "tokenizer.json").unlink()
    out = src.parent / "out"
    assert_fails_cleanly(convert_cli(src, out), out,
                         f"{src} has no tokenizer (tokenizer.json is missing)")
    assert not out.exists()


@pytest.mark.parametrize("change, message", [
    ("drop", "tensor model.layers.1.mlp.up_proj.weight is missing"),
    ("reshape", "tensor model.layers.1.mlp.up_proj.weight has shape [64, 128], config implies "
                "[128, 64]"),
    ("extra", "unexpected tensor model.layers.9.mlp.up_proj.weight for a Qwen3 checkpoint"),
])
def test_tensor_table_must_match_the_config(tiny_hf, copy_of, change, message):
    src = copy_of(tiny_hf)
    weights = mx.load(str(src / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    if change == "drop":
        del weights[name]
    elif change == "reshape":
        weights[name] = weights[name].T
    else:
        weights["model.layers.9.mlp.up_proj.weight"] = weights[name]
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    out = src.parent / "out"
    assert_fails_cleanly(convert_cli(src, out), out, f"{src}: {message}")
    assert not out.exists()


def test_existing_output_is_kept_without_force_and_force_replaces_only_a_model(tiny_hf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert_fails_cleanly(convert_cli(tiny_hf, out), out,
                         f"output {out} already exists (use --force to replace it)")
    assert (out / "mine.txt").read_text() == "keep me"
    assert_fails_cleanly(convert_cli(tiny_hf, out, "--force", "--q8"), out,
                         f"--force will not replace {out}: it holds mine.txt; --force replaces "
                         f"only a model or adapter folder that qwen-mlx or mlx-lm wrote")
    assert (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    assert convert_cli(tiny_hf, out).exit_code == 0
    result = convert_cli(tiny_hf, out, "--force", "--q8")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8


def test_convert_without_output_goes_into_the_cache(tiny_hf, tmp_path):
    result = CliRunner().invoke(main, ["convert", str(tiny_hf), "--group-size", "32"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "qwen-mlx-home" / "models"
    (folder,) = out.iterdir()
    assert folder.name.startswith(f"local--{tiny_hf.name}--")
    assert result.stdout == f"{folder / 'q4-g32'}\n"
    assert (folder / "q4-g32" / "config.json").is_file()
