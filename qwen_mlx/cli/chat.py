"""`qwen-mlx chat`: a multi-turn conversation in the terminal (or over a pipe)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from ..errors import QwenMlxError
from . import stdin
from .console import (PrefillBar, PrefillBars, err, open_draft, open_model,
                      speculative_kwargs)
from .options import (MODEL_HELP, generation_options, given, memory_kwargs, model_argument,
                      sampling_kwargs)
from .serve import note
from .tools import allowed_with, check_tool_choice, open_tools, tool_options, tool_servers


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
@click.option("--web", is_flag=True, help="Chat in the browser instead: serve the model on "
              "127.0.0.1:--port (as `qwen-mlx serve` does) and open its chat page.")
@click.option("--port", type=click.IntRange(1, 65535), default=11434, show_default=True,
              help="With --web: the port to serve on.")
@tool_options
@generation_options
def chat(model: str | None, system: str | None, think: bool | None, max_context: int | None,
         session_name: str | None, quiet: bool, jsonl: bool, web: bool, port: int,
         mcp_files: tuple[Path, ...], allowed_tools: tuple[str, ...], max_tool_rounds: int,
         tool_choice: str,
         tool_timeout: float, mcp_roots: tuple[Path, ...], mcp_start_timeout: float,
         adapter: Path | None, recipe: str,
         stop: tuple[str, ...],
         **options) -> None:
    from ..chat import ChatSession, store
    from ..chat.jsonl import JsonlRepl
    from ..chat.repl import Repl

    specs = tool_servers(mcp_files, allowed_tools, tool_choice=tool_choice)
    if web:
        return chat_in_browser(model, port, adapter, recipe, specs,
                               (tool_timeout, mcp_start_timeout), options, list(mcp_roots))
    if given("port"):
        raise QwenMlxError("--port applies with --web (the terminal chat serves nothing)")
    draft = open_draft(options, recipe)
    llm = open_model(model, recipe=recipe, adapter=adapter, draft=draft,
                     **memory_kwargs(options))
    toolbox = open_tools(specs, allowed_tools, tool_timeout, note, mcp_start_timeout,
                         roots=list(mcp_roots) or [Path.cwd()])
    try:
        check_tool_choice(tool_choice, toolbox)
        session = ChatSession(llm, system=system, thinking=think, max_context=max_context,
                              stop=stop, tools=toolbox, tool_choice=tool_choice,
                              **sampling_kwargs(options),
                              **speculative_kwargs(options, draft))
        if session_name:
            store.load(session, session_name)
        interactive = sys.stdin is not None and sys.stdin.isatty() and not jsonl
        out = Console(highlight=False, soft_wrap=True)
        kind = JsonlRepl if jsonl else Repl
        with PrefillBar() as bar:
            kind(session, out=out, err=err, quiet=quiet, progress=None if jsonl else bar,
                 allowed_tools=allowed_with(allowed_tools, toolbox),
                 max_tool_rounds=max_tool_rounds).run(
                None if interactive else stdin.lines())
        if llm.kv_disk is not None:  # the conversation's head, for the next chat to read
            llm.kv_disk.save(session.cache, block=True)
    finally:
        if toolbox is not None:
            toolbox.close()


# options of the terminal chat; the page has its own (Settings: system prompt, thinking)
TERMINAL_ONLY = {"system": "--system", "think": "--think/--no-think",
                 "max_context": "--max-context", "session_name": "--load", "quiet": "--quiet",
                 "jsonl": "--jsonl", "stop": "--stop",
                 "allowed_tools": "--allow-tool", "max_tool_rounds": "--max-tool-rounds",
                 "tool_choice": "--tool-choice"}


def chat_in_browser(model: str | None, port: int, adapter: Path | None, recipe: str,
                    specs: list, timeouts: tuple[float, float], options: dict,
                    roots: list[Path]) -> None:
    """`chat --web`: `serve` on loopback, then the browser on its page. Sampling options
    become the server's defaults, which the page shows; options of the terminal chat are
    refused by name rather than ignored."""
    import webbrowser

    from ..serve import Server, run
    from .serve import check_port, note, served_name, server_speculation

    for name, flag in TERMINAL_ONLY.items():
        if given(name):
            raise QwenMlxError(f"{flag} applies to the terminal chat, not --web (the page "
                               f"sets the system prompt and thinking in Settings)")
    host = "127.0.0.1"
    check_port(host, port)  # before minutes of loading, not after
    draft = open_draft(options, recipe)
    llm = open_model(model, recipe=recipe, adapter=adapter, draft=draft,
                     **memory_kwargs(options))
    llm.defaults = llm.defaults.override(**sampling_kwargs(options))
    server = Server(llm, served_name(model), progress=PrefillBars(),
                    page_tools=open_tools(specs, (), timeouts[0], note, timeouts[1], roots),
                    speculation=server_speculation(llm, options, draft))
    url = f"http://{host}:{port}/"

    def ready() -> None:
        err.print(f"chat page: {url} (also the OpenAI and Ollama APIs); Ctrl-C stops",
                  soft_wrap=True)
        if not webbrowser.open(url):
            err.print("no browser could be opened here: open the address above",
                      soft_wrap=True)

    run(server, host, port, on_ready=ready)
