"""A small MCP server for the tests, written with the official SDK's MCPServer (FastMCP in
mcp 1.x), over stdio: ``python tests/mcp_server.py`` (or streamable HTTP: ``--http PORT``). Its tools add, echo, sleep, ask (a form), raise,
return a megabyte, and end the process in the middle of a call."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve
from pydantic import BaseModel, Field

app = MCPServer("fixture")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def echo(text: str) -> str:
    """Give the text back."""
    return text


@app.tool()
async def sleep(seconds: float, ctx: Context) -> str:
    """Wait, then say so (reporting progress each second, to a client that asked)."""
    whole = int(seconds)
    for second in range(whole):
        await asyncio.sleep(1)
        await ctx.report_progress(second + 1, whole, f"{second + 1} s")
    await asyncio.sleep(seconds - whole)
    return f"slept {seconds:g} s"


class Person(BaseModel):
    name: str = Field(description="Your name")
    age: int | None = Field(default=None, description="Your age")


def who() -> Elicit[Person]:
    return Elicit("Who are you?", Person)


@app.tool()
async def ask(answer: Annotated[ElicitationResult[Person], Resolve(who)]) -> str:
    """Ask the user for their name and age (an elicitation form), and say the answer."""
    if answer.action != "accept":
        return answer.action
    return f"name={answer.data.name} age={answer.data.age}"


@app.tool()
def fail(message: str) -> str:
    """Raise an error."""
    raise RuntimeError(message)


@app.tool()
def big() -> str:
    """One megabyte of text."""
    return "x" * 1_000_000


@app.tool()
def die() -> str:
    """End the server's process in the middle of the call."""
    sys.stdout.flush()
    os._exit(3)


@app.resource("note://hello", name="hello", mime_type="text/plain")
def hello() -> str:
    """A short note."""
    return "Hello from the fixture."


@app.prompt()
def greet(name: str) -> str:
    """Greet someone by name."""
    return f"Please greet {name} warmly."


if __name__ == "__main__":  # stdio, or streamable HTTP with: --http PORT
    if sys.argv[1:2] == ["--http"]:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run("stdio")
