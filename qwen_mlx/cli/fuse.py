"""`qwen-mlx fuse`: merge a LoRA adapter into the model and check the result."""

from __future__ import annotations

from pathlib import Path

import click

from .console import convert_with_progress, err
from .options import MODEL_HELP, check_recipe_applies, model_argument


@click.command(help=f"""Merge a LoRA adapter into the model's weights and write an MLX folder
that mlx-lm and every qwen-mlx command load without the adapter. A 4-bit model stays 4-bit
(dequantize, merge, requantize). Then greedy replies of the fused model are compared with
the model plus adapter, and the token agreement is reported. MODEL defaults to the one the
adapter was trained on. {MODEL_HELP}""")
@model_argument
@click.option("--adapter", type=click.Path(path_type=Path), required=True,
              help="Adapter folder (from `qwen-mlx finetune`).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Folder to write the fused model to.")
@click.option("--q4", is_flag=True, help="Write 4-bit weights (group size 64), even from a "
              "float model.")
@click.option("--dequantize", is_flag=True, help="Write float weights in the model's stored "
              "type: model plus adapter up to that type's rounding (from a 4-bit model, its "
              "dequantized weights), but larger.")
@click.option("--recipe", default="q4", show_default=True,
              help="Recipe used when MODEL must be converted first.")
@click.option("--prompt", "prompts", multiple=True, help="A prompt to verify with (repeat "
              "for more; default: four built-in prompts).")
@click.option("--verify-tokens", type=click.IntRange(min=0), default=32, show_default=True,
              help="Greedy tokens compared per prompt (0: skip the check).")
@click.option("--force", is_flag=True, help="Replace an existing output that is a model "
              "folder (never the model or adapter being read).")
def fuse(model: str | None, adapter: Path, output: Path, q4: bool, dequantize: bool,
         recipe: str, prompts: tuple[str, ...], verify_tokens: int, force: bool) -> None:
    from ..finetune.fuse import PROMPTS, fuse as fuse_adapter
    check_recipe_applies(model, recipe)

    with err.status("fusing"):
        report = fuse_adapter(model, adapter, output, q4=q4, dequantize=dequantize,
                              recipe=recipe, force=force, prompts=prompts or PROMPTS,
                              verify_tokens=verify_tokens, convert=convert_with_progress)
    err.print(f"fused {report.layers} matrices into {report.output} ({report.format}) in "
              f"{report.seconds:.1f} s", soft_wrap=True)
    a = report.agreement
    if a is not None:
        err.print(f"check: {a.matched}/{a.total} greedy tokens ({a.rate:.1%}) agree with the "
                  f"model plus adapter; {a.identical} of {a.prompts} replies identical",
                  soft_wrap=True)
        if a.rate < 1 and report.format.startswith("q"):
            err.print("[dim]requantizing rounds away part of the update; --dequantize keeps "
                      "it (up to float rounding)[/dim]")
    click.echo(str(report.output))
