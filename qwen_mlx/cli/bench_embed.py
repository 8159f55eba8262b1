"""`qwen-mlx bench --embed`: embedding tokens/s, batched against one input at a time, and
peak memory against the memory plan's estimate (measured in ``benchmark/embedding.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ..errors import QwenMlxError
from ..storage.atomic import atomic_write_text
from .console import err
from .options import given

# bench's options that measure generation: refused with --embed rather than ignored
GENERATION_ONLY = {"prompt_lengths": "--prompt-lengths", "depths": "--depths",
                   "gen_tokens": "--gen-tokens", "compare": "--compare",
                   "plot_path": "--plot", "draft": "--draft", "lookup": "--lookup",
                   "draft_tokens": "--draft-tokens", "kv_bits": "--kv-bits",
                   "kv_group_size": "--kv-group-size", "kv_start": "--kv-start",
                   "prefill_step": "--prefill-step"}


def check_embed_options(embed: bool, embed_sets: str) -> list[tuple[int, int]] | None:
    """The sets to measure with --embed (None without it); an option that does not apply
    either way is refused by name."""
    from ..benchmark.embedding import parse_sets

    if not embed:
        if given("embed_sets"):
            raise QwenMlxError("--embed-sets applies to --embed: add --embed, or drop it")
        return None
    for name, option in GENERATION_ONLY.items():
        if given(name):
            raise QwenMlxError(f"{option} measures generation; it does not apply with --embed "
                               f"(an embedding is one forward with a full-precision cache)")
    try:
        return parse_sets(embed_sets)
    except ValueError as e:
        raise QwenMlxError(f"--embed-sets: {e}") from None


def bench_embed(targets: list[Callable[[], object]], sets: list[tuple[int, int]], reps: int,
                warmup: int, json_path: Path | None, record: dict) -> None:
    """Measure each target (a callable loading a benchmark Target) and print the table;
    ``record`` (versions, machine, settings) gains the results and goes to ``json_path``."""
    results = [_measure(load_target(), sets, reps, warmup) for load_target in targets]
    _print_table(results)
    record = {**record, "results": results, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
        err.print(f"[dim]wrote {json_path}[/dim]")


def _measure(target, sets: list[tuple[int, int]], reps: int, warmup: int) -> dict:
    """One loaded target's figures (it is let go when this returns, before the next
    loads)."""
    from ..benchmark.embedding import measure_embedding

    longest = max(tokens for _, tokens in sets)
    if longest > target.context_length:
        raise QwenMlxError(f"{target.name}: {longest:,}-token inputs exceed the context limit "
                           f"of {target.context_length:,}")
    with err.status(target.name) as status:
        measured = measure_embedding(target.model, sets, reps=reps, warmup=warmup,
                                     on_step=lambda text: status.update(f"{target.name}: "
                                                                        f"{text}"))
    return {**measured, "name": target.name, "load_seconds": round(target.load_seconds, 3),
            "compute_dtype": target.compute_dtype}


def _print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="qwen-mlx bench --embed (medians)", title_justify="left")
    for column, justify in (("model", "left"), ("inputs x tokens", "right"),
                            ("batched\ntok/s", "right"), ("one at a time\ntok/s", "right"),
                            ("batched /\none at a time", "right"), ("rows per\nforward", "right"),
                            ("peak GB\n(plan's estimate)", "right")):
        table.add_column(column, justify=justify)
    for r in results:
        for s in r["sets"]:
            rates, memory = s["tokens_per_second"], s["memory"]
            estimate = f" ({memory['estimate'] / 1e9:.2f})" if memory["estimate"] else ""
            table.add_row(r["name"], f"{s['inputs']} x {s['tokens']:,}",
                          f"{rates['batched']:,.1f}", f"{rates['one_at_a_time']:,.1f}",
                          f"x{s['batched_over_one_at_a_time']:.2f}",
                          str(s["rows_per_forward"] or ""),
                          f"{memory['peak'] / 1e9:.2f}{estimate}")
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=200)
    out.print(table)
