"""The terminal side of `qwen-mlx chat`: line editing, slash commands, streaming display.

All conversation logic is in :class:`~qwen_mlx.chat.session.ChatSession`; this module only
reads input, prints, and maps Ctrl-C: during a reply it cuts the reply and returns to the
prompt, at the prompt (like Ctrl-D) it leaves.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Iterable, Iterator

from rich.console import Console

from ..engine import Piece
from ..engine.documents import with_document
from ..errors import QwenMlxError, os_error_line
from ..storage.home import home
from ..hub.cache import describe
from ..tools.loop import DEFAULT_ROUNDS, Approvals, Call, calls_in, run_round
from ..tools.toolbox import ToolResult
from .forms import field_label, field_value
from . import store
from .session import ChatSession

SHOWN_RESULT = 400  # characters of a tool result the terminal shows (the model gets it all)
ANSWERS = {"y": "yes", "yes": "yes", "n": "no", "no": "no", "a": "always", "always": "always"}

HELP = """commands:
  /help            this list
  /reset           forget the conversation (keeps the system prompt)
  /undo            drop the last exchange
  /retry           generate the last reply again
  /system [TEXT]   set (or, without TEXT, clear) the system prompt
  /file PATH [REQUEST]  send a text file (then REQUEST) as a message
  /save NAME       save transcript and KV cache;  /load NAME  resume one
                   (NAME alone: in the sessions folder; with a / or .safetensors: a path
                   from the current folder, as ./talk or ../notes/talk.safetensors)
  /stats           statistics of the last reply
  /think on|off    reasoning for hybrid Qwen3 models (shown dimmed, dropped from later turns)
  /tools           the MCP servers and their tools (with --mcp, or the default file);
                   /tools restart NAME restarts one
  /resources       the servers' resources;  /resource URI  attach one to your next message
  /prompts         the servers' prompts;  /prompt NAME [KEY=VALUE ...]  send one
  /exit            leave (Ctrl-D too)
Esc then Enter inserts a newline; Ctrl-C stops a reply."""


class Repl:
    def __init__(self, session: ChatSession, *, out: Console, err: Console,
                 quiet: bool = False, progress=None, allowed_tools: Iterable[str] = (),
                 max_tool_rounds: int = DEFAULT_ROUNDS,
                 ask_line: Callable[[str], str] | None = None) -> None:
        """``progress``: a prefill progress callback with a ``close()`` (the CLI's bar).
        ``allowed_tools`` run without asking; the others ask (yes, no, always) through
        ``ask_line(question)`` (by default the terminal, or the next input line)."""
        self.session = session
        self.out, self.err = out, err
        self.quiet = quiet
        self.progress = progress
        self.approvals = Approvals(set(allowed_tools), self.ask)
        self._progress_shown, self._progress_at = False, float("-inf")
        self.attached: list[tuple[str, str]] = []  # (uri, text): resources for the next message
        self.sampling_allowed: set[str] = set()  # servers whose sampling the user always allows
        for servers in (session.tools.servers() if session.tools else []):
            servers.sampler, servers.elicitor = self.sample, self.elicit
        self.max_tool_rounds = max_tool_rounds
        self._ask_line: Callable[[str], str] = ask_line or (lambda label: "")
        self._asks_given = ask_line is not None

    def _close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    # -- input -------------------------------------------------------------------------

    def run(self, lines: Iterable[str] | None = None) -> None:
        """Read messages from ``lines`` (one per line) or, when None, from the terminal."""
        source = iter(lines) if lines is not None else self._terminal_lines()
        if lines is not None and not self._asks_given:  # an approval is the next line
            self._ask_line = lambda label: next(source)
        while True:
            try:
                text = next(source)
            except (StopIteration, EOFError, KeyboardInterrupt):
                return
            if not self.handle(text):
                return

    def _terminal_lines(self) -> Iterator[str]:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.key_binding import KeyBindings

        keys = KeyBindings()

        @keys.add("escape", "enter")
        def _newline(event) -> None:
            event.current_buffer.insert_text("\n")

        prompt = PromptSession(history=self._history(), key_bindings=keys)
        if not self._asks_given:
            self._ask_line = lambda label: prompt.prompt(label)
        model = self.session.model
        self.note(f"{model.path.name} ({describe(model.path)}); /help for commands, Ctrl-D to "
                  f"leave")
        while True:
            yield prompt.prompt(">>> ", multiline=False)

    def _history(self):
        """The line editor's history file; when it cannot be written, history lives in
        memory for this chat, with one line said about it."""
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        note = self.note

        class SafeFileHistory(FileHistory):
            def store_string(self, string: str) -> None:
                try:
                    super().store_string(string)
                except OSError as e:
                    note(f"history not saved: {os_error_line(e)}")
                    self.store_string = lambda _: None

        path = home() / "chat_history"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            history = SafeFileHistory(str(path))
            list(history.load_history_strings())  # unreadable: fail here, not mid-prompt
            return history
        except OSError as e:
            self.note(f"history not kept: {os_error_line(e)}")
            return InMemoryHistory()

    # -- one line ----------------------------------------------------------------------

    def handle(self, text: str | QwenMlxError) -> bool:
        """Act on one input line; False means leave. A refused message or a failed file
        operation is one line, and the conversation goes on as it was (so does a line that
        was not text: the reader hands its error instead)."""
        if isinstance(text, QwenMlxError):
            self.error(str(text))
            return True
        text = text.rstrip("\n")
        if not text.strip():
            return True
        try:
            if text.startswith("/"):
                return self.command(text)
            self.send(text)
        except QwenMlxError as e:
            self.error(str(e))
        except OSError as e:
            self.error(os_error_line(e))
        return True

    def error(self, message: str) -> None:
        self.err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)

    def command(self, text: str) -> bool:
        name, _, arg = text[1:].partition(" ")
        arg = arg.strip()
        s = self.session
        actions: dict[str, Callable[[], object]] = {
            "help": lambda: self.note(HELP),
            "reset": lambda: (s.reset(), self.note("conversation cleared")),
            "undo": lambda: (s.undo(), self.note(f"dropped the last exchange; "
                                                 f"{len(s.cache)} tokens stay cached")),
            "retry": lambda: self.reply(s.retry(on_prefill=self.progress)),
            "system": lambda: (s.set_system(arg), self.note("system prompt " +
                                                            ("set" if arg else "cleared"))),
            "save": lambda: self.note(f"saved to {store.save(s, arg)}"),
            "load": lambda: self.note(f"loaded {store.load(s, arg)}: "
                                      f"{len(s.messages)} messages, {len(s.cache)} cached "
                                      f"tokens"),
            "stats": self.stats,
            "file": lambda: self.send_file(arg),
            "think": lambda: self.think(arg),
            "tools": lambda: self.list_tools(arg),
            "resources": self.list_resources,
            "resource": lambda: self.attach_resource(arg),
            "prompts": self.list_prompts,
            "prompt": lambda: self.use_prompt(arg),
        }
        if name in ("exit", "quit", "bye"):
            return False
        if name not in actions:
            raise QwenMlxError(f"unknown command /{name} (/help lists them)")
        actions[name]()
        return True

    def send_file(self, arg: str) -> None:
        path, _, request = arg.partition(" ")
        if not path:
            raise QwenMlxError("usage: /file PATH [REQUEST]")
        self.reply(self.session.send(with_document(path, request), on_prefill=self.progress))

    def think(self, arg: str) -> None:
        if arg not in ("on", "off"):
            raise QwenMlxError("usage: /think on|off")
        self.session.set_thinking(arg == "on")
        self.note(f"thinking {arg}")

    def note(self, text: str) -> None:
        self.err.print(text, style="dim", markup=False, highlight=False, soft_wrap=True)

    # -- tools -------------------------------------------------------------------------

    def reply(self, pieces: Iterator[Piece]) -> None:
        """Show a reply, then run its tool calls and show the replies to their results,
        round after round, until a reply calls nothing (or --max-tool-rounds)."""
        self.show(pieces)
        toolbox = self.session.tools
        for done in range(self.max_tool_rounds + 1):
            last = self.session.messages[-1] if self.session.messages else {}
            if not toolbox or last.get("role") != "assistant" or last.get("cut"):
                return
            if done == self.max_tool_rounds:
                if calls_in(last["content"]):
                    self.note(f"stopped after {done} tool rounds (--max-tool-rounds); the "
                              f"last reply's calls were not run")
                return
            outcome = run_round(last["content"], toolbox, self.approvals,
                                on_event=self.tool_event, on_progress=self.tool_progress)
            if outcome is None:
                return
            if outcome.cancelled:
                self.session.add_tool_results(outcome.messages)
                self.note("[tool call cancelled; the conversation keeps it]")
                return
            self.show(self.session.answer_tools(outcome.messages, on_prefill=self.progress))

    def ask(self, call: Call) -> str:
        """yes, no or always, from the terminal (or the next input line); no input: no."""
        return self.answer(f"run {call.name}? [y]es / [n]o / [a]lways: ",
                           "answer y (yes), n (no) or a (always, for this tool in this chat)")

    def elicit(self, server: str, message: str, schema: dict) -> tuple[str, dict | None]:
        """An MCP server's question (elicitation): its message, then each field of its
        schema asked in turn, checked against its type; an empty answer leaves an optional
        field out; /decline declines, /cancel (or no input) cancels."""
        self.note(f"MCP server {server} asks: {message} (/decline to say no, /cancel to "
                  f"cancel)")
        required = set(schema.get("required") or [])
        content: dict = {}
        for name, field in (schema.get("properties") or {}).items():
            while True:
                try:
                    text = self._ask_line(f"  {field_label(name, field, name in required)}: ")
                except (StopIteration, EOFError):
                    return "cancel", None
                text = text.strip()
                if text in ("/decline", "/cancel"):
                    return text[1:], None
                if not text and name not in required:
                    break
                try:
                    content[name] = field_value(text, field)
                    break
                except ValueError as e:
                    self.note(str(e))
        return "accept", content

    def answer(self, label: str, hint: str) -> str:
        """yes, no or always from the next answer (asked again until it is one of them);
        no input: no."""
        while True:
            try:
                answer = self._ask_line(label)
            except (StopIteration, EOFError):
                return "no"
            if answer.strip().lower() in ANSWERS:
                return ANSWERS[answer.strip().lower()]
            self.note(hint)

    def tool_event(self, kind: str, call: Call, result: ToolResult | None) -> None:
        if kind == "call":
            self.note(f"tool call: {call.name} {json.dumps(call.arguments, ensure_ascii=False)}")
            return
        if self._progress_shown:  # the updating line goes; the result takes its place
            self.err.file.write("\r\x1b[2K")
            self._progress_shown = False
        text = result.text if len(result.text) <= SHOWN_RESULT else \
            f"{result.text[:SHOWN_RESULT]}… ({len(result.text):,} characters)"
        self.note(f"{'tool error' if result.error else 'tool result'} ({call.name}): {text}")

    def _servers(self) -> list:
        servers = self.session.tools.servers() if self.session.tools else []
        if not servers:
            raise QwenMlxError("no MCP servers: start the chat with --mcp FILE")
        return servers

    def list_resources(self) -> None:
        listed = [(name, r) for s in self._servers() for name, r in s.resources()]
        self.note("\n".join(f"{name}: {r.uri}  {r.name}"
                            f"{f' ({r.mime_type})' if r.mime_type else ''}"
                            for name, r in listed) or "no resources")

    def attach_resource(self, uri: str) -> None:
        """/resource URI: its text goes with the next message (as /file puts a file)."""
        if not uri:
            raise QwenMlxError("usage: /resource URI (/resources lists them)")
        self._servers()
        text = self.session.tools.read_resource(uri)
        self.attached.append((uri, text))
        self.note(f"attached {uri} ({len(text):,} characters) to your next message")

    def send(self, text: str) -> None:
        """A message, after the resources attached to it, and its reply."""
        message = "\n\n".join([f"{uri}:\n\n{body.rstrip()}" for uri, body in self.attached]
                              + [text])
        self.reply(self.session.send(message, on_prefill=self.progress))
        self.attached.clear()

    def list_prompts(self) -> None:
        listed = [(name, p) for s in self._servers() for name, p in s.prompts()]

        def args(p) -> str:
            return ", ".join(f"{a.name}{'' if a.required else '?'}" for a in p.arguments or [])
        self.note("\n".join(f"{name}: {p.name}({args(p)})"
                            f"{f'  {p.description}' if p.description else ''}"
                            for name, p in listed) or "no prompts")

    def use_prompt(self, arg: str) -> None:
        """/prompt NAME [KEY=VALUE ...]: the server's prompt, filled in, sent as a message."""
        if not arg.split():
            raise QwenMlxError("usage: /prompt NAME [KEY=VALUE ...] (/prompts lists them)")
        name, *pairs = arg.split()
        if any("=" not in p for p in pairs):
            raise QwenMlxError("a prompt's arguments are KEY=VALUE")
        arguments = dict(p.split("=", 1) for p in pairs)
        self._servers()
        self.send(self.session.tools.prompt(name, arguments))

    def sample(self, server: str, messages: list[dict], system: str | None, max_tokens: int,
               temperature: float | None, stop: list[str]) -> tuple[str, str]:
        """An MCP server's sampling request, answered by this chat's model once the user
        allows it (as a tool call is): its messages, up to its token limit, without
        thinking -> (text, MCP's stop reason)."""
        last = " ".join(str(messages[-1]["content"]).split()) if messages else ""
        self.note(f"MCP server {server} asks the model for a reply ({len(messages)} message"
                  f"{'s' if len(messages) != 1 else ''}, up to {max_tokens} tokens): "
                  f"{last[:200]}")
        if server not in self.sampling_allowed:
            answer = self.answer("let it? [y]es / [n]o / [a]lways: ",
                                 "answer y (yes), n (no) or a (always, for this server)")
            if answer == "always":
                self.sampling_allowed.add(server)
            elif answer != "yes":
                raise QwenMlxError("the user declined the sampling request")
        prompt = ([{"role": "system", "content": system}] if system else []) + messages
        model = self.session.model
        done = model.generate(prompt, max_tokens=max(1, min(max_tokens, 4096)), stop=stop,
                              enable_thinking=False,
                              **({"temperature": temperature} if temperature is not None
                                 else {}))
        reason = done.stats.finish_reason if done.stats else ""
        self.note(f"reply for {server}: {' '.join(done.text.split())[:200]}")
        return done.text, {"length": "maxTokens"}.get(reason, "endTurn")

    def tool_progress(self, call: Call, progress: float, total: float | None,
                      message: str | None) -> None:
        """A call's progress: one updating line on a terminal; elsewhere a line each, at
        most one a second (and the last)."""
        done = f"{progress:g}/{total:g}" if total else f"{progress:g}"
        line = f"tool progress ({call.name}): {done}{f' {message}' if message else ''}"
        if self.err.is_terminal:
            self.err.file.write(f"\r\x1b[2K{line[:self.err.width - 1]}")
            self.err.file.flush()
            self._progress_shown = True
            return
        now = time.monotonic()
        if now - self._progress_at >= 1.0 or (total and progress >= total):
            self._progress_at = now
            self.note(line)

    def list_tools(self, arg: str = "") -> None:
        """/tools: the servers and their tools; /tools restart NAME: restart one."""
        toolbox = self.session.tools
        if not toolbox:
            self.note("no tools: start the chat with --mcp FILE (an mcpServers file), or put "
                      "one in the default place (qwen-mlx chat --help says where)")
            return
        if arg:
            verb, _, server = arg.partition(" ")
            if verb != "restart" or not server.strip():
                raise QwenMlxError("usage: /tools, or /tools restart NAME")
            state = toolbox.restart(server.strip())
            if state == "running":
                self.note(f"{server.strip()} restarted")
            return
        self.note("\n".join(toolbox.describe()))

    # -- output ------------------------------------------------------------------------

    def show(self, pieces: Iterator[Piece]) -> None:
        """Stream a reply; <think> sections dimmed. Ctrl-C cuts the reply, not the chat."""
        dim = False
        try:
            for piece in pieces:
                if piece.notice:
                    self.note(piece.notice)
                    continue
                self._close_progress()
                text = piece.text
                while text:
                    marker = "</think>" if dim else "<think>"
                    head, found, text = text.partition(marker)
                    self.out.print(head, style="dim" if dim else None, end="", markup=False,
                                   highlight=False, soft_wrap=True)
                    if found:
                        self.out.print(found, style="dim", end="", markup=False,
                                       highlight=False, soft_wrap=True)
                        dim = not dim
                self.out.file.flush()
        except KeyboardInterrupt:
            self._close_progress()
            pieces.close()
            self.out.print()
            self.note("[reply cut]")
            return
        self.out.print()
        if not self.quiet:
            self.stats()

    def stats(self) -> None:
        st = self.session.last_stats
        if st is None:
            self.note("no reply yet")
            return
        self.note(st.summary())
