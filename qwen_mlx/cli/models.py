"""`qwen-mlx models`: list, remove and prune converted models; show the Qwen3 downloads."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from ..errors import QwenMlxError
from .console import err


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _print_json(items) -> None:
    """One JSON array (``[]`` when there is nothing), so a script can always parse it."""
    sys.stdout.write(json.dumps([item.to_dict() for item in items]) + "\n")


PIPE_WIDTH = 10_000  # wider than any row: the table takes its content's width


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for c in columns:
        table.add_column(c, justify="right" if c == "size" else "left")
    for row in rows:
        table.add_row(*row)
    out = Console(highlight=False)
    if not out.is_terminal:  # a pipe or a file: rows as long as they are, no path cut short
        out = Console(highlight=False, width=PIPE_WIDTH)
    out.print(table)


@click.group(invoke_without_command=True, help="""Converted models in the cache (like `ollama
list`): `qwen-mlx models` lists them with recipe, size, KL against the source (when
convert measured it), source, revision and last use; `rm` removes one, `prune` removes what
interrupted runs and deleted sources left, `sources` shows the Qwen3 downloads in the
Hugging Face cache. Nothing in the Hugging Face cache is removed
unless you ask (`rm --source`).""")
@click.option("--json", "as_json", is_flag=True, help="List as JSON (as `models list --json`).")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command, as_json=as_json)
    elif as_json:
        raise QwenMlxError(f"--json goes after the subcommand: qwen-mlx models "
                           f"{ctx.invoked_subcommand} --json")


@models.command("list", help="List converted models (the default action).")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per model.")
def list_command(as_json: bool = False) -> None:
    from ..hub import cache as model_cache

    found = model_cache.list_models()
    if as_json:
        _print_json(found)
        return
    stale = model_cache.stale_leftovers()
    if not found:
        err.print(f"no converted models in {model_cache.models_root()}", soft_wrap=True)
    else:
        rows = [[m.name + (" [dim](source gone)[/dim]" if m.orphaned else "") +
                 ("" if m.complete else " [dim](incomplete)[/dim]"), m.recipe, _size(m.nbytes),
                 "" if m.kl is None else f"{m.kl:.4f}", (m.revision or "")[:12],
                 _when(m.last_used), str(m.path)] for m in found]
        _table(f"converted models ({_size(sum(m.nbytes for m in found))})",
               ["model", "recipe", "size", "KL", "revision", "last used", "path"], rows)
    leftover = model_cache.orphans(found)  # the list above: no second walk of the cache
    if stale or leftover:
        total = sum(x.nbytes for x in stale) + sum(m.nbytes for m in leftover)
        err.print(f"{len(stale)} leftovers of interrupted runs and {len(leftover)} orphaned "
                  f"conversions hold {_size(total)}: `qwen-mlx models prune` removes them",
                  soft_wrap=True)


@models.command(help="""Remove converted MODEL (an alias, repo id, source folder or cache
path): every recipe, or only --recipe. --source also deletes the download from the Hugging
Face cache.""")
@click.argument("model")
@click.option("--recipe", help="Only this recipe (q4, q8, ...).")
@click.option("--source", is_flag=True, help="Also delete the Hugging Face download.")
def rm(model: str, recipe: str | None, source: bool) -> None:
    from ..hub import resolver as hub
    from ..hub import cache as model_cache

    try:
        found = model_cache.find(model, recipe)
    except QwenMlxError:
        if not source:
            raise
        found = []
    for m in found:
        freed = model_cache.remove(m)
        err.print(f"removed {m.name} ({m.recipe}, {_size(freed)}) from {m.path}",
                  soft_wrap=True)
    if source:
        repo = hub.ALIASES.get(model.lower(), model)
        freed = model_cache.remove_source(repo)
        if not freed and not found:
            raise QwenMlxError(f"{model!r} is neither converted nor in the Hugging Face cache")
        err.print(f"removed {repo} from the Hugging Face cache ({_size(freed)})" if freed else
                  f"{repo} was not in the Hugging Face cache", soft_wrap=True)


@models.command(help="""Remove partial folders and temporary files that interrupted runs
left in the cache, and conversions whose local source folder is gone or that never
finished.""")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def prune(dry_run: bool) -> None:
    from ..storage import leftovers
    from ..hub import cache as model_cache

    stale, orphans = model_cache.stale_leftovers(), model_cache.orphans()
    if not stale and not orphans:
        err.print("nothing to prune")
        return
    if dry_run:
        for x in stale:
            err.print(f"would remove {x.describe()}, {_size(x.nbytes)}", soft_wrap=True)
        for m in orphans:
            err.print(f"would remove {m.path} ({'source gone' if m.orphaned else 'incomplete'}"
                      f", {_size(m.nbytes)})", soft_wrap=True)
        return
    leftovers.clean(stale)
    model_cache.remove_empty_folders()
    for m in orphans:
        freed = model_cache.remove(m)
        err.print(f"removed {m.path} ({'source gone' if m.orphaned else 'incomplete'}, "
                  f"{_size(freed)})", soft_wrap=True)


@models.command(help="Show the Qwen3 models in the Hugging Face cache (conversion sources).")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per repo.")
def sources(as_json: bool) -> None:
    from ..hub import cache as model_cache

    found = model_cache.sources()
    if as_json:
        _print_json(found)
        return
    if not found:
        err.print("no Qwen3 models in the Hugging Face cache")
        return
    _table("Qwen3 in the Hugging Face cache", ["repo", "size", "revisions", "last used", "path"],
           [[s.repo_id, _size(s.nbytes), ", ".join(r[:12] for r in s.revisions),
             _when(s.last_accessed), str(s.path)] for s in found])
