"""A multi-turn conversation over one KV cache, with no terminal code.

The transcript is kept whole; each turn renders it through the chat template and the prompt
cache prefills only what differs from what it already holds (the template may render earlier
turns differently from how they were generated: Qwen3 drops old reasoning, for example).
So a turn costs its new tokens, not the history. The REPL, tests and benchmarks drive this.
"""

from __future__ import annotations

from typing import Iterator

from ..engine import Piece, Stats
from ..engine.generate import PrefillProgress
from ..engine.prompt_cache import common_prefix
from ..errors import QwenMlxError
from ..model import Model
from ..tools import Toolbox

MIN_REPLY_ROOM = 256  # a turn may not start with less room than this for its reply


class ChatSession:
    """Transcript + cache + settings. ``send``/``retry`` return piece generators; closing one
    early (Ctrl-C) keeps the partial reply in the transcript, marked ``"cut": True``."""

    def __init__(self, model: Model, *, system: str | None = None,
                 thinking: bool | None = None, max_context: int | None = None,
                 stop: tuple[str, ...] | list[str] = (), tools: Toolbox | None = None,
                 tool_choice: str = "auto", **sampling) -> None:
        """``tool_choice``: "auto" (the model decides), "none" (tools not offered),
        "required" or a tool's name (the reply to each message is one call: of any tool,
        or of that one; the replies to tool results are free)."""
        self.model = model
        self.tools = tools  # offered in every prompt; their calls are the REPL's to run
        self.tool_choice = tool_choice
        self.stop = tuple(stop)
        self.system = system
        self.thinking = thinking
        self.sampling = {k: v for k, v in sampling.items() if v is not None}
        self.max_context = min(max_context or model.context_length, model.context_length)
        self.messages: list[dict] = []
        self.cache = model.new_cache()
        self.last_stats: Stats | None = None

    # -- the conversation -------------------------------------------------------------

    def conversation(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def render(self) -> list[int]:
        """The prompt for the next reply."""
        return self.model.encode(self.model.as_generated(self.conversation(), self.thinking),
                                 tools=self.tool_specs(), enable_thinking=self.thinking)

    def tool_specs(self) -> list[dict] | None:
        return self.tools.specs() if self.tools and self.tool_choice != "none" else None

    def forced(self):
        """The constraint that makes a reply a call, as ``tool_choice`` says (None: free)."""
        if self.tool_choice in ("auto", "none"):
            return None
        from ..tools.calls import forced_call

        return forced_call(self.tool_specs() or [], None if self.tool_choice == "required"
                           else self.tool_choice)

    def send(self, text: str, *, on_prefill: PrefillProgress | None = None) -> Iterator[Piece]:
        """Add a user message and stream the reply (notices first, as pieces with a
        ``notice``); ``on_prefill`` reports the progress of a long prompt."""
        if not text.strip():
            raise QwenMlxError("empty message")
        self.messages.append({"role": "user", "content": text})
        try:
            return self._reply(on_prefill, self.forced())
        except BaseException:
            self.messages.pop()
            raise

    def answer_tools(self, results: list[dict], *,
                     on_prefill: PrefillProgress | None = None) -> Iterator[Piece]:
        """Add the ``tool`` messages of a round and stream the model's next reply (the
        cache holds everything before them: only they and the reply's header are new)."""
        self.messages += results
        try:
            return self._reply(on_prefill)
        except BaseException:
            del self.messages[len(self.messages) - len(results):]
            raise

    def add_tool_results(self, results: list[dict]) -> None:
        """Add ``tool`` messages without a reply (a round Ctrl-C stopped)."""
        self.messages += results

    def retry(self, *, on_prefill: PrefillProgress | None = None) -> Iterator[Piece]:
        """Drop the last reply and generate it again."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise QwenMlxError("nothing to retry yet")
        removed = self.messages.pop()
        try:
            after_user = self.messages and self.messages[-1]["role"] == "user"
            return self._reply(on_prefill, self.forced() if after_user else None)
        except BaseException:
            self.messages.append(removed)
            raise

    def undo(self) -> None:
        """Drop the last exchange (user message and reply) and trim the cache to match."""
        last_user = max((i for i, m in enumerate(self.messages) if m["role"] == "user"),
                        default=None)
        if last_user is None:
            raise QwenMlxError("nothing to undo")
        del self.messages[last_user:]
        self._trim_cache()

    def reset(self) -> None:
        self.messages.clear()
        self.cache.trim(0)
        self.last_stats = None

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        self._trim_cache()

    def set_thinking(self, on: bool) -> None:
        self.thinking = on

    # -- internals ---------------------------------------------------------------------

    def _trim_cache(self) -> None:
        """Keep only the cached tokens the next prompt will start with.

        The probe is the transcript plus an empty user turn: rendered as history, not as the
        latest reply (Qwen3's template renders those two differently).
        """
        if not self.conversation():
            self.cache.trim(0)
            return
        probe = self.model.encode(self.conversation() + [{"role": "user", "content": ""}],
                                  tools=self.tool_specs(), enable_thinking=self.thinking)
        self.cache.trim(common_prefix(self.cache.tokens, probe))

    def _fit(self) -> tuple[list[int], list[str]]:
        """The prompt, after dropping the oldest exchanges if the context is full, and what
        to tell the user about that."""
        room = min(max(self.sampling.get("max_tokens", 0), MIN_REPLY_ROOM), self.max_context // 2)
        tokens, notices = self.render(), []
        while len(tokens) + room > self.max_context:
            users = [i for i, m in enumerate(self.messages) if m["role"] == "user"]
            if len(users) < 2:
                raise QwenMlxError(f"the message is too long: {len(tokens):,} tokens with the "
                                   f"system prompt; the context holds {self.max_context:,}")
            del self.messages[:users[1]]
            before, tokens = len(tokens), self.render()
            notices.append(f"context full: dropped the oldest exchange "
                           f"({before - len(tokens):,} tokens); the system prompt stays")
        return tokens, notices

    def _reply(self, on_prefill: PrefillProgress | None, constraint=None) -> Iterator[Piece]:
        tokens, notices = self._fit()
        request = self.model.request(tokens, stop=self.stop, context=self.max_context,
                                     constraint=constraint, **self.sampling)
        pieces = self.model.stream(request, cache=self.cache, on_prefill=on_prefill)
        return self._record(pieces, notices)

    def _record(self, pieces: Iterator[Piece], notices: list[str]) -> Iterator[Piece]:
        parts: list[str] = []
        finished = False
        try:
            for notice in notices:
                yield Piece("", notice=notice)
            for piece in pieces:
                parts.append(piece.text)
                if piece.stats is not None:
                    self.last_stats = piece.stats
                yield piece
            finished = True
        finally:
            pieces.close()  # settles cache.tokens now, not at garbage collection
            reply = {"role": "assistant", "content": "".join(parts)}
            if not finished:
                reply["cut"] = True
            self.messages.append(reply)
