"""`qwen-mlx chat`: a multi-turn conversation in the terminal (or over a pipe)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from .console import PrefillBar, err, open_model
from .options import (MODEL_HELP, generation_options, memory_kwargs, model_argument,
                      sampling_kwargs)


@click.command(help=f"""Chat with a model. Replies stream as they are generated; the KV cache
is reused across turns, so each turn computes only its new tokens. Type /help for commands.
When stdin is not a terminal, each input line is one message. {MODEL_HELP}""")
@model_argument
@click.option("--system", help="System prompt.")
@click.option("--think/--no-think", default=None,
              help="Reasoning on or off (hybrid Qwen3 models; default: the template's).")
@click.option("--max-context", type=click.IntRange(min=64),
              help="Tokens of history to keep (default: the model's context length).")
@click.option("--load", "session_name", help="Resume a session saved with /save.")
@click.option("-q", "--quiet", is_flag=True, help="No statistics line after each reply.")
@click.option("--jsonl", is_flag=True, help="For programs: read one message (or /command) "
              "per stdin line and answer each with one JSON object on stdout (reply, "
              "finish_reason, stats; or error).")
@generation_options
def chat(model: str | None, system: str | None, think: bool | None, max_context: int | None,
         session_name: str | None, quiet: bool, jsonl: bool, adapter: Path | None,
         recipe: str, stop: tuple[str, ...], **options) -> None:
    from ..chat import ChatSession, store
    from ..chat.jsonl import JsonlRepl
    from ..chat.repl import Repl

    llm = open_model(model, recipe=recipe, adapter=adapter, **memory_kwargs(options))
    session = ChatSession(llm, system=system, thinking=think, max_context=max_context,
                          stop=stop, **sampling_kwargs(options))
    if session_name:
        store.load(session, session_name)
    interactive = sys.stdin is not None and sys.stdin.isatty() and not jsonl
    out = Console(highlight=False, soft_wrap=True)
    kind = JsonlRepl if jsonl else Repl
    with PrefillBar() as bar:
        kind(session, out=out, err=err, quiet=quiet, progress=None if jsonl else bar).run(
            None if interactive else sys.stdin)
