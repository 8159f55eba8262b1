"""Tools the model can call, and the loop that runs them.

- :mod:`calls`: Qwen3's ``<tool_call>`` blocks parsed out of a reply, and the grammar that
  forces a reply to be calls (``tool_choice``);
- :mod:`config`: the ``mcpServers`` JSON file Claude Desktop and LM Studio use;
- :mod:`mcp_servers`: MCP servers (the official ``mcp`` SDK's client) on one background event loop;
- :mod:`functions`: plain Python callables as tools;
- :mod:`toolbox`: every source's tools under one name each, called with a timeout, results
  cut to a stated size;
- :mod:`loop`: one round of a tool loop (approve, run, turn results into ``tool`` messages),
  shared by the terminal chat, ``generate`` and :meth:`qwen_mlx.Model.chat`.

Imports errors, storage and engine; never the Model or anything above it (the loop drives a
generation through a function it is given).
"""

from .functions import FunctionTool
from .mcp_servers import McpServers
from .toolbox import Toolbox

__all__ = ["FunctionTool", "McpServers", "Toolbox"]
