"""`qwen-mlx eval` and the quality line of `qwen-mlx convert`: exact where the answer is
known (a model against itself), ordered where it must be (8-bit loses less than 4-bit), and
refusals in one line."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from qwen_mlx.cli import main
from qwen_mlx.evaluate.quality import built_in_text

TEXT = built_in_text()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def evaluate(model, *extra) -> dict:
    r = run("eval", model, "--chunk", 128, "--max-tokens", 256, "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_a_model_against_its_own_weights_loses_nothing(tiny_f32, tiny_hf):
    """float32 of the bf16 source holds the same numbers: KL 0, every top-1 the same."""
    got = evaluate(tiny_f32, "--reference", tiny_hf)
    assert got["tokens"] == 2 * 127 and got["chunk"] == 128
    assert got["kl_mean"] == 0 and got["kl_p99"] == 0 and got["top1_agreement"] == 1
    assert got["perplexity_ratio"] == 1 and got["perplexity"] == got["reference_perplexity"]


def test_eight_bits_lose_less_than_four(tiny_hf, tmp_path):
    kls = {}
    for bits in (8, 4):
        out = tmp_path / f"q{bits}"
        assert run("convert", tiny_hf, "-o", out, "--bits", bits, "--dtype", "float32",
                   "--no-eval").exit_code == 0
        got = evaluate(out)  # the reference defaults to the source it was converted from
        assert got["reference"] == str(tiny_hf)
        kls[bits] = got["kl_mean"]
    assert 0 < kls[8] < kls[4]


def test_convert_reports_its_quality(tiny_hf, tmp_path):
    out = tmp_path / "q4"
    r = run("convert", tiny_hf, "-o", out, "--dtype", "float32", "--eval-tokens", 512)
    assert r.exit_code == 0, r.output
    line = [s for s in r.stderr.splitlines() if s.startswith("quality against the source: KL ")]
    assert len(line) == 1 and line[0].endswith("over 511 tokens")
    record = json.loads((out / "quality.json").read_text())
    assert record["reference"] == str(tiny_hf) and record["tokens"] == 511
    assert line[0] == f"quality against the source: {quality_line(record)}"
    card = (out / "README.md").read_text()
    assert card.count("## Quality") == 1 and quality_line(record) in card
    r = run("convert", tiny_hf, "-o", tmp_path / "x", "--eval-tokens", 100)
    assert r.exit_code == 1 and r.output == \
        "error: --eval-tokens must be 0 (none) or at least 512 (one chunk)\n"


def quality_line(record: dict) -> str:
    from qwen_mlx.evaluate.quality import Quality

    fields = {k: record[k] for k in ("tokens", "perplexity", "reference_perplexity",
                                     "kl_mean", "kl_p99", "top1_agreement")}
    return Quality(**fields).line()


def test_refusals(tiny_q4_f32, tiny_hf, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_hf, other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["added_tokens"][0]["content"] = "<|other|>"
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    r = run("eval", tiny_q4_f32, "--reference", other)
    assert r.exit_code == 1 and r.output == (
        f"error: the reference {other} has another tokenizer than {tiny_q4_f32}: their "
        f"next-token distributions cannot be compared\n")
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.")
    r = run("eval", tiny_q4_f32, "--file", short)
    assert r.exit_code == 1 and r.output == (
        "error: the text is 5 tokens; at least 512 are needed (one chunk; --chunk sets its "
        "size)\n")


def test_embedding_scale_of_the_random_checkpoint(tmp_path):
    """make_checkpoint(embed_std=S) scales the embedding alone: every other tensor is the
    default checkpoint's, bit for bit."""
    import mlx.core as mx

    from qwen_mlx.testing import make_checkpoint

    plain, scaled = (mx.load(str(make_checkpoint(tmp_path / name, "tiny", **kw) /
                                 "model.safetensors"))
                     for name, kw in (("plain", {}), ("scaled", {"embed_std": 0.2})))
    name = "model.embed_tokens.weight"
    stds = [round(w[name].astype(mx.float32).std().item(), 2) for w in (plain, scaled)]
    assert stds == [0.99, 0.2]
    assert all(mx.array_equal(plain[k], scaled[k]).item() for k in plain if k != name)


def test_planted_outlier_channels(tmp_path):
    """make_checkpoint(outliers=N): the first layers' projections share N input channels
    20x larger than the rest; later layers have none."""
    import mlx.core as mx

    from qwen_mlx.testing import make_checkpoint

    weights = mx.load(str(make_checkpoint(tmp_path / "ck", "tiny", outliers=3,
                                          config_overrides={"num_hidden_layers": 3,
                                                            "max_window_layers": 3}) /
                          "model.safetensors"))

    def loudest(name: str, n: int = 3) -> set[int]:
        column = mx.abs(weights[name].astype(mx.float32)).mean(axis=0)
        return set(mx.argsort(-column)[:n].tolist())

    first = {frozenset(loudest(f"model.layers.0.{p}")) for p in ("self_attn.q_proj.weight",
                                                      "self_attn.k_proj.weight",
                                                      "mlp.gate_proj.weight")}
    assert len(first) == 1  # the same three channels in every projection of the layer
    (channels,) = first
    column = mx.abs(weights["model.layers.0.mlp.up_proj.weight"].astype(mx.float32)).mean(0)
    rest = [c for c in range(column.size) if c not in channels]
    assert min(column[c].item() for c in channels) > 10 * max(column[c].item() for c in rest)
    later = mx.abs(weights["model.layers.2.mlp.up_proj.weight"].astype(mx.float32)).mean(0)
    assert later.max().item() < 3 * later.mean().item()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "lm_head"])
def test_eval_is_exact_against_an_independent_full_vocabulary_computation(tmp_path, tied):
    """On a checkpoint whose reference spreads its mass (embedding std 0.2: logits of std
    about 3, as a trained model's), `eval --json` equals KL computed here over the whole
    vocabulary from both models loaded with mlx_lm.load, summed in numpy float64, on the
    same chunks (within 1e-4 relative); the top-64 figure was 20x lower. Eval reads the
    output layer in vocabulary slices, the embedding's when tied and lm_head's when not."""
    import mlx.core as mx
    import mlx_lm
    import numpy as np

    from qwen_mlx.evaluate import quality
    from qwen_mlx.testing import make_checkpoint

    source = make_checkpoint(tmp_path / "hf", "tiny", embed_std=0.2,
                             config_overrides={"tie_word_embeddings": tied})
    assert ("lm_head.weight" in mx.load(str(source / "model.safetensors"))) is not tied
    out = tmp_path / "q4"
    assert run("convert", source, "-o", out, "--dtype", "float32", "--no-eval").exit_code == 0
    got = evaluate(out)
    parts = quality.prepare(out, source, quality.built_in_text(), chunk=128, limit=256)

    def logprobs(folder) -> list[np.ndarray]:
        model, _ = mlx_lm.load(str(folder))
        model.set_dtype(mx.float32)  # as eval computes on the CPU (bfloat16 is emulated)
        rows = []
        for chunk in parts:
            logits = model(mx.array(chunk)[None])[0, :-1].astype(mx.float32)
            x = np.array(logits, dtype=np.float64)
            rows.append(x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1,
                                                                        keepdims=True))
                        - x.max(-1, keepdims=True))
        return rows

    ref, cand = logprobs(source), logprobs(out)
    kl = np.concatenate([(np.exp(p) * (p - q)).sum(-1) for p, q in zip(ref, cand)])
    top1 = np.concatenate([p.argmax(-1) == q.argmax(-1) for p, q in zip(ref, cand)])
    nll = [-np.concatenate([r[np.arange(len(c) - 1), c[1:]] for r, c in zip(rows, parts)])
           for rows in (ref, cand)]
    assert got["tokens"] == kl.size == 254
    assert abs(got["perplexity"] / np.exp(nll[1].mean()) - 1) <= 1e-5
    assert abs(got["reference_perplexity"] / np.exp(nll[0].mean()) - 1) <= 1e-5
    assert abs(got["kl_mean"] - kl.mean()) <= 1e-4 * kl.mean()
    assert abs(got["kl_p99"] - np.percentile(kl, 99)) <= 1e-4 * np.percentile(kl, 99)
    assert got["top1_agreement"] == top1.mean()


def test_the_distillation_loss_is_least_at_the_teacher(tiny_f32):
    """Softened (temperature 2), the student is renormalised over the teacher's top-k as
    the teacher is: the teacher against itself scores 0 (it scored its own tail mass
    before), and at temperature 1 the top-k-plus-tail form is 0 too."""
    import mlx.core as mx

    from qwen_mlx.evaluate import quality
    from qwen_mlx.models.loader import load_weights
    from qwen_mlx.quant import targets

    parts = quality.prepare(tiny_f32, None, quality.built_in_text(), chunk=64, limit=64)
    net, _ = load_weights(tiny_f32)
    ref = targets.reference_pass(net, parts)
    for t in (1.0, 2.0):
        loss = targets.kl_to_reference(net, parts[0], mx.array(ref.ids[0]),
                                       mx.array(ref.logp[0]), temperature=t).item()
        assert abs(loss) < 1e-5, (t, loss)


def test_a_quality_pass_estimated_too_long_is_skipped_with_a_line(tiny_hf, tmp_path,
                                                                  monkeypatch):
    """On the CPU the pass on Qwen3-4B takes hours: a probe estimates it first, and one
    longer than the conversion took (and 2 minutes) is skipped, saying so and naming the
    flag that forces it."""
    from qwen_mlx.evaluate import quality

    parts = quality.prepare(tiny_hf, tiny_hf, quality.built_in_text(), chunk=128, limit=256)
    probe = quality.estimate_seconds(tiny_hf, [tiny_hf], parts)
    assert 0 < probe < 120
    monkeypatch.setattr(quality, "estimate_seconds", lambda *a, **k: 7200.0)
    out = tmp_path / "q4"
    r = run("convert", tiny_hf, "-o", out, "--dtype", "float32", "--eval-tokens", 512)
    assert r.exit_code == 0, r.output
    assert "quality not measured: the pass would take about 7,200 s here, longer than the " \
           "conversion did and 2 minutes (--force-eval measures anyway; `qwen-mlx eval` " \
           "measures later)" in r.stderr
    assert not (out / "quality.json").exists()
    r = run("convert", tiny_hf, "-o", tmp_path / "forced", "--dtype", "float32",
            "--eval-tokens", 512, "--force-eval")
    assert r.exit_code == 0 and (tmp_path / "forced" / "quality.json").is_file()
    r = run("convert", tiny_hf, "-o", tmp_path / "x", "--no-eval", "--force-eval")
    assert r.exit_code == 1 and r.output == "error: --force-eval and --no-eval (or " \
                                            "--eval-tokens 0) contradict each other; give one\n"
