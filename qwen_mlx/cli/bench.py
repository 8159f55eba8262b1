"""`qwen-mlx bench`: prefill and decode tokens/s, time to first token, load time and peak
memory, with the bandwidth roofline beside decode; optionally mlx-lm side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .. import __version__
from ..storage.atomic import atomic_write_bytes, atomic_write_text
from ..errors import QwenMlxError
from ..storage.outputs import check_writable
from .console import check_speculative_options, convert_with_progress, err
from .options import given, memory_kwargs, memory_options, speculative_options

RANDOM_DEFAULT = "shape:qwen3-4b"


def parse_lengths(text: str, option: str, minimum: int) -> list[int]:
    """'0,2048,8k' -> [0, 2048, 8192], with errors that name the option."""
    from ..models.context import parse_count

    values = []
    for part in text.split(","):
        value = parse_count(part)
        if value is None:
            raise QwenMlxError(f"{option}: cannot read {part.strip()!r} as a token count "
                               f"(use numbers like 512,2048,8k)")
        if value < minimum:
            raise QwenMlxError(f"{option}: {value} is below {minimum}")
        values.append(value)
    return values


@click.command(help="""Measure MODELs (folders, hub ids, aliases; default the default model)
as chat and serve run them: prefill tok/s at --prompt-lengths, decode tok/s at cache
--depths with its share of the memory-bandwidth roofline, time to first token, load time
and peak memory split into weights, KV cache and the rest. --random-weights (or the MODEL
shape:qwen3-4b) builds the real architecture with random weights in memory: speed and
memory before any download.""")
@click.argument("models", nargs=-1)
@click.option("--recipes", default="q4", show_default=True,
              help="Comma-separated recipes; each converts from the same source first.")
@click.option("--random-weights", is_flag=True, help=f"Measure {RANDOM_DEFAULT} with random "
              "weights (no download).")
@click.option("--prompt-lengths", default="512,2048", show_default=True,
              help="Prefill prompt lengths (8k means 8192).")
@click.option("--depths", default="0,2048", show_default=True,
              help="KV cache depths to decode at (0,8k,32k).")
@click.option("--gen-tokens", type=click.IntRange(min=2), default=128, show_default=True,
              help="Tokens generated per decode measurement.")
@click.option("-n", "--reps", type=click.IntRange(min=1), default=3, show_default=True,
              help="Measured repetitions (after --warmup).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@memory_options
@speculative_options
@click.option("--compare", type=click.Choice(["mlx-lm"]), help="Also run mlx-lm's own "
              "generation on the same models and print our/their ratios.")
@click.option("--embed", is_flag=True, help="Measure embedding instead: tokens/s of "
              "--embed-sets batched and one input at a time, and peak memory against the "
              "memory plan's estimate.")
@click.option("--embed-sets", default="256x128,16x4096", show_default=True,
              help="Embedding inputs to measure, INPUTSxTOKENS each (with --embed).")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Write machine, versions, settings and every sample here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="Write a PNG: decode tok/s against depth, memory bars (needs "
                   "qwen-mlx[plot]).")
def bench(models: tuple[str, ...], recipes: str, random_weights: bool, prompt_lengths: str,
          depths: str, gen_tokens: int, reps: int, warmup: int, compare: str | None,
          embed: bool, embed_sets: str, json_path: Path | None, plot_path: Path | None,
          **options) -> None:
    from ..benchmark import runs as benchmark
    from ..models.checkpoint import is_mlx_folder
    from ..hub.resolver import parse_arg
    from ..system.machine import this_machine
    from ..models.shapes import config_for
    from ..models.recipes import parse_recipe

    from .bench_embed import bench_embed, check_embed_options

    sets = check_embed_options(embed, embed_sets)
    lengths = parse_lengths(prompt_lengths, "--prompt-lengths", 1)
    depth_list = parse_lengths(depths, "--depths", 0)
    memory = memory_kwargs(options)
    speculate = {k: options[k] for k in ("draft", "draft_tokens", "lookup")
                 if options.get(k) is not None}
    check_speculative_options(options)
    recipe_list = [parse_recipe(r.strip()) for r in recipes.split(",") if r.strip()]
    if plot_path is not None:
        _check_plotting()
    for path, what in ((json_path, "--json"), (plot_path, "--plot")):
        if path is not None:
            check_writable(path, what)
    specs = list(models) + ([RANDOM_DEFAULT] if random_weights else [])
    specs = specs or [None]
    if compare and any(s and s.startswith("shape:") for s in specs):
        raise QwenMlxError("--compare mlx-lm needs a model on disk, not random weights")

    for spec in specs:  # fail on a bad name before measuring anything
        if spec and spec.startswith("shape:"):
            config_for(spec.removeprefix("shape:"))
        elif (folder := parse_arg(spec).folder) is not None and is_mlx_folder(folder) and (
                given("recipes") or len(recipe_list) > 1):
            raise QwenMlxError(f"--recipes applies to models that must be converted; {folder} "
                               f"is already an MLX model and would be measured as it is")
    machine = this_machine(memory["memory"])
    if sets is not None:
        record = {"versions": _versions(), "machine": machine.to_dict(), "settings": {
            "embed_sets": sets, "reps": reps, "warmup": warmup,
            "recipes": [r.name for r in recipe_list], "memory": memory["memory"]}}
        bench_embed([lambda spec=spec, recipe=recipe: _target(spec, recipe, memory)[0]
                     for spec in specs for recipe in recipe_list], sets, reps, warmup,
                    json_path, record)
        return
    bandwidth, bandwidth_source = machine.bandwidth_gbs, machine.bandwidth_source
    if bandwidth is None:
        bandwidth = round(benchmark.measure_bandwidth(), 1)
        bandwidth_source = "measured here with a 256 MB copy (unknown chip)"
    err.print(f"[dim]{machine.chip}: {bandwidth:,.1f} GB/s memory bandwidth "
              f"({bandwidth_source})[/dim]", soft_wrap=True)

    settings = {"prompt_lengths": lengths, "depths": depth_list, "gen_tokens": gen_tokens,
                "reps": reps, "warmup": warmup, "recipes": [r.name for r in recipe_list],
                **{k: v for k, v in memory.items() if k != "force"}}
    settings.update({k: str(v) if k == "draft" else v for k, v in speculate.items()})
    results, comparisons = [], []
    draft = _target(speculate["draft"], recipe_list[0], memory)[0].model \
        if "draft" in speculate else None
    for spec in specs:
        for recipe in recipe_list:
            target, folder = _target(spec, recipe, memory)
            if draft is not None:
                _check_draft(target.model, draft)
            results.append(_measure(target, lengths, depth_list, gen_tokens, reps, warmup,
                                    bandwidth))
            if speculate:
                results[-1]["speculative"] = _speculate(target.model, draft, speculate,
                                                        gen_tokens, reps, warmup)
            if compare:  # loaded only now, so neither model's memory counts in the other's
                theirs = benchmark.mlx_lm_target(folder, target)
                del target
                results.append(_measure(theirs, lengths, depth_list, gen_tokens, reps, warmup,
                                        bandwidth))
                comparisons.append(benchmark.ratios(results[-2], results[-1]))
    _print_table(results, comparisons)
    record = {"versions": _versions(), "machine": {**machine.to_dict(), "bandwidth_gbs":
                                                    bandwidth, "bandwidth_source":
                                                    bandwidth_source},
              "settings": settings, "results": results, "comparisons": comparisons,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
        err.print(f"[dim]wrote {json_path}[/dim]")
    if plot_path is not None:
        from ..benchmark.plot import plot

        atomic_write_bytes(plot_path, plot(record))
        err.print(f"[dim]wrote {plot_path}[/dim]")


def _measure(target, lengths, depths, gen_tokens, reps, warmup, bandwidth) -> dict:
    from ..benchmark import runs as benchmark

    with err.status(target.name) as status:
        return benchmark.measure(target, prompt_lengths=lengths, depths=depths,
                                 gen_tokens=gen_tokens, reps=reps, warmup=warmup,
                                 bandwidth_gbs=bandwidth,
                                 on_step=lambda text: status.update(f"{target.name}: {text}"))


def _speculate(model, draft, speculate: dict, gen_tokens: int, reps: int, warmup: int) -> dict:
    """--draft/--lookup against plain decoding on one model (its draft checked first)."""
    from ..benchmark.speculative import measure_speculative
    from ..engine.request import DRAFT_TOKENS, Speculative

    tokens = speculate.get("lookup") or speculate.get("draft_tokens") or DRAFT_TOKENS
    with err.status(f"{model.path.name}: speculative decoding against plain"):
        return measure_speculative(model, Speculative(tokens, draft), gen_tokens=gen_tokens,
                                   reps=reps, warmup=warmup)


def _check_draft(model, draft) -> None:
    """The draft reads and writes the model's token ids, or a one-line refusal (random
    weights have no tokenizer: their vocabulary sizes are compared)."""
    if model.tokenizer is not None and draft.tokenizer is not None:
        model.speculative(draft, None, None)
    elif draft.config["vocab_size"] != model.config["vocab_size"]:
        raise QwenMlxError(f"the draft {draft.path} has {draft.config['vocab_size']:,} tokens, "
                           f"{model.path} {model.config['vocab_size']:,}: speculative "
                           f"decoding needs the same vocabulary")


def _target(spec: str | None, recipe, memory: dict):
    """(benchmark Target, MLX folder or None) for one model spec and recipe."""
    import mlx.core as mx

    from ..benchmark import runs as benchmark
    from ..hub import resolver as hub
    from .. import load
    from ..models.checkpoint import is_mlx_folder
    from ..engine import KVSpec
    from ..hub.cache import recipe_name

    kv = KVSpec(memory["kv_bits"], memory["kv_group_size"], memory["kv_start"])
    if spec and spec.startswith("shape:"):
        return benchmark.random_target(spec.removeprefix("shape:"), recipe, kv=kv,
                                       prefill_step=memory["prefill_step"],
                                       memory=memory["memory"]), None
    folder = hub.resolve(spec, recipe, convert_with_progress).folder  # not load time
    start = time.perf_counter()
    model = load(folder, recipe=recipe, **memory)
    mx.eval(model.net.parameters())
    local = hub.parse_arg(spec).folder
    converted = not (local is not None and is_mlx_folder(local))
    name = (f"{spec or hub.DEFAULT_MODEL} {recipe.name}" if converted else
            f"{local.name} ({recipe_name(folder)})") + (f" kv{kv.bits}" if kv.bits else "")
    return benchmark.Target.from_model(name, model, time.perf_counter() - start), folder


def _versions() -> dict:
    from importlib.metadata import version

    import mlx.core as mx

    return {"qwen-mlx": __version__, "mlx": mx.__version__, "mlx-lm": version("mlx-lm")}


def _check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise QwenMlxError("--plot needs matplotlib: pip install 'qwen-mlx[plot]'") from None


def _print_table(results: list[dict], comparisons: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="qwen-mlx bench (mean ± std)", title_justify="left")
    table.add_column("model")
    table.add_column("load s", justify="right")
    first = results[0]
    for p in first["prefill"]:
        table.add_column(f"prefill {p['tokens']}\ntok/s", justify="right")
        table.add_column(f"TTFT {p['tokens']}\nms", justify="right")
    for d in first["decode"]:
        table.add_column(f"decode @{d['depth']}\ntok/s (roofline)", justify="right")
    table.add_column("peak GB\n(weights/KV/rest)", justify="right")
    unbounded = False  # a roofline share above 100%: the measured bandwidth bounds nothing
    for r in results:
        row = [r["name"] if r["engine"] == "qwen-mlx" else f"[dim]{r['name']}[/dim]",
               f"{r['load_seconds']:.2f}"]
        for p in r["prefill"]:
            tps = p["tokens_per_second"]
            row += [f"{tps['mean']:,.1f} ± {tps['std']:,.1f}",
                    f"{p['time_to_first_token'] * 1000:,.0f}"]
        for d in r["decode"]:
            tps = d["tokens_per_second"]
            percent = d["roofline_percent"]
            share = "" if not percent else f" ({percent:.0f}%)" if percent <= 100 else " (*)"
            unbounded = unbounded or bool(percent and percent > 100)
            row.append(f"{tps['mean']:,.1f} ± {tps['std']:,.1f}{share}")
        m = r["memory"]
        row.append(f"{m['peak'] / 1e9:.2f} ({m['weights'] / 1e9:.2f}/{m['kv_cache'] / 1e9:.2f}/"
                   f"{m['other'] / 1e9:.2f})")
        table.add_row(*row)
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=200)  # a pipe or file: do not squeeze columns
    out.print(table)
    if unbounded:
        out.print("* faster than the roofline of the measured memory bandwidth: on the CPU "
                  "backend weights are reused from the processor's caches and bfloat16 is "
                  "emulated, so that bandwidth bounds nothing here and no share is shown",
                  soft_wrap=True)
    for r in results:
        if "speculative" in r:
            x = r["speculative"]
            out.print(f"{r['name']}, {x['method']} ({x['tokens']} per step): "
                      f"{x['acceptance_rate']:.0%} of proposals kept, "
                      f"{x['tokens_per_forward']:.2f} tokens per forward, decode "
                      f"{x['decode_tps']:,.1f} tok/s against {x['plain_decode_tps']:,.1f} "
                      f"plain (x{x['speedup']:.2f})"
                      + ("" if x["identical"] else "; [red]the tokens differ from plain "
                         "decoding[/red]"), soft_wrap=True)
    for c in comparisons:
        parts = [f"prefill {n}: x{v:.2f}" for n, v in c["prefill"].items()] + \
                [f"decode @{d}: x{v:.2f}" for d, v in c["decode"].items()] + \
                [f"peak memory: x{c['peak_memory']:.2f}"]
        out.print(f"{c['name']} vs mlx-lm (ours/theirs): " + ", ".join(parts), soft_wrap=True)
