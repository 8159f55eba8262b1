"""Options shared by several commands, defined once so their names and defaults cannot drift."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from ..errors import QwenMlxError
from ..hub.resolver import DEFAULT_MODEL

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens")


def stack_options(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


model_argument = click.argument("model", required=False, metavar="[MODEL]")
MODEL_HELP = (f"MODEL is a folder (Hugging Face or MLX layout), a hub repo id, or an alias "
              f"(default: {DEFAULT_MODEL}).")

sampling_options = stack_options(
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

load_options = stack_options(
    click.option("--adapter", type=click.Path(path_type=Path),
                 help="LoRA adapter folder (from `qwen-mlx finetune`)."),
    click.option("--recipe", default="q4", show_default=True,
                 help="Recipe used when MODEL must be converted first (q4, q8, q4-g32, bf16...)."),
)


memory_option = click.option("--memory", help="Plan for this much RAM (12GB) instead of the "
                             "machine's, to leave room for other apps.")
memory_options = stack_options(
    click.option("--context", help="Context length to plan for: 32k, 256k, 1m or a number "
                 "(past the native 256k: YaRN). Default: the most that fits in memory."),
    click.option("--kv-bits", type=click.Choice(["8", "4"]), callback=lambda c, p, v:
                 None if v is None else int(v), help="Quantize the KV cache (8: half the "
                 "memory, 4: about a quarter)."),
    click.option("--kv-group-size", type=click.Choice(["32", "64", "128"]), default="64",
                 show_default=True, callback=lambda c, p, v: int(v),
                 help="KV quantization group; must divide the head size (128)."),
    click.option("--kv-start", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Keep the first N tokens of the KV cache at full precision."),
    click.option("--prefill-step", type=click.IntRange(min=16), default=512,
                 show_default=True, help="Prompt tokens computed per chunk."),
    memory_option,
)
kv_disk_options = stack_options(
    click.option("--kv-disk-size", metavar="SIZE", help="Most bytes of prompt caches kept on "
                 "disk, every model's together (least recently used dropped first) [default: "
                 "32GB, or a tenth of the disk's free room if less]. They live in "
                 "$QWEN_MLX_KV_DISK, or $QWEN_MLX_HOME/kv."),
    click.option("--no-kv-disk", is_flag=True, help="Keep prompt caches in memory only: "
                 "none read from disk, none written."),
)
force_option = click.option("--force", is_flag=True, help="Load even if the memory plan "
                            "says the context will not fit.")
MEMORY_KEYS = ("context", "kv_bits", "kv_group_size", "kv_start", "prefill_step", "memory",
               "force")


def given(name: str) -> bool:
    """Whether the user typed this option (not its default)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) in (
        click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def memory_kwargs(options: dict) -> dict:
    """Pop the memory options out of a command's keyword arguments; KV options that would do
    nothing without --kv-bits are refused."""
    memory = {k: options.pop(k) for k in MEMORY_KEYS if k in options}
    if "no_kv_disk" in options:  # a command that keeps prompt caches on disk
        memory.update(kv_disk_kwargs(options.pop("no_kv_disk"), options.pop("kv_disk_size")))
    if memory.get("kv_bits") is None:
        for name in ("kv_start", "kv_group_size"):
            if name in memory and given(name):
                raise QwenMlxError(f"--{name.replace('_', '-')} applies to a quantized KV "
                                   f"cache: add --kv-bits 8 or 4, or drop it")
    return memory


def kv_disk_kwargs(off: bool, size: str | None) -> dict:
    """load()'s disk tier arguments: on by default, in its folder, under its cap."""
    from ..storage.home import kv_folder
    from ..units import parse_size

    if off:
        if size is not None:
            raise QwenMlxError("--kv-disk-size sizes the prompt caches on disk, which "
                               "--no-kv-disk turns off: drop one")
        return {}
    out = {"kv_disk": kv_folder()}
    if size is not None:
        out["kv_disk_size"] = parse_size(size, "--kv-disk-size")
    return out


def check_recipe_applies(model: str | None, recipe: str) -> None:
    """--recipe says how to convert; for a model already in MLX form it would do nothing."""
    from ..models.checkpoint import is_mlx_folder
    from ..hub.resolver import parse_arg
    from ..models.recipes import parse_recipe

    parse_recipe(recipe)  # a bad name is the first thing to say
    spec = parse_arg(model)
    if given("recipe") and spec.folder is not None and is_mlx_folder(spec.folder):
        raise QwenMlxError(f"--recipe applies when MODEL must be converted; {spec.folder} is "
                           f"already an MLX model (convert its source to change the recipe)")


def sampling_kwargs(options: dict) -> dict:
    return {k: options[k] for k in SAMPLING_KEYS if options.get(k) is not None}


def _stops(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    if any(not v for v in values):
        raise click.BadParameter("a stop string cannot be empty")
    return values


stop_option = click.option("--stop", multiple=True, metavar="TEXT", callback=_stops,
                           help="End the reply where TEXT appears (repeat for several); the "
                                "text itself is not printed.")

speculative_options = stack_options(
    click.option("--draft", metavar="MODEL", help="Speculative decoding with this draft model "
                 "(any MODEL form; same tokenizer, e.g. Qwen/Qwen3-0.6B for Qwen3-4B): it "
                 "proposes tokens the model checks several at a time. The text is the same."),
    click.option("--draft-tokens", type=click.IntRange(1, 16), help="Tokens the draft "
                 "proposes per step (default 4)."),
    click.option("--lookup", type=click.IntRange(1, 16), metavar="N",
                 help="Speculative decoding without a draft: propose the N tokens that "
                      "followed the latest earlier match of the last 1 to 3 tokens (fast "
                      "when the reply copies its input: code edits, quotes)."),
)

# Everything a command that loads a model and generates takes (generate, chat).
generation_options = stack_options(sampling_options, stop_option, speculative_options,
                                   load_options, memory_options, kv_disk_options, force_option)
