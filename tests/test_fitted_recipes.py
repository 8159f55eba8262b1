"""Fitted recipes: mixed bits under a size budget (`convert --max-size/--bpw`) and the
distilled recipe (`convert --dwq`). Exact sizes from shapes, the bits mlx-lm reads back,
a resume that continues exactly, and refusals in one line. The fits here are two 64-token
chunks: what the recipes achieve is measured in bench/fitted_recipes.py."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import pytest
from click.testing import CliRunner

from qwen_mlx.quant import calibration

from qwen_mlx.quant import distill

from qwen_mlx.quant import memory as fit_memory

from qwen_mlx.quant import allocate as mixed_bits
from qwen_mlx.models.checkpoint import Checkpoint
from qwen_mlx.models.shapes import expected_shapes
from qwen_mlx.cli import main
from qwen_mlx.errors import QwenMlxError
from qwen_mlx.quant.fitted import Fit, Hooks, fitted_convert
from qwen_mlx.models.sizes import planned_bytes, write_order
from qwen_mlx.models.recipes import Recipe
from qwen_mlx.models.recipes import LEVELS, formats
from qwen_mlx.models.shapes import config_for

FAST = ["--chunk", 64, "--fit-tokens", 128, "--dtype", "float32"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def shape_4b() -> list:
    """Qwen3-4B's tensors from its config alone, in the order convert writes them."""
    return [SimpleNamespace(name=n, shape=s)
            for n, s in sorted(expected_shapes(config_for("4b")).items())]


def test_parse_size():
    """One parser for every size option: GB decimal, GiB binary."""
    from qwen_mlx.units import parse_size

    assert parse_size("1.8GB") == 1_800_000_000
    assert parse_size("1800 MB") == 1_800_000_000
    assert parse_size("2GiB") == 2 << 30
    with pytest.raises(QwenMlxError, match="cannot read '1.8 GBs' as a size"):
        parse_size("1.8 GBs")


def costs_like(tensors: list) -> dict:
    """Estimated KL per format as sensitivity.measure spreads it: a layer's scale times its
    quantization error, which falls 4x a bit and grows with the group size."""
    return {t.name.removesuffix(".weight"): {
        (b, g): math.prod(t.shape) * 4.0 ** -b * (g / 64) ** 0.5 * (1 + i % 5)
        for b, g in formats(t.shape[-1])} for i, t in enumerate(tensors) if len(t.shape) == 2}


def test_the_1_8gb_budget_is_met_exactly_on_the_real_4b_shape():
    """Sizes from the config: uniform q3 fits 1.8 GB and q4 does not, so the budget is spent
    between them, to within the smallest step any layer could take."""
    tensors = shape_4b()
    q3, q4, q8 = (planned_bytes(tensors, Recipe(bits=b)) for b in (3, 4, 8))
    assert q3 == 1_760_238_480 and q4 == 2_263_022_600  # 2.26 GB: the figure
    assert q8 == 4_274_158_760  # the README's recipe table
    recipe = mixed_bits.allocate(tensors, Recipe(), costs_like(tensors),
                                 mixed_bits.Budget.size("1.8GB"))
    size = planned_bytes(tensors, recipe)
    # the smallest change of any layer: groups of 128 -> 64, two bfloat16 more per 128 weights
    smallest_step = min(math.prod(t.shape) // 32 for t in tensors if len(t.shape) == 2)
    assert 1_800_000_000 - smallest_step < size <= 1_800_000_000
    assert recipe.name == "mix-1.8gb"
    assert {b for _, b, _ in recipe.layers} | {recipe.bits} <= {3, 4}
    block = recipe.quantization
    assert all(block[n] == {"group_size": g, "bits": b, "mode": "affine"}
               for n, b, g in recipe.layers)
    assert mixed_bits.smallest(tensors, Recipe()) == 1_634_542_320  # 3-bit, groups of 128


def test_the_cheapest_loss_gets_the_bytes():
    """Two layers of one size, one ten times as sensitive: given one upgrade's bytes, the
    sensitive one takes it."""
    tensors = [SimpleNamespace(name=f"l{i}.weight", shape=(256, 256)) for i in (0, 1)]
    costs = {"l0": {f: 1.0 * 4.0 ** -f[0] * f[1] for f in formats(256)},
             "l1": {f: 10.0 * 4.0 ** -f[0] * f[1] for f in formats(256)}}
    floor = mixed_bits.smallest(tensors, Recipe())
    recipe = mixed_bits.allocate(tensors, Recipe(), costs,
                                 mixed_bits.Budget("test", max_bytes=floor + 256 * 256 // 8))
    def nbytes(layer: str) -> float:
        bits, group = recipe.format_for(layer)
        return 256 * 256 * (bits / 8 + 4 / group)

    assert nbytes("l1") > nbytes("l0")


def test_mixed_convert_writes_bits_mlx_lm_reads(tiny_hf):
    import mlx_lm

    r = run("generate", tiny_hf, "--recipe", "mix-4.5bpw-f32", "-p", "hi")
    assert r.exit_code == 1 and r.output == (
        f"error: mix-4.5bpw-f32 is a fitted recipe and {tiny_hf} has no such conversion yet; "
        f"make it with `qwen-mlx convert` (--max-size, --bpw, --dwq)\n")
    r = run("convert", tiny_hf, "--bpw", 4.5, *FAST, "--eval-tokens", 128)
    assert r.exit_code == 0, r.output
    out = Path(r.stdout.strip())
    assert out.name == "mix-4.5bpw-f32"
    tensors = write_order(Checkpoint.open(tiny_hf))
    params = sum(math.prod(t.shape) for t in tensors)
    disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert disk <= 4.5 * params / 8
    config = json.loads((out / "config.json").read_text())
    block = config["quantization"]
    layered = {k: v["bits"] for k, v in block.items() if isinstance(v, dict)}
    assert layered and set(layered.values()) <= set(LEVELS) - {block["bits"]}
    net, _ = mlx_lm.load(str(out))
    for name, bits in layered.items():
        module = net
        for part in name.split("."):
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        assert module.bits == bits
    assert json.loads((out / "qwen-mlx.json").read_text())["recipe"] == "mix-4.5bpw-f32"
    assert "bits per layer: " in r.stderr and "quality against the source: KL " in r.stderr
    assert json.loads((out / "quality.json").read_text())["tokens"] == 2 * 63
    # the cache finds it by its recipe's name, and generate says which recipe it ran
    r = run("generate", tiny_hf, "--recipe", "mix-4.5bpw-f32", "-p", "hi", "--max-tokens", 2,
            "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[-1])["recipe"] == "mix-4.5bpw-f32"


@pytest.mark.parametrize("args, message", [
    (["--max-size", "1MB"], "a budget of 0.001 GB is below the smallest size this model can "
                            "have, {floor} GB (every layer at 3 bits, in the largest groups)"),
    (["--max-size", "1GB", "--bits", "4"], "--max-size chooses the bits of each layer; drop "
                                           "--bits"),
    (["--bpw", "4", "--q8"], "--bpw chooses the bits of each layer; drop --q8"),
    (["--max-size", "1GB", "--bpw", "4"], "--max-size and --bpw contradict each other; give "
                                          "one"),
    (["--bpw", "1"], "--bpw 1 is out of range: give bits per weight between 3 and 10 (4.5 is "
                     "uniform 4-bit with groups of 64)"),
    (["--dwq", "--q8"], "--dwq trains the scales of layers below 8 bits; 8-bit has none (use "
                        "--q4, --bits 3..6, or --max-size)"),
    (["--dwq", "--no-quantize"], "--dwq and --no-quantize contradict each other; give one"),
    (["--teacher-tokens", "100"], "--teacher-tokens needs a fitted recipe (--max-size, --bpw "
                                  "or --dwq)"),
    (["--dwq", "--fit-tokens", "10"], "--fit-tokens must be at least 512 (one --chunk)"),
    (["--dwq", "--fit-tokens", "600"], "--dwq needs at least two chunks of fit text (one to "
                                       "train on, one to validate); give --fit-tokens of at "
                                       "least 1024"),
])
def test_fitted_flags_refused_in_one_line(tiny_hf, tmp_path, args, message):
    floor = mixed_bits.smallest(write_order(Checkpoint.open(tiny_hf)), Recipe())
    r = run("convert", tiny_hf, "-o", tmp_path / "out", *args)
    assert r.exit_code == 1 and r.output == f"error: {message.format(floor=f'{floor / 1e9:.3f}')}\n"
    assert not (tmp_path / "out").exists()


def test_the_memory_check_names_the_phase():
    """Qwen3-4B from its config: the teacher pass holds the bf16 source (8 GB), which a
    16 GB Mac's budget holds and an 8 GB one's does not."""
    phases = fit_memory.phases(shape_4b(), config_for("4b"), Recipe(), 512, mixed=True,
                               distilled=True)
    assert max(phases, key=phases.get) == "teacher pass"
    fit_memory.check(phases, "16GiB")  # a "16 GB" Mac
    with pytest.raises(QwenMlxError, match=r"^this recipe's teacher pass needs about 7.5 GiB, "
                                           r"more than this machine's 6.0 GiB budget"):
        fit_memory.check(phases, "8GiB")


def _scales(folder: Path) -> dict[str, mx.array]:
    arrays = {}
    for f in sorted(folder.glob("*.safetensors")):
        arrays.update(mx.load(str(f)))
    return arrays


def test_dwq_changes_the_quantized_layers_only_and_not_the_size(tiny_hf, tiny_q4_f32,
                                                                 tmp_path):
    """Rounding and scales change in every quantized layer (the codes by GPTQ, the scales
    by the refit and training; the tied embedding keeps its codes, its rows being the input
    embeddings too); shapes, types, the norms and the bytes do not."""
    out = tmp_path / "dwq"
    r = run("convert", tiny_hf, "-o", out, "--dwq", "--dwq-epochs", 1, *FAST[:2],
            "--fit-tokens", 192, *FAST[4:], "--eval-tokens", 128)
    assert r.exit_code == 0, r.output
    plain, tuned = _scales(tiny_q4_f32), _scales(out)
    assert plain.keys() == tuned.keys()
    assert all(plain[k].shape == tuned[k].shape and plain[k].dtype == tuned[k].dtype
               for k in plain)
    changed = {k for k in plain if not mx.array_equal(plain[k], tuned[k]).item()}
    quantized = {k for k in plain if k.endswith(".scales")}
    assert changed == {k.replace(".scales", part) for k in quantized
                       for part in (".weight", ".scales", ".biases")} - \
        {"model.embed_tokens.weight"}
    assert sum(a.nbytes for a in plain.values()) == sum(a.nbytes for a in tuned.values())
    record = json.loads((out / "qwen-mlx.json").read_text())
    assert record["recipe"] == "q4-dwq-f32" and record["distilled"]["steps"] == 2
    assert record["distilled"]["rounding"] == "gptq"
    run_ = record["distilled"]  # two chunks trained on, one validated: the best step kept
    assert run_["kept_step"] in (0, 2) and run_["validation_kl_before"] > 0
    assert "validation KL " in r.stderr
    # stderr is not a terminal here: no bar, a line per step
    assert [line.split(",")[0] for line in r.stderr.splitlines()
            if line.startswith("distilling step ")] == ["distilling step 1/2",
                                                         "distilling step 2/2"]
    quality = json.loads((out / "quality.json").read_text())
    assert quality["before_distillation"]["tokens"] == quality["tokens"] == 2 * 63
    assert "before distillation: KL" in (out / "README.md").read_text()
    work = Path(os.environ["QWEN_MLX_HOME"]) / "work"
    assert not work.exists() or not list(work.iterdir())  # nothing left behind


def _stop_at(call: int):
    """A ``stopping`` that says yes on its ``call``-th question."""
    asked = iter(range(1, 10**6))
    return lambda: next(asked) == call


def test_a_stopped_distillation_resumes_exactly(tiny_hf, tmp_path):
    """Stopped after the rounding's first layer, then after the first training step: no
    output, the work kept; the same call continues and ends with the same weights and
    scales as a run that never stopped."""
    fit = Fit(distil=True, epochs=1, chunk=64, fit_tokens=192)
    base = Recipe(dtype="float32")
    whole = tmp_path / "whole"
    fitted_convert(tiny_hf, whole, base, fit)
    out = tmp_path / "stopped"
    work = distill.work_folder(tiny_hf, out, base)
    phases: list[str] = []
    with pytest.raises(distill.Stopped, match=r"^stopped during the error-corrected rounding; "
                                              r"the same command resumes from the next layer"):
        fitted_convert(tiny_hf, out, base, fit, hooks=Hooks(stopping=_stop_at(1)))
    assert sorted(f.name for f in (work / "gptq").iterdir()) == ["layer-000.safetensors"]
    # asked after layers 0 and 1, then after the first step
    with pytest.raises(distill.Stopped, match=r"^stopped at step 1 of 2; the same command "
                                              r"resumes from there"):
        fitted_convert(tiny_hf, out, base, fit, hooks=Hooks(stopping=_stop_at(3)))
    assert not out.exists()
    assert (work / "checkpoint" / "state.json").is_file()
    fitted_convert(tiny_hf, out, base, fit, hooks=Hooks(phase=phases.append))
    assert "resuming at step 1 of 2" in phases
    a, b = _scales(whole), _scales(out)
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert not distill.work_folder(tiny_hf, out, base).exists()


def test_teacher_text_is_the_sources_own_and_repeatable(tiny_hf):
    """Sampled from the source through its chat template, the same for the same seed, and
    put first in the fit set."""
    from qwen_mlx.models.loader import load_tokenizer

    text = calibration.teacher_text(tiny_hf, 20)
    assert text.startswith("<|im_start|>")
    chunks = calibration.fit_chunks(tiny_hf, 64, teacher_tokens=20)
    tokens = load_tokenizer(tiny_hf, []).encode(text, add_special_tokens=False)
    n = min(len(tokens) - 1, 64)  # the last token may merge with the blank line after it
    assert chunks[0][:n] == tokens[:n]
    assert len(chunks) > len(calibration.fit_chunks(tiny_hf, 64))


def test_ctrl_c_during_dwq_saves_progress_and_the_same_command_resumes(tiny_hf, tmp_path):
    """A real SIGINT to `convert --dwq`: exit 130 after the step in flight, no output folder,
    a checkpoint; the same command continues from it and lands the model."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "dwq"
    args = [sys.executable, "-m", "qwen_mlx", "convert", str(tiny_hf), "-o", str(out), "--dwq",
            "--dwq-epochs", "2", "--chunk", "64", "--fit-tokens", "192", "--dtype", "float32",
            "--no-eval"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    work = Path(os.environ["QWEN_MLX_HOME"]) / "work"
    deadline = time.time() + 300
    while not list(work.glob("dwq-*/gptq/head.safetensors")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, errors = proc.communicate()
    assert proc.returncode == 130, errors
    assert "stopped at step 1 of 4; the same command resumes from there" in errors
    assert errors.rstrip().endswith("progress saved")
    assert not out.exists() and list(work.glob("dwq-*/checkpoint/state.json"))
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming at step 1 of 4" in done.stderr and done.stdout == f"{out}\n"
    assert json.loads((out / "qwen-mlx.json").read_text())["distilled"]["steps"] == 4
    assert not list(work.iterdir())


def _uniform_costs(tensors, costs, limit) -> dict:
    """The estimated cost of every uniform recipe (one format for all layers) that fits."""
    from qwen_mlx.quant.allocate import _quantized, with_formats

    shapes = _quantized(tensors, Recipe())
    shared = set.intersection(*(set(costs[n]) for n in shapes))
    out = {}
    for f in shared:
        chosen = dict.fromkeys(shapes, f)
        if planned_bytes(tensors, with_formats(Recipe(), chosen, "u")) <= limit:
            out[f] = sum(costs[n][f] for n in shapes)
    return out


@pytest.mark.parametrize("shape, flavour", [("tiny", "plain"), ("tiny", "steep embedding"),
                                            ("4b", "plain")])
def test_a_mix_is_never_estimated_worse_than_a_uniform_recipe_that_fits(shape, flavour):
    """The knapsack is solved exactly over a byte grid and uniform recipes compete: at q4's
    size the mix costs at most q4's estimate (a greedy and a price fill once chose a mix that
    lost to q4: an embedding at 3 bits and every linear layer at 8, 1.29x q4's exact KL)."""
    from qwen_mlx.quant.allocate import _quantized

    tensors = shape_4b() if shape == "4b" else [
        SimpleNamespace(name=n, shape=s) for n, s in sorted(expected_shapes(
            config_for(shape)).items())]
    costs = costs_like(tensors)
    if flavour == "steep embedding":  # the embedding hurts a lot below 4 bits
        costs["model.embed_tokens"] = {(b, g): c * (50 if b < 4 else 1) for (b, g), c in
                                       costs["model.embed_tokens"].items()}
    shapes = _quantized(tensors, Recipe())
    for bits in (3, 4, 5):
        limit = planned_bytes(tensors, Recipe(bits=bits))
        recipe = mixed_bits.allocate(tensors, Recipe(), costs,
                                     mixed_bits.Budget(f"{limit}b", max_bytes=limit))
        chosen = {n: recipe.format_for(n) for n in shapes}
        cost = sum(costs[n][f] for n, f in chosen.items())
        uniform = _uniform_costs(tensors, costs, limit)
        assert (bits, 64) in uniform and cost <= min(uniform.values()) * (1 + 1e-12)
        assert planned_bytes(tensors, recipe) <= limit


def test_the_scale_refit_stays_within_its_estimate_at_4b_width():
    """GPTQ's least-squares scale refit on Qwen3-4B's widest input (down_proj, 9,728
    columns, groups of 32): solved in row blocks whose measured peak (two blocks here) stays
    within the estimate fit_memory counts, and the estimate is not loose by more than 3x. All
    2,560 rows at once took 3.8 GB for each copy of the normal equations."""
    from qwen_mlx.quant.gptq import refit_bytes, refit_rows, refit_scales

    cols, group = 9728, 32
    rows = 2 * refit_rows(cols, group)
    mx.random.seed(0)
    w = mx.random.normal((rows, cols)) * 0.02
    x = mx.random.normal((256, cols))
    h = x.T @ x
    codes = mx.random.randint(0, 16, (rows, cols)).astype(mx.float32)
    s, b = mx.ones((rows, cols // group)) * 0.01, mx.zeros((rows, cols // group))
    mx.eval(w, h, codes, s, b)
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(refit_scales(w, h, codes, s, b, group))
    peak = mx.get_peak_memory() - base
    assert peak <= refit_bytes(cols, group) <= 3 * peak
    assert fit_memory.rounding_bytes(shape_4b(), Recipe(group_size=32)) >= \
        refit_bytes(cols, group) + cols * cols * 4  # counted with down_proj's moment
