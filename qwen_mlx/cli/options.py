"""Options shared by several commands, defined once so their names and defaults cannot drift."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from ..hub import DEFAULT_MODEL

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens")


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


model_argument = click.argument("model", required=False, metavar="[MODEL]")
MODEL_HELP = (f"MODEL is a folder (Hugging Face or MLX layout), a hub repo id, or an alias "
              f"(default: {DEFAULT_MODEL}).")

sampling_options = _stack(
    click.option("--temp", "temperature", type=click.FloatRange(min=0),
                 help="Sampling temperature; 0 is greedy. Default: the model's "
                      "generation_config.json."),
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True),
                 help="Nucleus sampling mass. Default: the model's."),
    click.option("--top-k", type=click.IntRange(min=0), help="Keep the k likeliest tokens "
                 "(0: off). Default: the model's."),
    click.option("--min-p", type=click.FloatRange(0, 1, max_open=True),
                 help="Drop tokens below this fraction of the top probability."),
    click.option("--seed", type=int, help="Random seed, for repeatable sampling."),
    click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens to generate "
                 "(default 2048)."),
)

load_options = _stack(
    click.option("--adapter", type=click.Path(path_type=Path),
                 help="LoRA adapter folder (from `qwen-mlx finetune`)."),
    click.option("--recipe", default="q4", show_default=True,
                 help="Recipe used when MODEL must be converted first (q4, q8, q4-g32, bf16...)."),
)


def sampling_kwargs(options: dict) -> dict:
    return {k: options[k] for k in SAMPLING_KEYS if options.get(k) is not None}
