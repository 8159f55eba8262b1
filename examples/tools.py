"""Tools with the Python API: plain functions and MCP servers in one loop.

    python examples/tools.py                        # the default model (downloads once)
    python examples/tools.py path/to/model tools.json   # and an mcpServers file

The model's calls run (each one shown and, for the MCP servers' tools, approved at the
terminal), their results go back to it, and it answers.
"""

import json
import sys
from datetime import date

from qwen_mlx import McpServers, load


def today() -> str:
    """Today's date, as YYYY-MM-DD."""
    return date.today().isoformat()


def approve(call) -> bool:
    print(f"\n{call.name} {json.dumps(call.arguments)}")
    return call.name == "today" or input("run it? [y/N] ").strip().lower() == "y"


model = load(sys.argv[1] if len(sys.argv) > 1 else None)
files = sys.argv[2:3]
with McpServers.from_files(files, on_note=print) as servers:
    result = model.chat("What is today's date, and what day of the week is it?",
                        tools=[today, servers], on_call=approve, max_tokens=400)
for message in result.messages:
    print(f"[{message['role']}] {message['content']}")
print(f"{result.rounds} round(s) of tool calls")
