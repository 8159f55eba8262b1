"""The tool options of `chat` (MCP servers, approval, rounds, timeout), and opening them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from ..errors import QwenMlxError
from ..tools import McpServers, Toolbox
from ..tools.config import default_file, read_all
from ..tools.toolbox import DEFAULT_ROUNDS, DEFAULT_TIMEOUT
from .options import stack_options

tool_options = stack_options(
    click.option("--mcp", "mcp_files", multiple=True,
                 type=click.Path(path_type=Path, dir_okay=False),
                 help="An MCP servers file (Claude Desktop's and LM Studio's mcpServers "
                      "JSON; repeatable). Without it, $QWEN_MLX_CONFIG/mcp.json (else "
                      "~/.config/qwen-mlx/mcp.json) is read when present."),
    click.option("--allow-tool", "allowed_tools", multiple=True, metavar="NAME",
                 help="Run this tool without asking (repeatable); other calls ask yes, no or "
                      "always."),
    click.option("--max-tool-rounds", type=click.IntRange(min=0), default=DEFAULT_ROUNDS,
                 show_default=True, help="Most rounds of tool calls after one message."),
    click.option("--tool-timeout", type=click.FloatRange(min=0, min_open=True),
                 default=DEFAULT_TIMEOUT, show_default=True,
                 help="Seconds a tool call may take; then its result says it timed out."),
)


def open_tools(mcp_files: tuple[Path, ...], allowed: tuple[str, ...], timeout: float,
               note: Callable[[str], None]) -> Toolbox | None:
    """The toolbox of the given files (or of the default file, when it exists); None when
    there are no servers. Files are checked before any server starts; a server that fails
    is one line through ``note``."""
    files = list(mcp_files) or ([default_file()] if default_file().is_file() else [])
    specs = read_all(files)
    if not specs:
        if allowed:
            raise QwenMlxError("--allow-tool needs tools: pass --mcp FILE")
        return None
    servers = McpServers(specs, on_note=note)
    toolbox = Toolbox([servers], timeout=timeout, on_note=note)
    unknown = sorted(set(allowed) - {t.name for t in toolbox.tools})
    if unknown:
        note(f"--allow-tool {', '.join(unknown)}: no running server offers "
             f"{'it' if len(unknown) == 1 else 'them'}")
    return toolbox
