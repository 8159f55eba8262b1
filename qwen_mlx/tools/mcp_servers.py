"""MCP servers, through the official ``mcp`` SDK's client, for a program that is not async.

Each server gets a task on one event loop in a background thread: the task enters the SDK's
``Client`` (starting a stdio server's process, or opening a streamable HTTP session), lists
the tools, then holds the session until :meth:`McpServers.close`. A call is a coroutine on
that loop; the caller waits on its future (so a timeout or Ctrl-C cancels it). A server that
does not start, or stops, is one line through ``on_note``; the others go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import json
import logging
import os
import re
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from ..errors import QwenMlxError
from ..storage.home import home
from .config import ServerSpec
from .mcp_content import block_text, described, result_of
from .toolbox import ToolResult

START_TIMEOUT = 30.0  # seconds a server has to start and list its tools
CLOSE_TIMEOUT = 10.0
WATCH_STDIO, WATCH_HTTP = 2.0, 30.0  # seconds between checks that a server is there
CHECK_TIMEOUT = 10.0
LIST_TIMEOUT = 30.0  # seconds a server has to list or read its resources and prompts
IDLE_STOPPED = "stopped while idle"
LOG_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
LOG_NOTE_EVERY = 5.0  # seconds: a server's warnings are a line at most this often


class McpTool:
    """One tool of one server, as :class:`~qwen_mlx.tools.toolbox.Toolbox` offers it."""

    def __init__(self, servers: "McpServers", server: str, listed,
                 timeout: float | None = None) -> None:
        self.servers, self.source, self.timeout = servers, server, timeout
        self.name = listed.name
        self.description = listed.description or ""
        self.parameters = listed.input_schema or {"type": "object"}

    def alive(self) -> bool:
        """Offered while its server runs, or stopped while idle (the call restarts it)."""
        return self.source in self.servers.running or self.servers.idle_stopped(self.source)

    def start(self, arguments: dict, on_progress=None) -> concurrent.futures.Future:
        """Begin a call; ``on_progress(progress, total, message)`` hears this call's
        progress."""
        if self.servers.idle_stopped(self.source):
            self.servers.restart(self.source)
        return self.servers.start_call(self.source, self.name, arguments, on_progress)


class McpServers:
    """The servers of ``specs``, started at once (in parallel, all within
    ``start_timeout``; a disabled one not at all). ``tools`` are those of the servers that
    started; ``status`` says, per server, "running", or why not; ``approved`` names the
    tools their files let run without asking. Close it (or use it in a ``with``) to stop
    them."""

    def __init__(self, specs: list[ServerSpec], *, on_note: Callable[[str], None] | None = None,
                 start_timeout: float = START_TIMEOUT, roots: list[Path] | None = None,
                 sampling: bool = False, forms: bool = False) -> None:
        """``roots``: the folders the servers are told they may work in (MCP's roots; the
        terminal gives the current folder, the page none); None or [] declares none."""
        self.note = on_note or (lambda _: None)
        self.roots = [Path(r).resolve() for r in roots or []]
        # sampler(server, messages, system, max_tokens, temperature, stop) -> (text, stop
        # reason): the model answers a server's sampling request; its approval is the
        # sampler's. Set by the chat once it has a model; the capability is declared when
        # ``sampling`` is given (before the servers connect)
        self.sampler: Callable[..., tuple[str, str]] | None = None
        self.sampling = sampling
        # elicitor(server, message, schema) -> ("accept", {field: value}) or ("decline" |
        # "cancel", None): the user answers a server's question (a form), in the terminal
        # or the page, whichever set it; the capability is declared when ``forms`` is given
        self.elicitor: Callable[[str, str, dict], tuple[str, dict | None]] | None = None
        self.forms = forms
        self._said_at: dict[str, float] = {}  # when a server's last log line was a note
        self.status: dict[str, str] = {}
        self.clients: dict[str, object] = {}
        self.tools: list[McpTool] = []
        self._files = ExitStack()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qwen-mcp",
                                        daemon=True)
        self._thread.start()
        self._stop = asyncio.Event()
        self._specs = {spec.name: spec for spec in specs}
        self.start_timeout = start_timeout
        self._stops: dict[str, asyncio.Event] = {}  # one server's (its restart)
        self._restarting = threading.Lock()
        self._tasks: dict[str, concurrent.futures.Future] = {}
        self.approved: set[str] = set()
        self._unlogged = False  # the log folder could not be made (said once)
        self._logs: dict[str, tuple[Path, int]] = {}  # a stdio server's log, where this run's begins
        self._http_status: dict[str, int] = {}  # an HTTP server's last error status
        self._junked: set[str] = set()  # servers that wrote lines that are not MCP
        self._in_call: dict[str, int] = {}  # calls running, per server
        readies = {}
        for spec in specs:
            if spec.disabled:
                self.status[spec.name] = 'disabled ("disabled": true in its file)'
                continue
            readies[spec.name] = self._begin(spec)
        deadline = time.monotonic() + start_timeout  # they start side by side
        for spec in specs:
            if spec.disabled:
                continue
            listed = self._started(spec, readies[spec.name],
                                   max(0.0, deadline - time.monotonic()), "start")
            if listed is None:
                continue
            self.status[spec.name] = "running"
            self.tools += [McpTool(self, spec.name, t, spec.timeout) for t in listed]
            offered = {t.name for t in listed}
            self.approved |= set(spec.auto_approve) & offered
            missing = [n for n in spec.auto_approve if n not in offered]
            if missing:
                self.note(f"MCP server {spec.name!r} offers no tool named "
                          f"{', '.join(missing)} (its autoApprove names "
                          f"{'it' if len(missing) == 1 else 'them'})")

    def _junk(self, name: str, record: logging.LogRecord) -> None:
        """A line on a server's stdout that is not MCP (the SDK logs each with a traceback):
        one note the first time, then each goes to the server's log."""
        what = str(record.exc_info[1]) if record.exc_info else record.getMessage()
        found = re.search(r"input_value='(.*?)', input_type", what)
        line = found[1] if found else what.splitlines()[0]
        path = self._logs.get(name, (None, 0))[0]
        if name not in self._junked:
            self._junked.add(name)
            self.note(f"MCP server {name!r} wrote a line that is not MCP on its stdout "
                      f"({line[:80]!r}); such lines are skipped"
                      + (f" and kept in its log {path}" if path else ""))
        if path:
            with open(path, "a", encoding="utf-8") as log:
                log.write(f"[qwen-mlx] not MCP, on stdout: {line}\n")

    def _said(self, spec: ServerSpec) -> str:
        """What a stdio server wrote to its log this time, its last lines, and where the
        log is: the why of a failed start is usually there."""
        if spec.name not in self._logs:
            return ""
        path, start = self._logs[spec.name]
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(start)
                lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        except OSError:
            lines = []
        tail = " | ".join(lines[-3:])
        if len(tail) > 300:
            tail = "…" + tail[-299:]
        return f" (it said: {tail}; log: {path})" if tail else f" (log: {path})"

    @classmethod
    def from_files(cls, paths, **kwargs) -> "McpServers":
        from .config import read_all

        return cls(read_all(list(paths)), **kwargs)

    @property
    def running(self) -> set[str]:
        return {name for name, state in self.status.items() if state == "running"}

    def idle_stopped(self, name: str) -> bool:
        return self.status.get(name, "").startswith(IDLE_STOPPED)

    def _begin(self, spec: ServerSpec) -> concurrent.futures.Future:
        """Start holding a server's session -> the future of its listed tools."""
        ready = concurrent.futures.Future()
        self._stops[spec.name] = asyncio.Event()
        self._tasks[spec.name] = asyncio.run_coroutine_threadsafe(self._hold(spec, ready),
                                                                  self._loop)
        return ready

    def restart(self, name: str) -> str:
        """Stop a server if it runs and start it again (``/tools restart NAME``, or the next
        call of a server that stopped while idle) -> its status; a failure is one line."""
        spec = self._specs.get(name)
        if spec is None:
            known = ", ".join(self._specs) or "none"
            raise QwenMlxError(f"there is no MCP server named {name!r} (the servers: {known})")
        if spec.disabled:
            raise QwenMlxError(f"MCP server {name!r} is disabled in its file")
        with self._restarting:
            if self.status.get(name) == "running" and not self.idle_stopped(name):
                self._loop.call_soon_threadsafe(self._stops[name].set)
                concurrent.futures.wait([self._tasks[name]], CLOSE_TIMEOUT)
            self.clients.pop(name, None)
            self.status[name] = "restarting"
            listed = self._started(spec, self._begin(spec), self.start_timeout, "restart")
            if listed is None:
                return self.status[name]
            self.status[name] = "running"
            known = {t.name for t in self.tools if t.source == name}
            self.tools += [McpTool(self, name, t, spec.timeout) for t in listed
                           if t.name not in known]
            return "running"

    def _started(self, spec: ServerSpec, ready: concurrent.futures.Future, timeout: float,
                 verb: str) -> list | None:
        """A server's listed tools once it is up within ``timeout``; else None, and why in
        one line (its last words, its log, an HTTP status): the rest go on."""
        try:
            return ready.result(timeout)
        except concurrent.futures.TimeoutError:
            self._tasks[spec.name].cancel()
            self._failed(spec.name, f"did not {verb} within {self.start_timeout:g} s"
                                    f"{self._said(spec)}")
        except Exception as e:  # noqa: BLE001 - any failure is one line
            self._failed(spec.name, f"did not {verb}: {reason(e)}"
                                    f"{hint(self._http_status.get(spec.name))}"
                                    f"{self._said(spec)}")
        return None

    def _failed(self, name: str, why: str) -> None:
        self.status[name] = why
        self.clients.pop(name, None)
        self.note(f"MCP server {name!r} {why}; the chat goes on without its tools")

    async def _hold(self, spec: ServerSpec, ready: concurrent.futures.Future) -> None:
        """Enter the server's client, list its tools, and keep the session until closed."""
        _SERVER.set((self, spec.name))  # the SDK's tasks for this server inherit it
        try:
            async with self._client(spec) as client:
                tools, cursor = [], None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        break
                self.clients[spec.name] = client
                ready.set_result(tools)
                if not await self._watch(spec, client) and \
                        self.status.get(spec.name) == "running":
                    self.clients.pop(spec.name, None)
                    self.status[spec.name] = f"{IDLE_STOPPED}; it restarts on its next call"
                    self.note(f"MCP server {spec.name!r} stopped while idle{self._said(spec)};"
                              f" it restarts when the model calls one of its tools "
                              f"(/tools restart {spec.name} restarts it now)")
        except BaseException as e:  # noqa: BLE001 - reported, never raised into the chat
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else
                                    QwenMlxError("cancelled"))
            elif not self._stopping(spec.name) and self.status.get(spec.name) == "running":
                self._loop.call_soon(self._failed, spec.name, f"stopped: {reason(e)}")
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise

    def _stopping(self, name: str) -> bool:
        return self._stop.is_set() or self._stops[name].is_set()

    async def _watch(self, spec: ServerSpec, client) -> bool:
        """Hold the session until closed (True), or until the server is found gone (False):
        every few seconds a tools/list (ping would do, but the 2026 protocol drops it, and
        every server here lists tools) that fails with the connection closed. One that
        times out is a busy server, not a gone one."""
        from mcp_types import CONNECTION_CLOSED

        every = WATCH_HTTP if spec.url else WATCH_STDIO
        while True:
            stop = asyncio.ensure_future(self._stops[spec.name].wait())
            closed = asyncio.ensure_future(self._stop.wait())
            done, pending = await asyncio.wait({stop, closed}, timeout=every,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if done:
                return True
            if self._in_call.get(spec.name):  # a call is running: it sees a closed session
                continue
            try:
                await asyncio.wait_for(client.list_tools(), CHECK_TIMEOUT)
            except asyncio.TimeoutError:
                continue
            except Exception as e:  # noqa: BLE001 - only a closed connection means gone
                if getattr(getattr(e, "error", None), "code", None) == CONNECTION_CLOSED:
                    return False

    def _client(self, spec: ServerSpec):
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        if spec.url:
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            async def seen(response) -> None:  # the SDK says "an error response", not which
                if response.status_code >= 400:
                    self._http_status[spec.name] = response.status_code

            http = create_mcp_http_client(headers=spec.headers or None)
            http.event_hooks = {"response": [seen]}
            return Client(streamable_http_client(spec.url, http_client=http),
                          **self._capabilities(spec))
        # the server's stderr goes to a log of its own, not into the chat
        path = log_path(spec.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            errlog = self._files.enter_context(open(path, "a", encoding="utf-8"))
            self._logs[spec.name] = (Path(errlog.name), errlog.tell())
        except OSError as e:  # a read-only home: the server still starts, unlogged
            if not self._unlogged:
                self._unlogged = True
                self.note(f"cannot keep MCP servers' logs in {path.parent} "
                          f"({e.strerror or e}): their stderr is not kept")
            errlog = self._files.enter_context(open(os.devnull, "w", encoding="utf-8"))
        # the user's whole environment, as Cursor, VS Code and LM Studio pass it (the SDK's
        # default is HOME, LOGNAME, PATH, SHELL, TERM and USER only), then the file's env
        params = StdioServerParameters(command=spec.command, args=list(spec.args),
                                       env={**os.environ, **spec.env}, cwd=spec.cwd)
        return Client(stdio_client(params, errlog=errlog), **self._capabilities(spec))

    def _capabilities(self, spec: ServerSpec) -> dict:
        """What this client offers a server: its roots (when there are any), and its log
        messages (to the server's log file; warnings and worse also as a line)."""
        import mcp.types as types

        async def list_roots(context) -> types.ListRootsResult:
            return types.ListRootsResult(roots=[types.Root(uri=root.as_uri(), name=root.name)
                                                for root in self.roots])

        async def logged(params: types.LoggingMessageNotificationParams) -> None:
            self._logged(spec, params.level, params.logger, params.data)

        async def sampled(context, params: types.CreateMessageRequestParams):
            return await self._sample(spec, params)

        async def elicited(context, params):
            return await self._elicit(spec, params)

        return {"list_roots_callback": list_roots if self.roots else None,
                "logging_callback": logged, "log_level": "info",
                "sampling_callback": sampled if self.sampling else None,
                "elicitation_callback": elicited if self.forms else None}

    async def _elicit(self, spec: ServerSpec, params):
        """A server's elicitation/create (a form: a message and a flat schema), answered by
        the user through ``elicitor``: accepted with the fields, declined, or cancelled."""
        import mcp.types as types

        schema = getattr(params, "requested_schema", None)
        if self.elicitor is None or not isinstance(schema, dict):
            return types.ErrorData(code=types.INVALID_REQUEST,
                                   message="nobody is here to answer the form")
        action, content = await asyncio.to_thread(self.elicitor, spec.name, params.message,
                                                  schema)
        return types.ElicitResult(action=action, content=content)

    async def _sample(self, spec: ServerSpec, params):
        """A server's sampling/createMessage: the conversation it sends (text; other
        content described), answered by the chat's model through ``sampler``, which asks
        the user first; a refusal or a failure is an MCP error the server reads."""
        import mcp.types as types

        if self.sampler is None:
            return types.ErrorData(code=types.INVALID_REQUEST,
                                   message="this client has no model to sample from now")
        messages = [{"role": m.role, "content": block_text(m.content)}
                    for m in params.messages]
        try:
            text, stop = await asyncio.to_thread(
                self.sampler, spec.name, messages, params.system_prompt, params.max_tokens,
                params.temperature, list(params.stop_sequences or []))
        except QwenMlxError as e:
            return types.ErrorData(code=types.INVALID_REQUEST, message=str(e))
        return types.CreateMessageResult(role="assistant", model="qwen-mlx", stop_reason=stop,
                                         content=types.TextContent(type="text", text=text))

    def _logged(self, spec: ServerSpec, level: str, logger: str | None, data) -> None:
        """A server's log message: into its log file (an HTTP server's too); at warning or
        worse also one line, at most one every few seconds per server (the rest: the log)."""
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        line = f"[{level}]{f' {logger}:' if logger else ''} {text}"
        # the log the server was started with (home() may have moved since); an HTTP
        # server has none open: where it would be
        path = self._logs[spec.name][0] if spec.name in self._logs else log_path(spec.name)
        try:
            with open(path, "a", encoding="utf-8") as log:
                log.write(f"[qwen-mlx] log message {line}\n")
        except OSError:
            pass
        if level not in LOG_LEVELS[LOG_LEVELS.index("warning"):]:
            return
        now = time.monotonic()
        if now - self._said_at.get(spec.name, -LOG_NOTE_EVERY) < LOG_NOTE_EVERY:
            return
        self._said_at[spec.name] = now
        short = " ".join(text.split())
        self.note(f"MCP server {spec.name!r} ({level}): "
                  f"{short[:200] + '…' if len(short) > 200 else short} (its log: {path})")

    def start_call(self, server: str, name: str, arguments: dict,
                   on_progress=None) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(
            self._call(server, name, arguments, on_progress), self._loop)

    async def _call(self, server: str, name: str, arguments: dict,
                    on_progress=None) -> ToolResult:
        client = self.clients.get(server)
        if client is None:
            return ToolResult(f"error: the MCP server {server!r} is not running", True)
        self._in_call[server] = self._in_call.get(server, 0) + 1  # not idle: unwatched
        try:
            async def progressed(progress: float, total: float | None,
                                 message: str | None) -> None:
                if on_progress is not None:
                    on_progress(progress, total, message)

            # a progress token with every call: the server may report (the terminal shows
            # it on one line, the page in the call's note)
            result = await client.call_tool(name, arguments, progress_callback=progressed)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the model reads what went wrong
            from mcp_types import CONNECTION_CLOSED

            error = getattr(e, "error", None)
            if self._tasks[server].done() or getattr(error, "code", None) == CONNECTION_CLOSED:
                self._failed(server, "stopped")  # the session ended under the call
                return ToolResult(f"error: the MCP server {server!r} stopped during the call",
                                  True)
            return ToolResult(f"error: {reason(e)}", True)
        finally:
            self._in_call[server] -= 1
        return result_of(result)

    # -- resources and prompts (the chat's /resources, /resource, /prompts, /prompt) -----

    def _ask(self, server: str, request, timeout: float = LIST_TIMEOUT):
        """Run one request of a running server's client on the servers' loop, and wait."""
        client = self.clients.get(server)
        if client is None:
            raise QwenMlxError(f"the MCP server {server!r} is not running")
        return asyncio.run_coroutine_threadsafe(request(client), self._loop).result(timeout)

    def _listed(self, kind: str) -> list[tuple[str, object]]:
        """(server, item) of every running server's resources or prompts (a server that
        offers none answers with an error: it has none)."""
        out = []
        for server in sorted(self.running):
            async def every(client):
                items, cursor = [], None
                while True:
                    page = await getattr(client, f"list_{kind}")(cursor=cursor)
                    items += getattr(page, kind)
                    cursor = page.next_cursor
                    if not cursor:
                        return items
            try:
                out += [(server, item) for item in self._ask(server, every)]
            except Exception:  # noqa: BLE001 - no such capability, or it failed: none
                continue
        return out

    def resources(self) -> list[tuple[str, object]]:
        return self._listed("resources")

    def prompts(self) -> list[tuple[str, object]]:
        return self._listed("prompts")

    def read_resource(self, uri: str) -> str:
        """A resource's contents as text (a blob described: type, URI, size)."""
        offered = [server for server, r in self.resources() if str(r.uri) == uri]
        if not offered:
            raise QwenMlxError(f"no running MCP server lists the resource {uri!r} "
                               f"(/resources lists them)")
        try:
            read = self._ask(offered[0], lambda client: client.read_resource(uri))
        except QwenMlxError:
            raise
        except Exception as e:  # noqa: BLE001 - one line
            raise QwenMlxError(f"cannot read {uri}: {reason(e)}") from None
        return "\n".join(item.text if isinstance(getattr(item, "text", None), str)
                         else described(item, "resource")
                         for item in read.contents)

    def prompt(self, name: str, arguments: dict[str, str]) -> str:
        """A server's prompt filled with ``arguments``, as the text of a message."""
        offered = [server for server, p in self.prompts() if p.name == name]
        if not offered:
            raise QwenMlxError(f"no running MCP server offers a prompt named {name!r} "
                               f"(/prompts lists them)")
        try:
            got = self._ask(offered[0], lambda client: client.get_prompt(name, arguments))
        except Exception as e:  # noqa: BLE001 - a missing argument, say: one line
            raise QwenMlxError(f"the prompt {name} failed: {reason(e)}") from None
        return "\n\n".join(block_text(m.content) for m in got.messages)

    def close(self) -> None:
        """Stop every server (each task leaves its client, which ends the process)."""
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        concurrent.futures.wait(list(self._tasks.values()), CLOSE_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CLOSE_TIMEOUT)
        self._files.close()

    def __enter__(self) -> "McpServers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SERVER: contextvars.ContextVar = contextvars.ContextVar("qwen_mlx_mcp_server", default=None)


class _NotMcp(logging.Filter):
    """Routes the SDK's "Failed to parse JSONRPC message" records (one traceback per stdout
    line that is not MCP) to the server that wrote the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        owner = _SERVER.get()
        if owner is None or not record.getMessage().startswith("Failed to parse JSONRPC"):
            return True
        servers, name = owner
        servers._junk(name, record)
        return False


logging.getLogger("mcp.client.stdio").addFilter(_NotMcp())


def log_path(server: str) -> Path:
    """Where a server's stderr and our notes about it go (an HTTP server's log messages
    too): always inside ``mcp-logs`` (a name such as ``../../x`` once wrote elsewhere); a
    name changed to be a file name gets a short hash of the original, so two stay apart."""
    name = re.sub(r"[^\w.-]", "_", server).lstrip(".") or "server"
    if name != server:
        name += "-" + hashlib.sha256(server.encode()).hexdigest()[:8]
    return home() / "mcp-logs" / f"{name}.log"


def hint(status: int | None) -> str:
    """An HTTP server's refusal: its status, and where credentials go."""
    if status in (401, 403):
        return (f" (HTTP {status}: the server wants credentials; give them in its "
                f"\"headers\", e.g. \"Authorization\": \"Bearer ${{TOKEN}}\")")
    return f" (HTTP {status})" if status else ""


def reason(e: BaseException) -> str:
    """An exception in one line (an exception group: its first leaf)."""
    while getattr(e, "exceptions", None):  # an exception group (Python 3.10: the backport)
        e = e.exceptions[0]
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
