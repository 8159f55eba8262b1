"""The tool options of `chat` (MCP servers, approval, rounds, timeout), and opening them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from ..errors import QwenMlxError
from ..tools import McpServers, Toolbox
from ..tools.config import ServerSpec, default_file, read_all
from ..tools.mcp_servers import START_TIMEOUT
from ..tools.toolbox import DEFAULT_ROUNDS, DEFAULT_TIMEOUT
from .options import stack_options

timeout_option = stack_options(
    click.option("--tool-timeout", type=click.FloatRange(min=0, min_open=True),
                 default=DEFAULT_TIMEOUT, show_default=True,
                 help="Seconds a tool call may take; then its result says it timed out (a "
                      "server's \"timeout\" in its file wins)."),
    click.option("--mcp-root", "mcp_roots", multiple=True,
                 type=click.Path(path_type=Path, file_okay=False, exists=True),
                 help="A folder the MCP servers are told they may work in (MCP's roots; "
                      "repeatable). Default: the current folder for the terminal chat and "
                      "generate, none for the chat page."),
    click.option("--mcp-start-timeout", type=click.FloatRange(min=0, min_open=True),
                 default=START_TIMEOUT, show_default=True,
                 help="Seconds the MCP servers have to start and list their tools (they start "
                      "side by side); one that takes longer is left out, in one line."),
)

tool_options = stack_options(
    click.option("--mcp", "mcp_files", multiple=True,
                 type=click.Path(path_type=Path, dir_okay=False),
                 help="An MCP servers file (Claude Desktop's and LM Studio's mcpServers "
                      "JSON; repeatable). Without it, $QWEN_MLX_CONFIG/mcp.json (else "
                      "~/.config/qwen-mlx/mcp.json) is read when present. With --web, the "
                      "page offers the tools and asks before each call."),
    click.option("--allow-tool", "allowed_tools", multiple=True, metavar="NAME",
                 help="Run this tool without asking (repeatable); other calls ask yes, no or "
                      "always."),
    click.option("--max-tool-rounds", type=click.IntRange(min=0), default=DEFAULT_ROUNDS,
                 show_default=True, help="Most rounds of tool calls after one message."),
    click.option("--tool-choice", default="auto", show_default=True,
                 metavar="auto|required|none|NAME",
                 help="auto: the model decides whether to call; none: the tools are not "
                      "offered; required, or a tool's name: the reply to each message is a "
                      "call (of any tool, or of that one; a grammar makes it one), and the "
                      "replies to its results are free."),
    timeout_option,
)

# serve: the chat page's tools (API clients never get them)
page_tool_options = stack_options(
    click.option("--mcp", "mcp_files", multiple=True,
                 type=click.Path(path_type=Path, dir_okay=False),
                 help="An MCP servers file (mcpServers JSON; repeatable) whose tools the chat "
                      "page offers, asking the user before each call; API clients never get "
                      "them. Without it, $QWEN_MLX_CONFIG/mcp.json (else "
                      "~/.config/qwen-mlx/mcp.json) is read when present, as by chat --web. "
                      "Off loopback, tools need --api-key."),
    timeout_option,
)


def tool_servers(mcp_files: tuple[Path, ...], allowed: tuple[str, ...], *,
                 default: bool = True, tool_choice: str = "auto") -> list[ServerSpec]:
    """The servers of the given files (or, with ``default``, of the default file when it
    exists), read and checked before the model loads: a bad file is one line at once."""
    files = list(mcp_files) or \
        ([default_file()] if default and default_file().is_file() else [])
    specs = read_all(files)
    if allowed and not specs:
        raise QwenMlxError("--allow-tool needs tools: pass --mcp FILE")
    if not tool_choice:
        raise QwenMlxError("--tool-choice needs auto, required, none or a tool's name")
    if tool_choice not in ("auto", "none") and not specs:
        raise QwenMlxError(f"--tool-choice {tool_choice} needs tools: pass --mcp FILE")
    return specs


def check_tool_choice(tool_choice: str, toolbox: Toolbox | None) -> None:
    """A named --tool-choice must be a tool a running server offers (known once they
    started)."""
    if tool_choice in ("auto", "none", "required") or toolbox is None:
        return
    names = [t.name for t in toolbox.tools]
    if tool_choice not in names:
        raise QwenMlxError(f"--tool-choice {tool_choice}: no running server offers a tool of "
                           f"that name (the tools: {', '.join(names) or 'none'})")


def open_tools(specs: list[ServerSpec], allowed: tuple[str, ...], timeout: float,
               note: Callable[[str], None], start_timeout: float = START_TIMEOUT,
               roots: list[Path] | None = None) -> Toolbox | None:
    """Start the servers (after the model loaded: a failed load leaves no process behind);
    None when there are none. A server that fails is one line through ``note``.
    Servers may ask the model for replies (sampling) and the user questions (forms): the
    terminal and the page each ask the user first."""
    if not specs:
        return None
    toolbox = Toolbox([McpServers(specs, on_note=note, start_timeout=start_timeout,
                                  roots=roots, sampling=True, forms=True)],
                      timeout=timeout, on_note=note)
    unknown = sorted(set(allowed) - {t.name for t in toolbox.tools})
    if unknown:
        note(f"--allow-tool {', '.join(unknown)}: no running server offers "
             f"{'it' if len(unknown) == 1 else 'them'}")
    return toolbox


def allowed_with(allowed: tuple[str, ...], toolbox: Toolbox | None) -> tuple[str, ...]:
    """``--allow-tool``'s tools and those the servers' files pre-approve (autoApprove)."""
    return (*allowed, *sorted((toolbox.approved() if toolbox else set()) - set(allowed)))
