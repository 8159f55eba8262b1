"""`qwen-mlx generate`: one prompt in, the streamed reply out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import QwenMlxError
from ..hub.cache import describe, recipe_name
from . import stdin
from .console import PrefillBar, err, open_draft, open_model, speculative_kwargs
from .options import (MODEL_HELP, generation_options, memory_kwargs, model_argument,
                      sampling_kwargs)
from .tools import allowed_with, check_tool_choice, open_tools, tool_options, tool_servers


@click.command(help=f"""Generate a reply to one prompt and stream it to stdout. The prompt
comes from -p or, without it, from stdin; --file puts a document before it. {MODEL_HELP}""")
@model_argument
@click.option("-p", "--prompt", help="The prompt (default: read stdin).")
@click.option("-f", "--file", "document", type=click.Path(path_type=Path, dir_okay=True),
              help="A text file to put in the prompt, before the request (-p, or piped on "
                   "stdin).")
@click.option("--system", help="A system message (chat template only).")
@click.option("--raw", is_flag=True, help="Send the prompt as it is, without the chat template.")
@click.option("--think/--no-think", default=None, help="A hybrid Qwen3's reasoning before the "
              "reply [default: the model's]; a constraint applies after it.")
@click.option("--json", "as_json", is_flag=True,
              help="End stdout with one JSON record: the reply text, token counts, speeds, "
                   "memory and finish reason.")
@click.option("-q", "--quiet", is_flag=True, help="No statistics line on stderr.")
@click.option("--json-schema", "schema_file", type=click.Path(path_type=Path, dir_okay=False),
              help="The reply is JSON valid under the JSON Schema in this file.")
@click.option("--regex", help="The reply matches this regular expression.")
@click.option("--choice", help="The reply is one of these comma-separated texts.")
@tool_options
@generation_options
def generate(model: str | None, prompt: str | None, document: Path | None, system: str | None,
             raw: bool, think: bool | None, as_json: bool, quiet: bool,
             schema_file: Path | None,
             regex: str | None, choice: str | None, mcp_files: tuple[Path, ...],
             allowed_tools: tuple[str, ...], max_tool_rounds: int, tool_timeout: float,
             mcp_roots: tuple[Path, ...], mcp_start_timeout: float, tool_choice: str,
             adapter: Path | None, recipe: str, stop: tuple[str, ...], **options) -> None:
    constraint = structured(schema_file, regex, choice)
    specs = tool_servers(mcp_files, allowed_tools, default=False, tool_choice=tool_choice)
    if specs and (raw or constraint is not None):
        raise QwenMlxError("--mcp needs the chat template and a free reply: drop " +
                           ("--raw" if raw else "--json-schema, --regex or --choice"))
    if prompt is None:  # the request comes from stdin when it is piped, with --file too
        piped = sys.stdin is not None and not sys.stdin.isatty()
        prompt = stdin.read_text() if piped else ""
        if not prompt.strip() and document is None:
            raise QwenMlxError("no prompt: pass -p TEXT, --file PATH, or pipe the prompt on "
                               "stdin")
    if document is not None:
        from ..engine.documents import with_document  # the engine loads mlx-lm: on use

        prompt = with_document(document, prompt)
    if not prompt.strip():
        raise QwenMlxError("the prompt is empty")
    if raw and system:
        raise QwenMlxError("--system needs the chat template; drop --raw")
    if raw and think is not None:
        raise QwenMlxError("--think/--no-think needs the chat template; drop --raw")
    draft = open_draft(options, recipe)
    llm = open_model(model, recipe=recipe, adapter=adapter, draft=draft,
                     **memory_kwargs(options))
    options.update(speculative=speculative_kwargs(options, draft))
    if specs:
        return with_tools(llm, prompt, system, think, stop, specs, allowed_tools,
                          max_tool_rounds, (tool_timeout, mcp_start_timeout), as_json, quiet,
                          options, tool_choice, list(mcp_roots) or [Path.cwd()])
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": prompt}]
    stats, text = None, []
    with PrefillBar() as bar:
        for piece in llm.stream(prompt if raw else messages, raw=raw, on_prefill=bar,
                                stop=stop, constraint=constraint, enable_thinking=think,
                                **sampling_kwargs(options), **options["speculative"]):
            text.append(piece.text)
            sys.stdout.write(piece.text)
            sys.stdout.flush()
            stats = piece.stats or stats
    sys.stdout.write("\n")
    reply = "".join(text)
    if constraint is not None and "<think>" in reply and "</think>" not in reply:
        err.print(f"note: the {constraint.label} never applied: the reply's thinking did not "
                  f"end within --max-tokens (raise it, or pass --no-think)", soft_wrap=True,
                  markup=False)
    if as_json:
        record = {"model": str(llm.path), "recipe": recipe_name(llm.path), "text": reply,
                  **stats.to_dict(), "peak_memory_gb": round(stats.peak_memory / 1e9, 3)}
        sys.stdout.write(json.dumps(record) + "\n")
    elif not quiet:
        err.print(f"{stats.summary()}; {llm.path.name} ({describe(llm.path)})", style="dim",
                  markup=False, soft_wrap=True)
    sys.stdout.flush()


def with_tools(llm, prompt: str, system: str | None, think: bool | None,
               stop: tuple[str, ...], specs: list, allowed: tuple[str, ...], rounds: int,
               timeouts: tuple[float, float], as_json: bool, quiet: bool,
               options: dict, tool_choice: str = "auto",
               roots: list[Path] | None = None) -> None:
    """`generate --mcp`: the chat's tool loop for one prompt. Replies stream to stdout,
    calls and results go to stderr; a call is approved at the terminal (stdin when it is
    one, else /dev/tty), or by --allow-tool when there is no terminal."""
    from rich.console import Console

    from ..chat import ChatSession
    from ..chat.repl import Repl
    from .serve import note

    toolbox = open_tools(specs, allowed, timeouts[0], note, timeouts[1], roots)
    try:
        check_tool_choice(tool_choice, toolbox)
        session = ChatSession(llm, system=system, thinking=think, stop=stop, tools=toolbox,
                              tool_choice=tool_choice,
                              **sampling_kwargs(options), **options["speculative"])
        repl = Repl(session, out=Console(highlight=False, soft_wrap=True), err=err,
                    quiet=True, allowed_tools=allowed_with(allowed, toolbox),
                    max_tool_rounds=rounds,
                    ask_line=terminal_question)
        with PrefillBar() as bar:
            repl.progress = bar
            repl.reply(session.send(prompt, on_prefill=bar))
    finally:
        toolbox.close()
    stats = session.last_stats
    if stats is None:  # no reply (Ctrl-C before the first token)
        return
    if as_json:
        messages = session.messages
        rounds = sum(a["role"] == "assistant" and b["role"] == "tool"
                     for a, b in zip(messages, messages[1:]))
        record = {"model": str(llm.path), "recipe": recipe_name(llm.path),
                  "text": messages[-1]["content"] if messages[-1]["role"] == "assistant"
                  else "", "tool_rounds": rounds, "messages": messages, **stats.to_dict(),
                  "peak_memory_gb": round(stats.peak_memory / 1e9, 3)}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif not quiet:
        err.print(f"{stats.summary()}; {llm.path.name} ({describe(llm.path)})", style="dim",
                  markup=False, soft_wrap=True)
    sys.stdout.flush()


def terminal_question(question: str) -> str:
    """An answer from the terminal: stdin when it is one, else /dev/tty; no terminal at all
    is a "no" (--allow-tool runs a tool without asking)."""
    if sys.stdin is not None and sys.stdin.isatty():
        return input(question)
    try:
        with open("/dev/tty", "r+", encoding="utf-8") as tty:
            tty.write(question)
            tty.flush()
            return tty.readline()
    except OSError:
        err.print("no terminal to ask: the call is not run (--allow-tool NAME runs it)",
                  style="dim", markup=False, soft_wrap=True)
        return "n"


def structured(schema_file: Path | None, regex: str | None, choice: str | None):
    """The constraint from --json-schema, --regex or --choice (one at most), checked before
    the model loads: a file that is missing or not JSON is a one-line error now; a keyword
    the matcher does not support is named once the model's tokenizer is read."""
    from ..engine.constraint import Constraint

    given = [name for name, value in (("--json-schema", schema_file), ("--regex", regex),
                                      ("--choice", choice)) if value is not None]
    if len(given) > 1:
        raise QwenMlxError(f"{' and '.join(given)} cannot be combined: choose one")
    if schema_file is not None:
        try:
            text = schema_file.read_text()
        except OSError as e:
            raise QwenMlxError(f"cannot read --json-schema {schema_file}: "
                               f"{e.strerror or e}") from None
        return Constraint.schema(text)
    if regex is not None:
        return Constraint.regex(regex)
    if choice is not None:
        return Constraint.choice([c for c in choice.split(",")])
    return None
