"""`qwen-mlx bench`: the JSON record, the roofline arithmetic, random weights, mlx-lm."""

from __future__ import annotations

import json
import time
import math

import pytest
from click.testing import CliRunner

from qwen_mlx.benchmark.runs import bytes_per_token, random_target, roofline, weights_read_per_token
from qwen_mlx.cli import main
from qwen_mlx.cli.bench import parse_lengths
from qwen_mlx.engine import KVSpec
from qwen_mlx.errors import QwenMlxError
from qwen_mlx.system.machine import known_bandwidth
from qwen_mlx.engine.memory_plan import kv_bytes_per_token, weight_bytes_of_config
from qwen_mlx.models.shapes import Shape
from qwen_mlx.models.recipes import Recipe, parse_recipe
from qwen_mlx.models.shapes import config_for

FAST = ["--prompt-lengths", "32,64", "--depths", "0,96", "--gen-tokens", "8", "-n", "2",
        "--warmup", "1"]


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_roofline_arithmetic_for_qwen3_4b():
    config = config_for("qwen3-4b")
    weights = weight_bytes_of_config(config, Recipe(), 2)  # q4 g64, bf16 scales
    assert weights == 2_262_920_192  # "about 2.263 GB per token"
    assert kv_bytes_per_token(Shape.of(config), KVSpec(), 2) == 147_456
    assert kv_bytes_per_token(Shape.of(config), KVSpec(4), 2) == 41_472
    assert bytes_per_token(weights, 147_456, 2048) == 2_564_910_080  # + 2048 x 147,456
    # M4 Max (546 GB/s): 241.3 tok/s at depth 0, 212.9 at 2048; mlx-lm's published 134.5
    # tok/s for Qwen3-4B-Instruct-2507 q4 on an M4 Max is 55.7% of the depth-0 ceiling.
    m4_max = known_bandwidth("Apple M4 Max")
    assert round(roofline(m4_max, weights), 1) == 241.3
    assert round(roofline(m4_max, bytes_per_token(weights, 147_456, 2048)), 1) == 212.9
    assert round(100 * 134.5 / roofline(m4_max, weights), 1) == 55.7
    assert round(roofline(known_bandwidth("Apple M1"), weights), 1) == 30.2


def test_random_weights_match_the_planned_bytes():
    for recipe in ("q4", "q8", "bf16"):
        target = random_target("tiny", parse_recipe(recipe), kv=KVSpec(), prefill_step=512)
        assert weights_read_per_token(target.net, target.config) == \
            weight_bytes_of_config(config_for("tiny"), parse_recipe(recipe), 4)  # float32


def test_parse_lengths():
    assert parse_lengths("0,2048,8k,32K", "--depths", 0) == [0, 2048, 8192, 32768]
    for bad, message in [("1,x", "cannot read 'x'"), ("1m2", "cannot read '1m2'"),
                         ("", "cannot read ''"), ("0", "0 is below 1")]:
        with pytest.raises(QwenMlxError, match=message):
            parse_lengths(bad, "--prompt-lengths", 1)


def test_random_weights_json_has_every_field_and_consistent_numbers(tmp_path):
    out = tmp_path / "bench.json"
    start = time.perf_counter()
    result = run("bench", "shape:tiny", "--recipes", "q4,q8", *FAST, "--json", out)
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert "shape:tiny q4 random" in result.stdout and "shape:tiny q8 random" in result.stdout
    record = json.loads(out.read_text())
    assert set(record) == {"versions", "machine", "settings", "results", "comparisons",
                           "created"}
    assert set(record["versions"]) == {"qwen-mlx", "mlx", "mlx-lm"}
    machine = record["machine"]
    assert machine["memory_bytes"] > 0 and machine["bandwidth_gbs"] > 0
    assert machine["bandwidth_source"]
    assert record["settings"]["prompt_lengths"] == [32, 64]
    assert record["settings"]["depths"] == [0, 96] and record["settings"]["reps"] == 2
    assert [r["name"] for r in record["results"]] == ["shape:tiny q4 random",
                                                      "shape:tiny q8 random"]
    for r in record["results"]:
        assert r["load_seconds"] > 0 and r["engine"] == "qwen-mlx"
        for p in r["prefill"]:
            seconds = p["seconds"]["samples"]
            assert len(seconds) == 2 and all(s > 0 for s in seconds)
            # every timed prefill fits inside the whole command's wall time
            assert sum(seconds) < elapsed
            assert min(p["tokens_per_second"]["samples"]) > p["tokens"] / elapsed
        for d in r["decode"]:
            tps = d["tokens_per_second"]
            assert len(tps["samples"]) == 2 and min(tps["samples"]) > 8 / elapsed
        deeper = r["decode"][1]["bytes_per_token"] - r["decode"][0]["bytes_per_token"]
        # tiny in float32: 2 layers x (K, V) x 2 KV heads x 16 dims x 4 bytes = 512 per token
        assert deeper == 96 * 512
        memory = r["memory"]
        assert memory["weights"] > 0 and memory["kv_cache"] > 0 and memory["other"] >= 0
        assert memory["peak"] >= memory["weights"] + memory["kv_cache"]
    q4, q8 = record["results"]
    assert q4["memory"]["weights"] < q8["memory"]["weights"]


def test_compare_with_mlx_lm_and_plot(tiny_q4_f32, tmp_path):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    result = run("bench", tiny_q4_f32, *FAST, "--compare", "mlx-lm", "--kv-bits", "8",
                 "--kv-group-size", "32", "--json", out, "--plot", png)
    assert result.exit_code == 1  # the tiny fixture's head size is 16: no KV group fits
    assert "error: --kv-group-size 32 must divide the head size 16" in result.output
    result = run("bench", tiny_q4_f32, *FAST, "--compare", "mlx-lm", "--json", out,
                 "--plot", png)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert [r["engine"] for r in record["results"]] == ["qwen-mlx", "mlx-lm"]
    (comparison,) = record["comparisons"]
    assert set(comparison["prefill"]) == {"32", "64"} and set(comparison["decode"]) == {"0", "96"}
    ours, theirs = record["results"]
    assert comparison["decode"]["0"] == pytest.approx(
        ours["decode"][0]["tokens_per_second"]["mean"] /
        theirs["decode"][0]["tokens_per_second"]["mean"], rel=1e-2)
    assert math.isfinite(comparison["peak_memory"]) and comparison["peak_memory"] > 0
    assert "vs mlx-lm (ours/theirs): prefill 32: x" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_errors(tiny_q4_f32):
    cases = [(["bench", "no/such/model"], "error: model folder no/such/model does not exist"),
             (["bench", "shape:huge"], "error: unknown shape 'huge': use one of qwen3-4b, "
                                       "tiny, small, 0.6b"),
             (["bench", "shape:tiny", "--depths", "0,lots"],
              "error: --depths: cannot read 'lots' as a token count (use numbers like "
              "512,2048,8k)"),
             (["bench", tiny_q4_f32, "--depths", "300k"],
              f"error: {tiny_q4_f32.name} (q4-f32): 307,329 tokens (prompt or depth plus "
              f"generated) exceed the context limit of 262,144"),
             (["bench", "shape:tiny", "--compare", "mlx-lm"],
              "error: --compare mlx-lm needs a model on disk, not random weights")]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.strip().splitlines()[-1] == message


def test_summary_by_hand():
    from qwen_mlx.benchmark.runs import Summary

    s = Summary.of([1.0, 3.0, 5.0])
    assert (s.mean, s.std, s.samples) == (3.0, 2.0, [1.0, 3.0, 5.0])
    assert (Summary.of([4.0]).mean, Summary.of([4.0]).std) == (4.0, 0.0)


def test_bench_measures_the_loop_under_model_stream(tiny_model):
    """The qwen-mlx side of bench runs the Model users load, not a copy of its engine."""
    from qwen_mlx.benchmark.runs import Target

    target = Target.from_model("tiny", tiny_model, 0.0)
    assert target.model is tiny_model
    prompt = tiny_model.encode("Hello")
    steps, layers = target.steps(prompt, 6)
    measured = list(steps)
    served = tiny_model.generate(prompt, temperature=0, max_tokens=6).tokens
    assert len(measured) == 6 and measured[:len(served)] == served
    assert layers[0].offset == len(prompt) + 5  # the last token is never fed back


def test_a_roofline_share_above_100_percent_is_not_shown(capsys):
    """On the CPU the measured bandwidth bounds nothing (136% was shown for bfloat16): the
    table says why instead of a share above 100%."""
    from qwen_mlx.cli.bench import _print_table

    def result(name: str, percent: float) -> dict:
        return {"name": name, "engine": "qwen-mlx", "load_seconds": 0.5,
                "prefill": [{"tokens": 64, "tokens_per_second": {"mean": 900.0, "std": 1.0},
                             "time_to_first_token": 0.07}],
                "decode": [{"depth": 0, "tokens_per_second": {"mean": 30.0, "std": 0.5},
                            "roofline_percent": percent}],
                "memory": {"peak": 2e9, "weights": 1e9, "kv_cache": 1e8, "other": 9e8}}

    _print_table([result("bf16", 136.2), result("q4", 41.0)], [])
    out = capsys.readouterr().out
    assert "136" not in out and "30.0 ± 0.5 (*)" in out and "30.0 ± 0.5 (41%)" in out
    assert "* faster than the roofline of the measured memory bandwidth" in out


def test_speculative_runs_against_plain_decoding(tmp_path):
    """--draft (random weights equal to the model's: every proposal kept) and --lookup add
    a speculative record per model: acceptance, tokens per forward, both rates, the tokens
    checked equal to plain decoding's."""
    out = tmp_path / "spec.json"
    result = run("bench", "shape:tiny", "--prompt-lengths", "16", "--depths", "0",
                 "--gen-tokens", "8", "-n", "2", "--warmup", "0", "--draft", "shape:tiny",
                 "--draft-tokens", "3", "--json", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["settings"]["draft"] == "shape:tiny" and record["settings"]["draft_tokens"] == 3
    spec = record["results"][0]["speculative"]
    # 9 tokens, 3 proposals per step: 4 + 4 + 1 tokens from 3 forwards
    assert (spec["method"], spec["tokens"], spec["generated"]) == ("draft", 3, 9)
    assert spec["acceptance_rate"] == 1.0 and spec["tokens_per_forward"] == 3.0
    assert spec["identical"] and len(spec["runs"]) == 2
    assert spec["speedup"] == round(spec["decode_tps"] / spec["plain_decode_tps"], 3)
    assert "draft (3 per step): 100% of proposals kept, 3.00 tokens per forward" in \
        result.output
    result = run("bench", "shape:tiny", "--prompt-lengths", "16", "--depths", "0",
                 "--gen-tokens", "8", "-n", "1", "--warmup", "0", "--lookup", "2")
    assert result.exit_code == 0, result.output
    assert "lookup (2 per step)" in result.output and "differ" not in result.output


def test_speculative_bench_errors():
    for args, message in ((["--draft-tokens", "2"], "--draft-tokens needs --draft"),
                          (["--draft", "shape:tiny", "--lookup", "2"], "not both")):
        result = run("bench", "shape:tiny", *args)
        assert result.exit_code == 1 and message in result.output


def test_bench_embed_measures_batched_and_one_at_a_time(tiny_q4_f32, tmp_path):
    import statistics

    from qwen_mlx import load
    from qwen_mlx.models.loader import param_bytes

    out = tmp_path / "embed.json"
    result = run("bench", tiny_q4_f32, "--embed", "--embed-sets", "12x64,2x300", "-n", "2",
                 "--warmup", "0", "--json", out)
    assert result.exit_code == 0, result.output
    assert "batched /" in result.output and "12 x 64" in result.output
    record = json.loads(out.read_text())
    assert record["settings"]["embed_sets"] == [[12, 64], [2, 300]]
    (measured,) = record["results"]
    model = load(tiny_q4_f32)
    for s, (inputs, tokens) in zip(measured["sets"], [(12, 64), (2, 300)], strict=True):
        assert (s["inputs"], s["tokens"]) == (inputs, tokens)
        for way in ("batched", "one_at_a_time"):
            assert len(s["samples"][way]) == 2
            assert s["tokens_per_second"][way] == statistics.median(s["samples"][way]) > 0
        assert s["batched_over_one_at_a_time"] == \
            s["tokens_per_second"]["batched"] / s["tokens_per_second"]["one_at_a_time"]
        rows = model.plan.pooling_rows(tokens)
        assert s["rows_per_forward"] == rows
        assert s["memory"]["estimate"] == param_bytes(model.net) + \
            model.plan.pooling_bytes(min(inputs, rows), tokens)
        assert s["memory"]["peak"] > param_bytes(model.net)
    random_weights = run("bench", "shape:tiny", "--embed", "--embed-sets", "3x16", "-n", "1")
    assert random_weights.exit_code == 0, random_weights.output  # no tokenizer needed


def test_bench_embed_errors(tiny_q4_f32):
    for args, message in (
            (["--embed", "--depths", "0"], "error: --depths measures generation; it does not "
             "apply with --embed (an embedding is one forward with a full-precision cache)"),
            (["--embed", "--kv-bits", "8"], "error: --kv-bits measures generation; it does "
             "not apply with --embed (an embedding is one forward with a full-precision "
             "cache)"),
            (["--embed-sets", "4x4"], "error: --embed-sets applies to --embed: add --embed, "
             "or drop it"),
            (["--embed", "--embed-sets", "4by4"], "error: --embed-sets: '4by4' is not "
             "INPUTSxTOKENS (as in 256x128)"),
            (["--embed", "--embed-sets", "0x4"], "error: --embed-sets: '0x4' is not "
             "INPUTSxTOKENS (as in 256x128)"),
            (["--embed", "--embed-sets", "1x300000"], f"error: {tiny_q4_f32.name} (q4-f32): "
             f"300,000-token inputs exceed the context limit of 262,144")):
        result = run("bench", tiny_q4_f32, *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.strip().splitlines()[-1] == message
