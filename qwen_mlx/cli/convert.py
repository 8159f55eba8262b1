"""`qwen-mlx convert`: Hugging Face weights -> an MLX folder (4-bit by default)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import hub
from ..checkpoint import is_mlx_folder
from ..errors import QwenMlxError
from ..recipes import Recipe
from .console import convert_with_progress
from .options import MODEL_HELP, model_argument


@click.command(help=f"""Convert a Hugging Face Qwen3 checkpoint to MLX (affine 4-bit, group
size 64 by default). Without -o the result goes into the model cache, where chat and generate
find it. {MODEL_HELP}""")
@model_argument
@click.option("--q4", "preset", flag_value="q4", default=True, help="4-bit (the default).")
@click.option("--q8", "preset", flag_value="q8", help="8-bit.")
@click.option("--no-quantize", "preset", flag_value="none", help="Keep float weights.")
@click.option("--bits", type=int, help="Bits per weight (2, 3, 4, 5, 6, 8); overrides --q4/--q8.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64",
              show_default=True, help="Weights per quantization group.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]),
              default="bfloat16", show_default=True,
              help="Type of scales, biases and unquantized tensors.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def convert(model: str | None, preset: str, bits: int | None, group_size: str, dtype: str,
            output: Path | None, force: bool) -> None:
    if bits is None:
        bits = {"q4": 4, "q8": 8, "none": None}[preset]
    recipe = Recipe(bits=bits, group_size=int(group_size), dtype=dtype)
    spec = hub.parse_spec(model)
    if spec.folder is not None and is_mlx_folder(spec.folder):
        raise QwenMlxError(f"{spec.folder} is already an MLX model; nothing to convert")
    output = output or hub.cache_dir(spec, recipe)
    if output.exists() and not force:
        raise QwenMlxError(f"output {output} already exists (use --force to replace it)")
    source = spec.folder if spec.folder is not None else hub.download(spec.repo_id)
    convert_with_progress(source, output, recipe, spec.display, force=force)
    click.echo(str(output))
