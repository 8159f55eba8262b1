"""Terminal output for every command: status on stderr (stdout is for the model's text and
JSON), a conversion progress bar, and the model loader that uses it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from .. import load
from ..checkpoint import Checkpoint
from ..quantize import ConvertReport, convert
from ..recipes import Recipe

if TYPE_CHECKING:
    from ..model import Model

err = Console(stderr=True, highlight=False)


def convert_with_progress(source: Path, output: Path, recipe: Recipe, name: str, *,
                          force: bool = True) -> ConvertReport:
    checkpoint = Checkpoint.open(source)  # fail in one line before a progress bar is drawn
    columns = (TextColumn("converting [bold]{task.description}"), BarColumn(), DownloadColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"{name} -> {recipe.name}", total=None)
        report = convert(checkpoint, output, recipe, force=force, source_name=name,
                         progress=lambda done, total: bar.update(task, completed=done,
                                                                 total=total))
    err.print(f"[dim]converted {name} ({recipe.name}, {report.bits_per_weight:.2f} bits per "
              f"weight, {report.bytes_on_disk / 1e9:.2f} GB) in {report.seconds:.1f} s "
              f"-> {report.output}[/dim]", soft_wrap=True)
    return report


def open_model(spec: str | None, *, recipe: str = "q4",
               adapter: Path | None = None) -> "Model":
    """Resolve, convert if needed (with progress), and load."""
    return load(spec, recipe=recipe, adapter=adapter, convert=convert_with_progress)
