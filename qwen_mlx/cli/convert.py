"""`qwen-mlx convert`: Hugging Face weights -> an MLX folder (4-bit by default)."""

from __future__ import annotations

from pathlib import Path

import click

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..quant import distill
from ..quant import fitted
from ..hub import resolver as hub
from ..evaluate import quality
from ..models.checkpoint import is_embedding, is_mlx_folder, read_config
from ..errors import QwenMlxError
from ..quant.fitted import Fit, Hooks, fitted_convert
from ..quant.allocate import Budget
from ..storage.outputs import check_target
from ..evaluate.quality import DEFAULT_CHUNK
from ..models.recipes import Recipe
from .console import convert_with_progress, err, stop_on_ctrl_c
from .options import MODEL_HELP, given, model_argument

PRESETS = {"q4": 4, "q8": 8, "no_quantize": None}


def recipe_from_flags(flags: dict[str, bool], bits: int | None, group_size: int,
                      dtype: str) -> Recipe:
    """One recipe from --q4/--q8/--no-quantize/--bits; two that disagree are refused."""
    given = [name for name, on in flags.items() if on]
    names = ["--" + n.replace("_", "-") for n in given]
    if len(given) > 1:
        raise QwenMlxError(f"{' and '.join(names)} contradict each other; give one")
    if bits is not None and given and PRESETS[given[0]] != bits:
        raise QwenMlxError(f"--bits {bits} contradicts {names[0]}; give one")
    if bits is None:
        bits = PRESETS[given[0]] if given else 4
    return Recipe(bits=bits, group_size=group_size, dtype=dtype)


@click.command(help=f"""Convert a Hugging Face Qwen3 checkpoint to MLX (affine 4-bit, group
size 64 by default). Without -o the result goes into the model cache, where chat and generate
find it. --force replaces an existing output only if it is a model folder (never one that
holds the source, the current folder or anything else of yours). Fitted recipes measure the
model on qwen-mlx's own calibration text: --max-size/--bpw choose the bits of each layer
from its measured sensitivity, --dwq trains the scales and biases against the source
(resumable: Ctrl-C keeps its progress, the same command continues). {MODEL_HELP}""")
@model_argument
@click.option("--q4", is_flag=True, help="4-bit (the default).")
@click.option("--q8", is_flag=True, help="8-bit.")
@click.option("--no-quantize", is_flag=True, help="Keep float weights.")
@click.option("--bits", type=click.Choice(["2", "3", "4", "5", "6", "8"]),
              callback=lambda c, p, v: None if v is None else int(v),
              help="Bits per weight, instead of --q4/--q8.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64",
              show_default=True, help="Weights per quantization group.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]),
              default="bfloat16", show_default=True,
              help="Type of scales, biases and unquantized tensors.")
@click.option("--max-size", metavar="SIZE",
              help="Mixed bits per layer (3 to 8) to fit this size on disk, e.g. 1.8GB "
                   "(GB = 10^9 bytes), with the least estimated loss.")
@click.option("--bpw", type=float, help="Mixed bits per layer at this many bits per weight "
                                        "(4.5 is the size of uniform 4-bit).")
@click.option("--dwq", is_flag=True,
              help="Distil: train the quantization's scales and biases against the source.")
@click.option("--dwq-epochs", type=click.IntRange(1), default=distill.EPOCHS,
              show_default=True, help="Passes over the fit set for --dwq.")
@click.option("--teacher-tokens", type=click.IntRange(0), default=0,
              help="Add this many tokens sampled from the source to the fit set.")
@click.option("--fit-tokens", type=click.IntRange(1),
              help="Fit on at most this many tokens of the calibration set (default: all).")
@click.option("--chunk", type=click.IntRange(16), default=DEFAULT_CHUNK, show_default=True,
              help="Tokens per fit and evaluation chunk.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder.")
@click.option("--force", is_flag=True, help="Replace an existing output model folder.")
@click.option("--eval-tokens", type=click.IntRange(0), default=2048, show_default=True,
              envvar="QWEN_MLX_EVAL_TOKENS",
              help="Tokens of the built-in held-out text the result is measured on against "
                   "its source (KL, top-1, perplexity ratio; quality.json); 0 skips it, as "
                   "--no-eval does (or QWEN_MLX_EVAL_TOKENS=0).")
@click.option("--no-eval", is_flag=True, help="Skip that measurement.")
@click.option("--force-eval", is_flag=True, help="Measure even when a probe estimates the "
              "measurement would take longer than the conversion did (and 2 minutes), which "
              "otherwise skips it with a line that says so.")
def convert(model: str | None, q4: bool, q8: bool, no_quantize: bool, bits: int | None,
            group_size: str, dtype: str, max_size: str | None, bpw: float | None, dwq: bool,
            dwq_epochs: int, teacher_tokens: int, fit_tokens: int | None, chunk: int,
            output: Path | None, force: bool, eval_tokens: int, no_eval: bool,
            force_eval: bool) -> None:
    if force_eval and (no_eval or not eval_tokens):
        raise QwenMlxError("--force-eval and --no-eval (or --eval-tokens 0) contradict each "
                           "other; give one")
    if 0 < eval_tokens < chunk:
        raise QwenMlxError(f"--eval-tokens must be 0 (none) or at least {chunk} (one chunk)")
    flags = {"q4": q4, "q8": q8, "no_quantize": no_quantize}
    fit = fit_from_flags(max_size, bpw, dwq, dwq_epochs, teacher_tokens, fit_tokens, chunk,
                         quantize_flags=[n for n, on in flags.items() if on] +
                         (["bits"] if bits is not None else []))
    recipe = recipe_from_flags(flags, bits, int(group_size), dtype)
    if recipe.bits is None and given("group_size"):
        raise QwenMlxError("--group-size needs quantized weights; drop --no-quantize or it")
    spec = hub.parse_arg(model)
    if spec.folder is not None and is_mlx_folder(spec.folder):
        raise QwenMlxError(f"{spec.folder} is already an MLX model; nothing to convert")
    if fit is not None and spec.folder is not None:
        fitted.check(spec.folder, recipe, fit)  # refuse before a download or a cache folder
    if output is not None:
        refuse_in_cache(output)
    cached = output is None
    output = output or hub.cache_dir(spec, recipe if fit is None else fit.named(recipe))
    if cached and output.exists() and not force:  # the cache's own entry: as generate does
        if hub.is_current(output, spec.folder):
            click.echo(f"note: {spec.display} is already converted ({output.name}) and "
                       "current with its source; --force converts it again", err=True)
            click.echo(str(output))
            return
        click.echo(f"note: the cached conversion {output} is out of date with its source "
                   "(or incomplete): converting it again", err=True)
        force = True
    check_target(output, force=force, protect=[spec.folder] if spec.folder else [])
    source = hub.source_folder(spec)
    tokens = 0 if no_eval else eval_tokens
    if is_embedding(read_config(source)):
        if fit is not None:
            raise QwenMlxError(f"{spec.display} is an embedding model: the fitted recipes "
                               f"measure next-token predictions, which it does not make")
        if tokens:
            click.echo(f"note: {spec.display} is an embedding model: no next-token quality "
                       "pass (it makes no predictions)", err=True)
        tokens = 0
    if fit is not None:
        if spec.folder is None:
            fitted.check(source, recipe, fit)
        run_fitted(source, output, recipe, fit, spec.display, force=force, eval_tokens=tokens,
                   eval_limit=None if force_eval else EVAL_SECONDS)
    else:
        report = convert_with_progress(source, output, recipe, spec.display, force=force)
        if tokens:
            report_quality(output, source, tokens, chunk, limit=None if force_eval else
                           max(EVAL_SECONDS, report.seconds))
    click.echo(str(output))


def refuse_in_cache(output: Path) -> None:
    """The model cache is written by the cache alone: its entries carry a provenance and a
    quality record that a hand-named -o there would overwrite or lack (and `models` would
    never list or prune it)."""
    from ..storage.outputs import absolute

    cache = absolute(hub.home() / "models")
    out = absolute(output)
    if out == cache or cache in out.parents:
        raise QwenMlxError(f"-o {output} is inside the model cache ({cache}); convert without "
                           f"-o to put a conversion there, or choose a folder outside it")


def fit_from_flags(max_size: str | None, bpw: float | None, dwq: bool, epochs: int,
                   teacher_tokens: int, fit_tokens: int | None, chunk: int,
                   quantize_flags: list[str]) -> Fit | None:
    """The fitted part of a conversion, or None; options that contradict it, or that do
    nothing without it, are refused."""
    if max_size is not None and bpw is not None:
        raise QwenMlxError("--max-size and --bpw contradict each other; give one")
    budget = Budget.size(max_size) if max_size is not None else \
        Budget.bits(bpw) if bpw is not None else None
    if budget is not None and quantize_flags:
        name = "--max-size" if max_size is not None else "--bpw"
        raise QwenMlxError(f"{name} chooses the bits of each layer; drop "
                           f"--{quantize_flags[0].replace('_', '-')}")
    if budget is None and not dwq:
        for option in ("dwq_epochs", "teacher_tokens", "fit_tokens"):
            if given(option):
                raise QwenMlxError(f"--{option.replace('_', '-')} needs a fitted recipe "
                                   f"(--max-size, --bpw or --dwq)")
        return None
    if dwq and "no_quantize" in quantize_flags:
        raise QwenMlxError("--dwq and --no-quantize contradict each other; give one")
    if fit_tokens is not None and fit_tokens < chunk:
        raise QwenMlxError(f"--fit-tokens must be at least {chunk} (one --chunk)")
    return Fit(budget=budget, distil=dwq, epochs=epochs, teacher_tokens=teacher_tokens,
               chunk=chunk, fit_tokens=fit_tokens)


EVAL_SECONDS = 120  # the quality pass may take this long, or as long as the conversion did


def skipped(too_slow) -> None:
    err.print(f"quality not measured: the pass would take {too_slow} here, longer than the "
              f"conversion did and {EVAL_SECONDS // 60} minutes (--force-eval measures "
              f"anyway; `qwen-mlx eval` measures later)", soft_wrap=True, markup=False)


def run_fitted(source: Path, output: Path, recipe: Recipe, fit: Fit, name: str, *,
               force: bool, eval_tokens: int, eval_limit: float | None) -> None:
    """A fitted conversion with progress bars, a step bar with loss and ETA for --dwq, and
    Ctrl-C that saves the distillation's progress."""
    from .eval import EvalProgress

    columns = (TextColumn("distilling step {task.completed}/{task.total}"), BarColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
    with EvalProgress() as bars, stop_on_ctrl_c() as stopping, \
            Progress(*columns, console=err, transient=True) as steps:
        task = steps.add_task("dwq", total=None, loss="-")

        def step(done: int, total: int, loss: float) -> None:
            steps.update(task, completed=done, total=total, loss=f"{loss:.4f}")
            if not err.is_terminal:  # a log or a pipe shows no bar: a line per step
                err.print(f"distilling step {done}/{total}, loss {loss:.4f}", soft_wrap=True)

        hooks = Hooks(phase=lambda text: err.print(f"[dim]{text}[/dim]", soft_wrap=True),
                      bar=bars.task, stopping=stopping, step=step)
        try:
            result = fitted_convert(source, output, recipe, fit, force=force,
                                    source_name=name, hooks=hooks, eval_tokens=eval_tokens,
                                    eval_limit=eval_limit)
        except quality.TooSlow as too_slow:
            skipped(too_slow)
            return
        except distill.Stopped as stop:
            steps.stop()
            err.print(f"{stop}; progress saved", soft_wrap=True, markup=False)
            raise SystemExit(130) from None
    if result is not None:
        err.print(f"quality against the source: {result.line()}", soft_wrap=True, markup=False)


def report_quality(output: Path, source: Path, tokens: int, chunk: int,
                   limit: float | None = None) -> None:
    """Measure the conversion against its source on the built-in held-out text: one line on
    stderr, quality.json and the model card; skipped, with a line, when a probe says it
    would take longer than ``limit`` seconds."""
    from .eval import EvalProgress

    try:
        with EvalProgress() as bars:
            result = quality.measure_conversion(output, source, tokens, chunk=chunk,
                                                progress=bars.task, limit_seconds=limit)
    except quality.TooSlow as too_slow:
        return skipped(too_slow)
    err.print(f"quality against the source: {result.line()}", soft_wrap=True, markup=False)
