"""Every tool the model is offered, under one name each, from any source (MCP servers,
Python functions), called with a timeout; a result too long for the context is cut to a
stated size, and says so."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from ..errors import QwenMlxError

DEFAULT_TIMEOUT = 60.0  # seconds a call may take
DEFAULT_ROUNDS = 8  # rounds of calls after one message
DEFAULT_RESULT_CHARS = 20_000  # about 5,000 tokens: a result longer than this is cut
CANCELLED = "the user cancelled this call"


@dataclass(frozen=True)
class ToolResult:
    """What a call gave back, as the model will read it; ``error`` when it failed."""

    text: str
    error: bool = False


class Tool(Protocol):
    """A tool: its name, description and JSON-schema parameters as offered to the model,
    where it comes from (an MCP server's name, or "python"), and ``start``, which begins a
    call and returns a future of its :class:`ToolResult` (``on_progress(progress, total,
    message)`` hears the progress it reports, if any)."""

    name: str
    description: str
    parameters: dict
    source: str

    def start(self, arguments: dict,
              on_progress: Callable[[float, float | None, str | None], None] | None = None
              ) -> concurrent.futures.Future: ...


class Toolbox:
    """Tools from ``sources``: :class:`~qwen_mlx.tools.mcp.McpServers`,
    :class:`~qwen_mlx.tools.functions.FunctionTool`, or plain functions (their schema from
    their signature). A name offered twice keeps its first tool; ``on_note`` hears which
    one was left out."""

    def __init__(self, sources: Iterable = (), *, timeout: float = DEFAULT_TIMEOUT,
                 max_result_chars: int = DEFAULT_RESULT_CHARS,
                 on_note: Callable[[str], None] | None = None) -> None:
        from .functions import FunctionTool

        if timeout <= 0:
            raise QwenMlxError("the tool timeout must be above 0 seconds")
        if max_result_chars < 100:
            raise QwenMlxError("a tool result must be allowed at least 100 characters")
        self.timeout, self.max_result_chars = timeout, max_result_chars
        self.sources = []
        self._tools: dict[str, Tool] = {}
        self.note = on_note or (lambda _: None)
        for source in sources:
            if callable(source) and not hasattr(source, "tools"):
                source = FunctionTool(source)
            self.sources.append(source)
            for tool in source.tools if hasattr(source, "tools") else [source]:
                if tool.name in self._tools:
                    self.note(f"tool {tool.name!r} of {tool.source} is not offered: "
                              f"{self._tools[tool.name].source} has one of that name")
                    continue
                self._tools[tool.name] = tool

    @property
    def tools(self) -> list[Tool]:
        """The tools offered now (an MCP server that stopped takes its tools with it)."""
        return [t for t in self._tools.values() if getattr(t, "alive", lambda: True)()]

    def specs(self) -> list[dict] | None:
        """The tools as the chat template takes them (OpenAI's function format); None
        when there are none, so the prompt has no tools section."""
        return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}}
                for t in self.tools] or None

    def call(self, name: str, arguments, cancel: threading.Event | None = None,
             on_progress: Callable[[float, float | None, str | None], None] | None = None
             ) -> ToolResult:
        """Run one call and wait for it (up to the timeout). A tool that fails, times out
        or does not exist is an error result the model reads, never an exception; Ctrl-C
        cancels the call and is raised on; ``cancel`` set (the chat page's Stop) cancels
        it and gives :data:`CANCELLED`; ``on_progress(progress, total, message)`` hears
        this call's progress (an MCP server's)."""
        tool = next((t for t in self.tools if t.name == name), None)
        if tool is None:
            known = ", ".join(t.name for t in self.tools) or "none"
            return ToolResult(f"error: there is no tool named {name!r} (the tools: {known})",
                              True)
        if not isinstance(arguments, dict):
            return ToolResult("error: the arguments must be a JSON object", True)
        timeout = getattr(tool, "timeout", None) or self.timeout  # its server's, if set
        future = tool.start(arguments, on_progress)
        try:
            result = wait(future, timeout, cancel)
        except concurrent.futures.CancelledError:
            result = ToolResult(CANCELLED, True)
        except concurrent.futures.TimeoutError:
            future.cancel()
            result = ToolResult(f"error: {name} did not answer within {timeout:g} s", True)
        except KeyboardInterrupt:
            future.cancel()
            raise
        except Exception as e:  # the tool's own failure is the model's to read
            result = ToolResult(f"error: {name} failed: {type(e).__name__}: {e}", True)
        return self.cut(result)

    def approved(self) -> set[str]:
        """The tools their sources let run without asking (an MCP file's autoApprove)."""
        return set().union(*(getattr(s, "approved", set()) for s in self.sources))

    def servers(self) -> list:
        """The MCP sources (their resources and prompts are the chat's to show)."""
        return [s for s in self.sources if hasattr(s, "resources")]

    def read_resource(self, uri: str) -> str:
        """A resource's text, from the MCP source that lists it (the chat's /resource, the
        page's picker); a QwenMlxError says none does."""
        return self._first(lambda servers: servers.read_resource(uri))

    def prompt(self, name: str, arguments: dict[str, str]) -> str:
        """A prompt filled in, from the MCP source that offers it."""
        return self._first(lambda servers: servers.prompt(name, arguments))

    def _first(self, ask: Callable[[object], str]) -> str:
        problem = "there are no MCP servers"
        for servers in self.servers():
            try:
                return ask(servers)
            except QwenMlxError as e:  # not this source's: the next one's, maybe
                problem = str(e)
        raise QwenMlxError(problem)

    def restart(self, server: str) -> str:
        """Restart one MCP server by name -> its status (a QwenMlxError names the servers
        when there is no such one)."""
        for source in self.sources:
            if server in getattr(source, "status", {}):
                return source.restart(server)
        known = ", ".join(n for s in self.sources for n in getattr(s, "status", {})) or "none"
        raise QwenMlxError(f"there is no MCP server named {server!r} (the servers: {known})")

    def describe(self) -> list[str]:
        """One line per source: its name, its state, its tools."""
        lines = []
        for source in self.sources:
            status = getattr(source, "status", None)
            if status is None:  # a Python function
                lines.append(f"python: {source.name}")
                continue
            for server, state in status.items():
                names = [t.name for t in source.tools if t.source == server]
                lines.append(f"{server} ({state}): {', '.join(names) or 'no tools'}"
                             if state == "running" else f"{server}: {state}")
        return lines or ["no tools"]

    def cut(self, result: ToolResult) -> ToolResult:
        size = len(result.text)
        if size <= self.max_result_chars:
            return result
        return ToolResult(f"{result.text[:self.max_result_chars]}\n[cut: the result was "
                          f"{size:,} characters; the first {self.max_result_chars:,} are "
                          f"kept]", result.error)

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "Toolbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait(future: concurrent.futures.Future, timeout: float, cancel: threading.Event | None):
    """``future.result(timeout)``, cancelled (CancelledError) as soon as ``cancel`` is set."""
    if cancel is None:
        return future.result(timeout)
    deadline = time.monotonic() + timeout
    while not cancel.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            raise concurrent.futures.TimeoutError
        try:
            return future.result(min(left, 0.05))
        except concurrent.futures.TimeoutError:
            continue
    future.cancel()
    raise concurrent.futures.CancelledError
