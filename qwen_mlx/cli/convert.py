"""`qwen-mlx convert`: Hugging Face weights -> an MLX folder (4-bit by default)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import hub
from ..checkpoint import is_mlx_folder
from ..errors import QwenMlxError
from ..outputs import check_target
from ..quality import DEFAULT_CHUNK
from ..recipes import Recipe
from .console import convert_with_progress
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
holds the source, the current folder or anything else of yours). {MODEL_HELP}""")
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
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder.")
@click.option("--force", is_flag=True, help="Replace an existing output model folder.")
@click.option("--eval-tokens", type=click.IntRange(0), default=2048, show_default=True,
              envvar="QWEN_MLX_EVAL_TOKENS",
              help="Tokens of the built-in held-out text the result is measured on against "
                   "its source (KL, top-1, perplexity ratio; quality.json); 0 skips it, as "
                   "--no-eval does (or QWEN_MLX_EVAL_TOKENS=0).")
@click.option("--no-eval", is_flag=True, help="Skip that measurement.")
def convert(model: str | None, q4: bool, q8: bool, no_quantize: bool, bits: int | None,
            group_size: str, dtype: str, output: Path | None, force: bool, eval_tokens: int,
            no_eval: bool) -> None:
    if 0 < eval_tokens < DEFAULT_CHUNK:
        raise QwenMlxError(f"--eval-tokens must be 0 (none) or at least {DEFAULT_CHUNK} (one "
                           f"chunk)")
    recipe = recipe_from_flags({"q4": q4, "q8": q8, "no_quantize": no_quantize}, bits,
                               int(group_size), dtype)
    if recipe.bits is None and given("group_size"):
        raise QwenMlxError("--group-size needs quantized weights; drop --no-quantize or it")
    spec = hub.parse_arg(model)
    if spec.folder is not None and is_mlx_folder(spec.folder):
        raise QwenMlxError(f"{spec.folder} is already an MLX model; nothing to convert")
    output = output or hub.cache_dir(spec, recipe)
    check_target(output, force=force, protect=[spec.folder] if spec.folder else [])
    source = hub.source_folder(spec)
    convert_with_progress(source, output, recipe, spec.display, force=force)
    if not no_eval and eval_tokens:
        report_quality(output, source, eval_tokens)
    click.echo(str(output))


def report_quality(output: Path, source: Path, tokens: int) -> None:
    """Measure the conversion against its source on the built-in held-out text: one line on
    stderr, quality.json and the model card."""
    from .. import quality
    from .console import err
    from .eval import EvalProgress

    parts = quality.prepare(output, source, quality.built_in_text(), limit=tokens)
    with EvalProgress() as bars:
        result = quality.evaluate(output, source, parts, progress=bars.task)
    quality.record(output, result, source, quality.DEFAULT_CHUNK)
    err.print(f"quality against the source: {result.line()}", soft_wrap=True, markup=False)
