"""`qwen-mlx plan`: how much context fits, before anything is downloaded or loaded."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from ..models.context import parse_context
from ..errors import QwenMlxError
from ..models.recipes import parse_recipe
if TYPE_CHECKING:
    from ..engine.kv_cache import KVSpec
    from ..engine.memory_plan import MemoryPlan
    from ..models.recipes import Recipe
from .options import (MODEL_HELP, check_recipe_applies, memory_kwargs, memory_options,
                      model_argument)


@click.command(help=f"""Plan memory for MODEL: weights, KV cache per token and prefill
activations against this machine's budget, the largest context for full-precision, 8-bit and
4-bit KV, and whether --context fits. Nothing is converted or loaded; a hub model's config
alone is fetched. Exits 1 when --context does not fit. {MODEL_HELP}""")
@model_argument
@click.option("--recipe", default="q4", show_default=True,
              help="Recipe the model would be converted with.")
@memory_options
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Plan for serve --parallel N: N caches share the KV budget, N prefill "
                   "chunks at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(model: str | None, recipe: str, parallel: int, as_json: bool, **options) -> None:
    from ..engine.kv_cache import KVSpec  # the engine imports mlx-lm: only when needed
    from ..models.loader import compute_dtype

    o = memory_kwargs(options)
    check_recipe_applies(model, recipe)
    context = None if o["context"] is None else parse_context(o["context"])
    cast = compute_dtype("auto")
    result = plan_model(model, recipe=parse_recipe(recipe), compute_bytes=cast.size if cast
                        else None, context=context,
                        kv=KVSpec(o["kv_bits"], o["kv_group_size"], o["kv_start"]),
                        prefill_step=o["prefill_step"], memory=o["memory"], parallel=parallel)
    if as_json:
        record = {"machine": result.machine.to_dict(), "weights_bytes": result.weights,
                  "kv_bytes_per_token": result.kv_bytes_per_token(),
                  "largest_context": result.alternatives(), "parallel": parallel,
                  **({"context": context, "needed_bytes": result.needed(context)}
                     if context else {})}
        sys.stdout.write(json.dumps(record) + "\n")
    else:
        table = Table(show_header=False, box=None, pad_edge=False)
        for what, amount in result.table(context):
            table.add_row(what, amount)
        Console(highlight=False).print(table)
    if context is not None:
        try:
            result.check(context)
        except QwenMlxError as e:
            raise QwenMlxError(str(e).replace(" (or --force)", "")) from None


def plan_model(model: str | None, *, recipe: Recipe, compute_bytes: int | None,
               context: int | None, kv: KVSpec, prefill_step: int,
               memory: str | int | None = None, parallel: int = 1) -> MemoryPlan:
    """Plan without loading, converting or downloading weights: a converted folder is
    measured from its files, anything else from its config and the recipe."""
    from ..engine.memory_plan import plan_for, weight_bytes_of_config, weight_bytes_of_folder
    from ..hub import resolver as hub
    from ..models.context import rope_overrides
    from ..models.shapes import Shape

    spec = hub.resolve(model, recipe, weights=False)
    config = {**spec.config, **rope_overrides(spec.config, context)}
    weights = weight_bytes_of_folder(spec.folder, compute_bytes) if spec.folder else \
        weight_bytes_of_config(config, recipe, compute_bytes)
    return plan_for(config, weights=weights, compute_bytes=compute_bytes,
                    kv=kv.check(Shape.of(config).head_dim), prefill_step=prefill_step,
                    memory=memory, parallel=parallel)
