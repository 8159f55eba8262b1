"""qwen-mlx fuse: the merged model computes what base plus adapter computes, loads in mlx-lm,
and keeps a 4-bit base 4-bit."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from click.testing import CliRunner

from qwen_mlx import load
from qwen_mlx.cli import main
from qwen_mlx.finetune import finetune
from qwen_mlx.finetune.fuse import PROMPTS, Agreement, fuse

from .test_finetune import write_data

TOKENS = mx.array([[151644, 872, 198, 9707, 11, 1879, 151645, 198]])


@pytest.fixture(scope="module")
def adapter_f32(tmp_path_factory, tiny_f32):
    tmp = tmp_path_factory.mktemp("fuse-adapter")
    return finetune(str(tiny_f32), write_data(tmp / "d.jsonl"), tmp / "adapter", iters=3,
                    lr=2e-2, valid_split=0.0)


def test_fused_float_model_equals_base_plus_adapter_and_loads_in_mlx_lm(
        tmp_path, tiny_f32, adapter_f32):
    import mlx_lm

    result = CliRunner().invoke(main, ["fuse", str(tiny_f32), "--adapter", str(adapter_f32),
                                       "-o", str(tmp_path / "fused"), "--verify-tokens", "12"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("fused 14 matrices into ") and "(f32)" in lines[0]
    assert lines[1].startswith("check: ") and "(100.0%) agree" in lines[1]
    assert lines[1].endswith("4 of 4 replies identical")
    assert lines[-1] == str(tmp_path / "fused")
    fused, _ = mlx_lm.load(str(tmp_path / "fused"))
    assert isinstance(fused.model.layers[0].self_attn.q_proj, nn.Linear)
    reference = load(tiny_f32, adapter=adapter_f32)
    np.testing.assert_allclose(np.array(fused(TOKENS)), np.array(reference.net(TOKENS)),
                               atol=1e-4)
    assert (tmp_path / "fused" / "tokenizer.json").is_file()
    assert "quantization" not in json.loads((tmp_path / "fused" / "config.json").read_text())


def test_fusing_into_4bit_requantizes_and_reports_agreement(tmp_path, tiny_q4_f32):
    import mlx_lm

    adapter = finetune(str(tiny_q4_f32), write_data(tmp_path / "d.jsonl"), tmp_path / "a",
                       iters=2, lr=2e-2, valid_split=0.0, targets=["q", "o"])
    report = fuse(str(tiny_q4_f32), adapter, tmp_path / "fused", verify_tokens=6)
    assert (report.format, report.layers) == ("q4-f32", 4)
    # The report against an independent count: each model's greedy replies, compared here.
    fused_model, reference = load(tmp_path / "fused"), load(tiny_q4_f32, adapter=adapter)
    matched = total = 0
    for prompt in PROMPTS:
        a = fused_model.generate(prompt, temperature=0.0, max_tokens=6).tokens
        b = reference.generate(prompt, temperature=0.0, max_tokens=6).tokens
        matched += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
    assert (report.agreement.matched, report.agreement.total) == (matched, total)
    assert total == 24  # 4 prompts x 6 tokens: no reply ended early
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    model, _ = mlx_lm.load(str(tmp_path / "fused"))
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    # The merge itself is exact before requantizing: --dequantize matches base plus adapter.
    exact = fuse(str(tiny_q4_f32), adapter, tmp_path / "exact", dequantize=True,
                 verify_tokens=0)
    assert exact.format == "f32" and exact.agreement is None
    plain, _ = mlx_lm.load(str(tmp_path / "exact"))
    reference = load(tiny_q4_f32, adapter=adapter)
    np.testing.assert_allclose(np.array(plain(TOKENS)), np.array(reference.net(TOKENS)),
                               atol=1e-3)


def test_q4_quantizes_a_float_base_found_from_the_adapter(tmp_path, tiny_f32, adapter_f32):
    report = fuse(None, adapter_f32, tmp_path / "q4", q4=True, verify_tokens=0)
    assert report.format == "q4-f32"
    assert json.loads((tmp_path / "q4" / "config.json").read_text())["quantization"]["bits"] == 4


@pytest.mark.parametrize("args, message", [
    (["--adapter", "{tmp}/none", "-o", "{tmp}/x"], "error: adapter folder {tmp}/none does not "
                                                    "exist"),
    (["--adapter", "{adapter}", "-o", "{tmp}/full", "--verify-tokens", "0"],
     "error: output {tmp}/full already exists (use --force to replace it)"),
    (["--adapter", "{adapter}", "-o", "{tmp}/full", "--force"],
     "error: --force will not replace {tmp}/full: it holds notes.txt; --force replaces only a "
     "model or adapter folder that qwen-mlx or mlx-lm wrote"),
    (["--adapter", "{adapter}", "-o", "{adapter}", "--force"],
     "error: output {adapter} is the model being read ({adapter}); choose another -o"),
    (["--adapter", "{adapter}", "-o", "{tmp}/x", "--q4", "--dequantize"],
     "error: give --q4 or --dequantize, not both"),
])
def test_fuse_errors_are_one_line(tmp_path, tiny_f32, adapter_f32, args, message):
    args = [a.format(tmp=tmp_path, adapter=adapter_f32) for a in args]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    adapter_files = sorted(p.name for p in adapter_f32.iterdir())
    result = CliRunner().invoke(main, ["fuse", str(tiny_f32), *args])
    assert result.exit_code == 1
    assert result.output == message.format(tmp=tmp_path, adapter=adapter_f32) + "\n"
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in adapter_f32.iterdir()) == adapter_files


def test_fuse_refuses_an_adapter_for_another_shape(tmp_path, tiny_kv, tiny_f32, adapter_f32):
    result = CliRunner().invoke(main, ["fuse", str(tiny_kv), "--adapter", str(adapter_f32),
                                       "-o", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot load adapter {adapter_f32} (trained on "
                                    f"{tiny_f32}) onto {tiny_kv} (qwen3, 2 layers of width 64, "
                                    f"4-bit): Adapter at {adapter_f32} contains incompatible "
                                    f"tensors: model.")
    assert "\n" not in result.output.rstrip("\n") and not result.output.endswith(":\n")
    assert result.output.count("\n") == 1


def test_agreement_counts_positions_of_the_longer_reply():
    a = Agreement()
    a.add([1, 2, 3], [1, 2, 3])
    a.add([1, 9, 3, 4], [1, 2, 3])
    assert (a.matched, a.total, a.identical, a.prompts) == (5, 7, 1, 2)
    assert a.first_difference == [None, 1]
    assert a.rate == pytest.approx(5 / 7)


def test_generate_with_an_adapter_alone_uses_its_recorded_base(tiny_f32, adapter_f32):
    """As fuse does: no MODEL means the model the adapter was trained on, not the default
    hub model."""
    args = ["--adapter", str(adapter_f32), "-p", "Hi", "--max-tokens", "6", "--temp", "0",
            "-q"]
    alone = CliRunner().invoke(main, ["generate", *args])
    named = CliRunner().invoke(main, ["generate", str(tiny_f32), *args])
    assert alone.exit_code == 0, alone.output
    assert alone.stdout == named.stdout and alone.stdout.strip()
