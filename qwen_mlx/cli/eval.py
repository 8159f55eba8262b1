"""`qwen-mlx eval`: perplexity, and KL / top-1 / perplexity ratio against a reference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import QwenMlxError
from .console import err
from .options import MODEL_HELP, model_argument


@click.command(name="eval", help=f"""Measure MODEL on text: its perplexity and, against a
reference (by default the checkpoint it was converted from, when that is still on disk), the
mean and 99th-percentile KL divergence of the next-token distributions, top-1 agreement and
the perplexity ratio. Without --file the project's own held-out set is used. One model is
in memory at a time. {MODEL_HELP}""")
@model_argument
@click.option("--reference", type=click.Path(path_type=Path, file_okay=False),
              help="A model folder (MLX or Hugging Face) to compare with [default: the "
                   "source MODEL was converted from].")
@click.option("--file", "files", multiple=True, type=click.Path(path_type=Path,
                                                                 dir_okay=False),
              help="A text file to evaluate on (repeatable) [default: the built-in set].")
@click.option("--chunk", type=click.IntRange(16, 8192), default=512, show_default=True,
              help="Tokens per chunk; each chunk is scored from an empty cache.")
@click.option("--max-tokens", type=click.IntRange(16), default=None,
              help="Score at most this many tokens of the text.")
@click.option("--recipe", default="q4", show_default=True,
              help="Recipe to convert MODEL with, when it is not an MLX folder yet.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def eval_command(model: str | None, reference: Path | None, files: tuple[Path, ...],
                 chunk: int, max_tokens: int | None, recipe: str, as_json: bool) -> None:
    from ..hub import resolver as hub
    from ..evaluate.quality import built_in_text, evaluate, prepare
    from ..models.provenance import source_of
    from ..models.recipes import parse_recipe
    from .console import convert_with_progress

    if max_tokens is not None and max_tokens % chunk:  # chunks are scored whole
        low, high = max_tokens // chunk * chunk, -(-max_tokens // chunk) * chunk
        raise QwenMlxError(f"--max-tokens {max_tokens} is not a whole number of --chunk "
                           f"{chunk} (each chunk is scored whole): give "
                           f"{f'{low} or ' if low else ''}{high}, or another --chunk")
    text = read_texts(files) if files else built_in_text()
    folder = hub.resolve(model, parse_recipe(recipe), convert_with_progress).folder
    reference = reference or source_of(folder)
    if reference is None:
        err.print("[dim]no reference (the source is not on disk): perplexity only; "
                  "--reference FOLDER compares[/dim]", soft_wrap=True)
    parts = prepare(folder, reference, text, chunk=chunk, limit=max_tokens)
    with EvalProgress() as bars:
        quality = evaluate(folder, reference, parts, progress=bars.task)
    if as_json:
        record = {"model": str(folder), "reference": str(reference) if reference else None,
                  "chunk": chunk, **quality.to_dict()}
        sys.stdout.write(json.dumps(record) + "\n")
    else:
        click.echo(quality.line())


def read_texts(files: tuple[Path, ...]) -> str:
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise QwenMlxError(f"cannot read {f}: {getattr(e, 'strerror', None) or e}") \
                from None
    return "\n\n".join(parts)


class EvalProgress:
    """One transient bar per pass (the joint pass's layers; a lone model's tokens) on
    stderr."""

    def __enter__(self) -> "EvalProgress":
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.completed:,}/{task.total:,}"),
                             TimeRemainingColumn(), console=err, transient=True)
        self.bars.start()
        return self

    def task(self, label: str):
        task = self.bars.add_task(label, total=0)
        return lambda done, total: self.bars.update(task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        self.bars.stop()
