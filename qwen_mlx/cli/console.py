"""Terminal output for every command: status on stderr (stdout is for the model's text and
JSON), a conversion progress bar, and the model loader that uses it."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeRemainingColumn)
from rich.text import Text

from .. import load
from ..errors import QwenMlxError
from ..models.checkpoint import Checkpoint
from ..quant.convert import ConvertReport, convert
from ..models.recipes import Recipe
from .options import check_recipe_applies

if TYPE_CHECKING:
    from ..model import Model

err = Console(stderr=True, highlight=False)


def convert_with_progress(source: Path, output: Path, recipe: Recipe, name: str, *,
                          force: bool = True) -> ConvertReport:
    checkpoint = Checkpoint.open(source)  # fail in one line before a progress bar is drawn
    columns = (TextColumn("converting [bold]{task.description}"), BarColumn(), DownloadColumn(),
               TimeRemainingColumn())
    # A pipe or a log gets the summary line only, not a bar (nor the blank line it leaves).
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(f"{name} -> {recipe.name}", total=None)
        report = convert(checkpoint, output, recipe, force=force, source_name=name,
                         progress=lambda done, total: bar.update(task, completed=done,
                                                                 total=total))
    err.print(f"[dim]converted {name} ({recipe.name}, {report.bits_per_weight:.2f} bits per "
              f"weight, {report.bytes_on_disk / 1e9:.2f} GB) in {report.seconds:.1f} s "
              f"-> {report.output}[/dim]", soft_wrap=True)
    return report


def open_model(spec: str | None, *, recipe: str = "q4", adapter: Path | None = None,
               **memory) -> "Model":
    """Resolve, convert if needed (with progress), plan memory, and load. With an adapter
    and no model, the model is the adapter's recorded base (as `fuse` does)."""
    if adapter is not None:
        from ..models.loader import base_model_of, check_adapter

        check_adapter(adapter)
        spec = spec if spec is not None else base_model_of(adapter)
    check_recipe_applies(spec, recipe)
    model = load(spec, recipe=recipe, adapter=adapter, convert=convert_with_progress, **memory)
    native = int(model.config.get("max_position_embeddings", 0))
    if model.context_length < native and memory.get("context") is None:
        err.print(f"[dim]context: {model.context_length:,} tokens fit in memory "
                  f"({model.kv.label} KV; the model allows {native:,}; "
                  f"`qwen-mlx plan` shows the options)[/dim]", soft_wrap=True)
    return model


def check_speculative_options(options: dict) -> None:
    """--draft with --lookup, or --draft-tokens without --draft: refused by name."""
    if options.get("draft") is not None and options.get("lookup") is not None:
        raise QwenMlxError("choose a draft model (--draft) or prompt lookup (--lookup), "
                           "not both")
    if options.get("draft") is None and options.get("draft_tokens") is not None:
        raise QwenMlxError("--draft-tokens needs --draft (or use --lookup N)")


def open_draft(options: dict, recipe: str) -> "Model | None":
    """--draft MODEL, loaded before the model so that the model's memory plan counts it
    (its options checked before any load)."""
    check_speculative_options(options)
    if options.get("draft") is None:
        return None
    if not options["draft"].strip():  # "" once loaded the default model as the draft
        raise QwenMlxError("--draft needs a MODEL (it was empty)")
    try:
        return load(options["draft"], recipe=recipe, convert=convert_with_progress)
    except QwenMlxError as e:  # which of the two models it is about
        raise QwenMlxError(f"--draft {options['draft']}: {e}") from None


def speculative_kwargs(options: dict, draft: "Model | None") -> dict:
    """--draft (loaded by :func:`open_draft`), --draft-tokens, --lookup -> the request's
    speculative settings (checked against the model when a request is made)."""
    out = {k: options[k] for k in ("draft_tokens", "lookup") if options.get(k) is not None}
    if draft is not None:
        out["draft"] = draft
    return out


class TokenRate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} tok/s" if task.speed else "")


def _prefill_columns():
    return (TextColumn("prefill"), BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} tokens"), TokenRate(),
            TimeRemainingColumn())


class PrefillBar:
    """A prefill progress bar (tokens, tok/s, ETA) for prompts longer than ``threshold``
    tokens; pass it as ``on_prefill`` inside its ``with`` block. It closes before the first
    generated text is printed."""

    def __init__(self, threshold: int = 2048) -> None:
        self.threshold = threshold
        self.bar: Progress | None = None
        self.task = None

    def __enter__(self) -> "PrefillBar":
        return self

    def __call__(self, done: int, total: int) -> None:
        if total <= self.threshold:
            return
        if self.bar is None:
            self.bar = Progress(*_prefill_columns(), console=err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("prefill", total=total)
        self.bar.update(self.task, completed=done, total=total)
        if done >= total - 1:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __exit__(self, *exc) -> None:
        self.close()


class PrefillBars:
    """The server's prefill bars: one display, a row per request with a long prompt
    (requests are prefilled side by side, so one shared bar would mix them). Calling it
    gives one request's progress callback, with ``close()``."""

    def __init__(self, threshold: int = 2048) -> None:
        self.threshold = threshold
        self.bar = Progress(*_prefill_columns(), console=err, transient=True)
        self.rows = 0
        self.lock = threading.Lock()  # rows come and go on the engine thread and others

    def __call__(self) -> "PrefillRow":
        return PrefillRow(self)


class PrefillRow:
    def __init__(self, bars: PrefillBars) -> None:
        self.bars, self.task = bars, None

    def __call__(self, done: int, total: int) -> None:
        bars = self.bars
        if total <= bars.threshold:
            return
        with bars.lock:
            if self.task is None:
                if bars.rows == 0:
                    bars.bar.start()
                bars.rows += 1
                self.task = bars.bar.add_task("prefill", total=total)
            bars.bar.update(self.task, completed=done, total=total)
        if done >= total - 1:
            self.close()

    def close(self) -> None:
        bars = self.bars
        with bars.lock:
            if self.task is None:
                return
            bars.bar.remove_task(self.task)
            self.task = None
            bars.rows -= 1
            if bars.rows == 0:
                bars.bar.stop()


@contextlib.contextmanager
def stop_on_ctrl_c() -> Iterator:
    """First Ctrl-C: finish this step, checkpoint, stop. A second one stops at once (the last
    checkpoint is intact either way)."""
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)
        err.print("stopping after this step (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)
