"""Training on the tiny checkpoint: it learns, it resumes exactly, its adapters load in
mlx-lm, and it refuses what it cannot do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from qwen_mlx.cli import main
from qwen_mlx.errors import QwenMlxError
from qwen_mlx.finetune import Stopped, TrainConfig, finetune, prepare
from qwen_mlx.finetune.memory import check
from qwen_mlx.finetune.trainer import StepReport, ValReport
from qwen_mlx.system.machine import GIB, Machine
from qwen_mlx.models.shapes import Shape
from qwen_mlx.models.shapes import config_for

FACTS = [(f"Code word {i}?", f"Word {i} is {w}.") for i, w in
         enumerate(["apple", "river", "stone", "cloud"])]


def write_data(path: Path, rows=FACTS) -> Path:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in rows))
    return path


def cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qwen_mlx", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def steps_of(output: Path) -> list[dict]:
    lines = [json.loads(x) for x in (output / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "loss" in x]


def test_memorization_loss_falls_by_half(tmp_path, tiny_f32):
    run = prepare({"model": str(tiny_f32), "data": str(write_data(tmp_path / "d.jsonl")),
                   "output": str(tmp_path / "out"), "iters": 16, "lr": 1e-2,
                   "batch_size": 2, "valid_split": 0.0, "save_every": 100})
    losses = [r.loss for r in run.train() if isinstance(r, StepReport)]
    assert len(losses) == 16
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses
    # The adapter is written at the end, and the log has a line per step.
    assert [x["step"] for x in steps_of(tmp_path / "out")] == list(range(1, 17))
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["lora_parameters"] == {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}
    assert config["num_layers"] == 2


def test_batch_with_accumulation_takes_the_same_step_as_one_big_batch(tmp_path, tiny_f32):
    data = str(write_data(tmp_path / "d.jsonl"))
    common = {"model": str(tiny_f32), "data": data, "iters": 2, "valid_split": 0.0,
              "lr": 1e-3}
    finetune(output=tmp_path / "big", batch_size=4, **common)
    finetune(output=tmp_path / "accum", batch_size=2, grad_accum=2, **common)
    big, accum = (mx.load(str(tmp_path / n / "adapters.safetensors")) for n in ("big", "accum"))
    assert big.keys() == accum.keys()
    for name in big:
        np.testing.assert_allclose(np.array(big[name]), np.array(accum[name]), atol=1e-5)
    assert [round(x["loss"], 4) for x in steps_of(tmp_path / "big")] == \
        [round(x["loss"], 4) for x in steps_of(tmp_path / "accum")]


def test_killed_then_resumed_equals_uninterrupted(tmp_path, tiny_f32):
    """SIGKILL mid-run loses only the steps since the checkpoint; --resume (given only the
    output folder) then ends where an uninterrupted run ends, curve and weights."""
    data = write_data(tmp_path / "d.jsonl")
    settings = ["--data", data, "--iters", 8, "--batch-size", 2, "--lr", "5e-3",
                "--dropout", "0.1", "--save-every", 2, "--val-every", 4,
                "--valid-split", "0.25", "--seed", 7]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    straight = cli("finetune", tiny_f32, *settings, "-o", whole)
    victim = cli("finetune", tiny_f32, *settings, "-o", broken)
    deadline = time.time() + 300
    while not list((broken / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert straight.wait() == 0, straight.stderr.read()
    # The newest complete checkpoint (an older one may survive a kill between the two).
    at = int(sorted((broken / "checkpoints").glob("step-*"))[-1].name[5:])
    assert at < 8
    resumed = cli("finetune", "--resume", "-o", broken)
    out, errors = resumed.communicate()
    assert resumed.returncode == 0, errors
    assert f"resuming at step {at} of 8" in errors
    a, b = steps_of(whole), steps_of(broken)
    assert [x["step"] for x in b] == list(range(1, 9))
    np.testing.assert_allclose([x["loss"] for x in b], [x["loss"] for x in a], rtol=1e-5)
    np.testing.assert_allclose([x["lr"] for x in b], [x["lr"] for x in a], rtol=1e-6)
    first, second = (mx.load(str(p / "adapters.safetensors")) for p in (whole, broken))
    for name in first:
        np.testing.assert_allclose(np.array(first[name]), np.array(second[name]), atol=1e-6)
    # Validation ran at 0, 4 and 8 in both, with the same results.
    vals = [[x["val_loss"] for x in map(json.loads, (p / "metrics.jsonl").read_text()
                                        .splitlines()) if "val_loss" in x] for p in (whole, broken)]
    assert len(vals[0]) == 3
    np.testing.assert_allclose(vals[1][-2:], vals[0][-2:], rtol=1e-5)


def test_ctrl_c_checkpoints_the_finished_step_and_resume_completes(tmp_path, tiny_f32):
    data = write_data(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    proc = cli("finetune", tiny_f32, "--data", data, "-o", out, "--iters", 40,
               "--batch-size", 2, "--save-every", 100, "--valid-split", 0)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()) \
            and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, errors = proc.communicate()
    assert proc.returncode == 130, errors
    stopped = int(errors.split("stopped at step ")[1].split()[0])
    assert 1 <= stopped < 40
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{stopped:07d}"]
    assert mx.load(str(out / "adapters.safetensors"))  # a complete adapter is in place
    result = CliRunner().invoke(main, ["finetune", "--resume", "-o", str(out), "--iters", "41"])
    assert result.exit_code == 1
    assert result.output == ("error: --iters 41 differs from the run being resumed (40); "
                             "start a new output folder to change it\n")


def test_adapters_load_in_mlx_lm_and_match_ours(tmp_path, tiny_f32):
    import mlx_lm

    from qwen_mlx import load

    out = finetune(str(tiny_f32), write_data(tmp_path / "d.jsonl"), tmp_path / "a",
                   iters=3, lr=1e-2, valid_split=0.0, rank=4, alpha=8,
                   targets=["q", "v", "down"], layers=1)
    theirs, _ = mlx_lm.load(str(tiny_f32), adapter_path=str(out))
    ours = load(tiny_f32, adapter=out)
    tokens = mx.array([[151644, 872, 198, 9707, 151645]])
    np.testing.assert_allclose(np.array(theirs(tokens)), np.array(ours.net(tokens)), atol=1e-4)
    plain = load(tiny_f32)
    assert not np.allclose(np.array(plain.net(tokens)), np.array(ours.net(tokens)), atol=1e-4)
    names = sorted(mx.load(str(out / "adapters.safetensors")))
    assert names == sorted(f"model.layers.1.{m}.{p}" for m in
                           ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
                           for p in ("lora_a", "lora_b"))


def test_qlora_on_a_4bit_model_with_a_config_file(tmp_path, tiny_q4_f32):
    """A YAML config sets the run; a flag overrides it; the base stays 4-bit."""
    import mlx.nn as nn
    import mlx_lm

    config = tmp_path / "run.yaml"
    config.write_text("rank: 4\nalpha: 4\niters: 5\nlr: 0.01\nvalid_split: 0\n"
                      "targets: q,v\n")
    out = tmp_path / "qlora"
    result = CliRunner().invoke(main, ["finetune", str(tiny_q4_f32), "--data",
                                       str(write_data(tmp_path / "d.jsonl")), "-o", str(out),
                                       "-c", str(config), "--iters", "3"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["lora_parameters"]["rank"] == 4 and saved["lora_parameters"]["scale"] == 1.0
    assert saved["training"]["iters"] == 3
    assert [x["step"] for x in steps_of(out)] == [1, 2, 3]
    model, _ = mlx_lm.load(str(tiny_q4_f32), adapter_path=str(out))
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q.linear, nn.QuantizedLinear)


@pytest.mark.parametrize("extra, message", [
    (["--iters", "2", "--epochs", "1"], "give --iters or --epochs, not both"),
    (["--targets", "q,x"], "unknown --targets x: use some of q,k,v,o,gate,up,down"),
    (["--layers", "9"], "--layers 9: the model has 2 layers"),
    (["--memory", "600MB"], "training needs about "),
])
def test_refusals_are_one_line(tmp_path, tiny_f32, extra, message):
    data = write_data(tmp_path / "d.jsonl")
    result = CliRunner().invoke(main, ["finetune", str(tiny_f32), "--data", str(data), "-o",
                                       str(tmp_path / "o"), *extra])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {message}") and result.output.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_output_folder_rules(tmp_path, tiny_f32):
    data = write_data(tmp_path / "d.jsonl")
    out = finetune(str(tiny_f32), data, tmp_path / "run", iters=1, valid_split=0.0)
    with pytest.raises(QwenMlxError, match="holds a training run; add --resume"):
        finetune(str(tiny_f32), data, out, iters=1, valid_split=0.0)
    with pytest.raises(QwenMlxError, match="nothing to resume"):
        finetune(str(tiny_f32), data, tmp_path / "fresh", resume_run=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(QwenMlxError, match="exists and is not empty"):
        finetune(str(tiny_f32), data, other, iters=1)
    write_data(data, FACTS[:3])
    with pytest.raises(QwenMlxError, match="the training data changed"):
        finetune(output=out, resume_run=True)
    # A finished run resumes to nothing.
    write_data(data)
    run = prepare({"output": str(out)}, resume_run=True)
    assert (run.step, run.steps, list(run.train())) == (1, 1, [])


def test_a_full_disk_is_named_and_the_run_it_left_starts_again(tmp_path, tiny_f32,
                                                                monkeypatch):
    """Before: ``internal error: RuntimeError: [write] Unable to write 1777 bytes``, and then
    the leftover (metrics.jsonl, an empty checkpoints/) made the same command say "exists
    and is not empty" and --resume "nothing to resume"."""
    import shutil as shutil_module
    from collections import namedtuple

    data, out = write_data(tmp_path / "d.jsonl"), tmp_path / "run"
    real_save = mx.save_safetensors

    def full(path, *args, **kwargs):  # what MLX raises on a full disk (seen on a tmpfs)
        open(path, "wb").write(b"\0" * 10)
        raise RuntimeError("[write] Unable to write 1777 bytes to file.")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(mx, "save_safetensors", full)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 4096))
    result = CliRunner().invoke(main, ["finetune", str(tiny_f32), "--data", str(data), "-o",
                                       str(out), "--iters", "2", "--valid-split", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.splitlines()[-1] == \
        f"error: No space left on device: {out}/checkpoints/step-0000002/adapters.safetensors"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "metrics.jsonl"]
    assert list((out / "checkpoints").iterdir()) == []  # the partial checkpoint is gone
    monkeypatch.setattr(mx, "save_safetensors", real_save)
    with pytest.raises(QwenMlxError, match=r"nothing to resume in .* \(the run stopped before "
                                           "its first; the same command without --resume"):
        finetune(output=out, resume_run=True)
    result = CliRunner().invoke(main, ["finetune", str(tiny_f32), "--data", str(data), "-o",
                                       str(out), "--iters", "2", "--valid-split", "0"])
    assert result.exit_code == 0, result.output
    assert f"note: {out} holds a run stopped before its first checkpoint: starting it again" \
        in result.output
    assert [s["step"] for s in steps_of(out)] == [1, 2]  # the log starts from step 1 again


def test_memory_estimate_refuses_with_a_suggestion_that_fits():
    shape = Shape.of(config_for("qwen3-4b"))
    mac16 = Machine("Apple M4", 16 * GIB, 12 * GIB, "test", 120.0, "test")
    kwargs = dict(weights=2_262_920_192, trainable=16_515_072, dtype_bytes=2, machine=mac16)
    with pytest.raises(QwenMlxError) as refused:
        check(shape, TrainConfig(batch_size=4), 2048, False, **kwargs)
    text = str(refused.value)
    assert text.startswith("training needs about ") and "of a 12.00 GiB budget; try " in text
    hint = text.split("; try ")[1].split(" (or --force")[0]
    assert hint.startswith("--grad-checkpoint")
    # The suggestion is one that the estimate accepts.
    flags = hint.split()
    fixed = TrainConfig(batch_size=int(flags[flags.index("--batch-size") + 1])
                        if "--batch-size" in flags else 4, grad_checkpoint=True)
    width = int(flags[flags.index("--max-seq-len") + 1]) if "--max-seq-len" in flags else 2048
    assert check(shape, fixed, width, False, **kwargs).fits
    assert check(shape, TrainConfig(batch_size=4), 2048, True, **kwargs).fits is False


def test_stop_yields_stopped_after_a_checkpoint(tmp_path, tiny_f32):
    run = prepare({"model": str(tiny_f32), "data": str(write_data(tmp_path / "d.jsonl")),
                   "output": str(tmp_path / "o"), "iters": 5, "valid_split": 0.0})
    reports = list(run.train(stop=lambda: True))
    assert [type(r) for r in reports] == [StepReport, Stopped]
    assert (tmp_path / "o" / "checkpoints" / "step-0000001" / "state.json").is_file()
    assert not any(isinstance(r, ValReport) for r in reports)
    assert os.listdir(tmp_path / "o" / "checkpoints") == ["step-0000001"]


@pytest.mark.parametrize("slice_rows", [128, 8])
def test_loss_gradient_equals_plain_autograd_over_all_logits(tmp_path, tiny_f32, monkeypatch,
                                                             slice_rows):
    """The forward-computed head gradient (in slices) is the gradient of the plain loss."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map

    from qwen_mlx.finetune import loss
    from qwen_mlx.finetune.trainer import arrays

    monkeypatch.setattr(loss, "SLICE", slice_rows)
    run = prepare({"model": str(tiny_f32), "data": str(write_data(tmp_path / "d.jsonl")),
                   "output": str(tmp_path / "o"), "iters": 1, "valid_split": 0.0})
    model = run.trainer.model
    mx.random.seed(1)
    model.update(tree_map(lambda p: 0.01 * mx.random.normal(p.shape),
                          model.trainable_parameters()))
    batch = arrays(run.trainer.train.at(0))

    def plain(m, inputs, targets, select):
        logits = m(inputs).reshape(-1, m.args.vocab_size)[select]
        return nn.losses.cross_entropy(logits, targets.reshape(-1)[select]).sum()

    ours, grads = nn.value_and_grad(model, loss.loss_for_grad)(model, *batch)
    theirs, expected = nn.value_and_grad(model, plain)(model, *batch)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert ours.item() == pytest.approx(loss.loss_sum(model, *batch).item(), rel=1e-5)
    for (name, g), (_, e) in zip(tree_flatten(grads), tree_flatten(expected)):
        np.testing.assert_allclose(np.array(g), np.array(e), atol=1e-4, rtol=1e-4,
                                   err_msg=name)


def test_config_files(tmp_path):
    from qwen_mlx.finetune.config import read_config_file

    (tmp_path / "a.toml").write_text('rank = 16\ntargets = "q,v"\nmax-seq-len = 512\n')
    config = TrainConfig.from_dict(read_config_file(tmp_path / "a.toml"))
    assert (config.rank, config.targets, config.max_seq_len) == (16, ["q", "v"], 512)
    (tmp_path / "b.yaml").write_text("rank: [unclosed\n")
    with pytest.raises(QwenMlxError, match=r"^config .*b.yaml: while parsing"):
        read_config_file(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("rnak: 4\n")
    with pytest.raises(QwenMlxError, match=r"^config .*c.yaml: unknown key 'rnak' \(known: "):
        read_config_file(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("lr: 1e-4\nrank: 8.0\ngrad-checkpoint: true\n")
    assert read_config_file(tmp_path / "e.yaml") == {"lr": 1e-4, "rank": 8,
                                                    "grad_checkpoint": True}
    (tmp_path / "f.yaml").write_text("rank: eight\n")
    with pytest.raises(QwenMlxError, match=r"^config .*f.yaml: rank must be a whole number "
                                           r"\(got 'eight'\)$"):
        read_config_file(tmp_path / "f.yaml")
    (tmp_path / "d.txt").write_text("rank: 4\n")
    with pytest.raises(QwenMlxError, match=r"use a \.yaml, \.toml or \.json file"):
        read_config_file(tmp_path / "d.txt")


def test_epochs_set_the_steps_and_the_estimate_counts_the_adapter(tmp_path, tiny_f32):
    from mlx.utils import tree_flatten

    from qwen_mlx.finetune.run import lora_parameter_count

    data = str(write_data(tmp_path / "d.jsonl"))
    base = {"model": str(tiny_f32), "data": data, "valid_split": 0.0, "batch_size": 2}
    assert prepare({**base, "output": str(tmp_path / "a"), "epochs": 1}).steps == 2
    assert prepare({**base, "output": str(tmp_path / "b")}).steps == 6  # 3 epochs
    run = prepare({**base, "output": str(tmp_path / "c"), "epochs": 1.5, "grad_accum": 2,
                   "rank": 4, "targets": ["k", "gate"], "layers": 1})
    assert run.steps == 2
    trainable = sum(v.size for _, v in tree_flatten(run.trainer.model.trainable_parameters()))
    shape = Shape.of(json.loads((tiny_f32 / "config.json").read_text()))
    assert trainable == lora_parameter_count(shape, run.config) == 4 * (64 + 32) + 4 * (64 + 128)


def test_grad_checkpoint_trains_the_same_weights(tmp_path, tiny_f32):
    from qwen_mlx.finetune.trainer import checkpoint_layers

    data = str(write_data(tmp_path / "d.jsonl"))
    common = {"model": str(tiny_f32), "data": data, "iters": 2, "valid_split": 0.0,
              "lr": 1e-2}
    finetune(output=tmp_path / "plain", **common)
    finetune(output=tmp_path / "ckpt", grad_checkpoint=True, **common)
    plain, ckpt = (mx.load(str(tmp_path / n / "adapters.safetensors")) for n in ("plain", "ckpt"))
    assert plain.keys() == ckpt.keys()
    for name in plain:
        np.testing.assert_allclose(np.array(plain[name]), np.array(ckpt[name]), atol=1e-5)
    # Only the layers given are changed, and only their own class.
    import mlx.nn as nn

    class Block(nn.Module):
        def __call__(self, x):
            return x

    a, b = Block(), Block()
    checkpoint_layers([a])
    assert type(a).__name__ == "CheckpointedBlock" and type(b) is Block
    assert isinstance(a, Block)
