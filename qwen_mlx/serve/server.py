"""What both APIs share: the loaded model, its names, request validation, and one
generation call that turns messages into pieces through the worker.

Validation runs off the event loop (:meth:`Server.validate`): rendering a long conversation
through the chat template and tokenizing it takes a while, and meanwhile /health and
/v1/models must still answer at once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, AsyncIterator, Callable, TypeVar

import anyio

from ..engine import Request, Stats
from ..engine.constraint import Constraint
from ..errors import ContextExceeded, QwenMlxError, TooManyTokens, UnsupportedConstraint
from ..model import Model
from ..tools import Toolbox
from ..tools import calls as tool_calls
from .issued_calls import IssuedCalls
from .page_forms import PageForms
from .response_store import ResponseStore
from .logprobs import TokenText
from .kv_room import SLOTS
from .worker import Ended, Worker

if TYPE_CHECKING:
    from .fleet import Fleet
    from .speculative import Speculation

T = TypeVar("T")


class RequestError(Exception):
    """A 4xx answer: each API renders it in its own error shape."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


@dataclass
class Server:
    model: Model
    model_id: str
    api_key: str | None = None
    aliases: tuple[str, ...] = ()  # other names (glob patterns) of the served model
    slots: int = SLOTS
    progress: Callable[[], object] | None = None  # a request's prefill progress callback
    # (with close()) for long prompts: the CLI's rows of bars
    host: str = "127.0.0.1"  # the address bound: on loopback, other Host headers get 403
    allow_origins: tuple[str, ...] = ()  # web origins beyond localhost pages ("*": any)
    max_body: int = 8_000_000  # request bytes (serve --max-body 8MB); more is a 413
    parallel: int | None = None  # sequences decoded together (None: from the memory plan)
    time_limit: float | None = None  # seconds one request may generate for
    page_tools: Toolbox | None = None  # MCP tools for the chat page only (serve --mcp)
    speculation: "Speculation | None" = None  # serve --draft/--lookup (None: off)
    started: float = field(default_factory=time.time)
    worker: Worker = field(init=False)
    # the page's tool calls the model made: the only ones POST /web/tools/call runs
    issued: IssuedCalls = field(init=False, default_factory=IssuedCalls)
    # the MCP servers' questions to the page's user, carried by its running calls
    forms: PageForms = field(init=False, default_factory=PageForms)
    # the Responses API's stored responses (previous_response_id, GET /v1/responses/{id})
    responses: ResponseStore = field(init=False, default_factory=ResponseStore)
    # the other models served by name, loaded on demand (serve/fleet.py); None: this one only
    fleet: "Fleet | None" = field(init=False, default=None)

    def __post_init__(self) -> None:
        from .speculative import Speculation

        for servers in (self.page_tools.servers() if self.page_tools else []):
            servers.elicitor = self.forms.ask
            servers.sampler = self.sample_for_page

        self.speculation = self.speculation or Speculation()
        self.worker = Worker(self.model, self.slots, self.parallel, self.time_limit,
                             draft=self.speculation.draft)
        self.token_text = TokenText(self.model.tokenizer)

    def sample_for_page(self, name: str, messages: list[dict], system: str | None,
                        max_tokens: int, temperature: float | None,
                        stop: list[str]) -> tuple[str, str]:
        """An MCP server's sampling request during one of the page's calls (its MCP thread):
        answered by the served model through the batch, once the page's user allows it (as
        the terminal chat asks), without thinking -> (text, MCP's stop reason)."""
        last = " ".join(str(messages[-1]["content"]).split())[:200] if messages else ""
        loop = self.forms.allow_sample(name, {"messages": len(messages), "last": last,
                                              "system": system or "",
                                              "max_tokens": max_tokens})
        if loop is None:
            raise QwenMlxError("the user declined the sampling request")
        prompt = ([{"role": "system", "content": system}] if system else []) + messages
        sampling = {} if temperature is None else {"temperature": temperature}
        try:  # its token limit cut to the context's room, as an endpoint's default is
            request = self.request(self.encode_chat(prompt, enable_thinking=False), sampling,
                                   stop, default_max_tokens=max(1, min(max_tokens, 4096)))
            done = asyncio.run_coroutine_threadsafe(self.complete(request, tools=False),
                                                    loop).result()
        except RequestError as e:
            raise QwenMlxError(str(e)) from None
        return done.text, {"length": "maxTokens"}.get(done.stats.finish_reason, "endTurn")

    @property
    def closing(self) -> bool:
        return self.worker.closing.is_set()

    def speculative(self, body: dict) -> dict:
        """The request's speculative decoding (its ``speculative`` field over the server's
        default) as :meth:`request`'s ``speculative``."""
        return self.speculation.kwargs(body.get("speculative"))

    async def validate(self, build: Callable[[], T]) -> T:
        """Run ``build`` (parse, render, tokenize: a :class:`Request` and what goes with
        it) in a worker thread, so a big request never stalls the event loop."""
        if self.closing:
            raise RequestError(503, "the server is shutting down", code="shutting_down")
        return await anyio.to_thread.run_sync(build)

    # -- requests ---------------------------------------------------------------------

    def check_model(self, name) -> None:
        """Clients must name the served model (Ollama's ":latest" tag and case aside), or a
        name ``--alias`` maps to it (``claude-*``: Claude Code asks for its own names)."""
        if not isinstance(name, str) or not name:
            raise RequestError(400, "'model' is required", param="model")
        if self.fleet is not None:  # a name /api/copy gave it
            name = self.fleet.catalog.canonical(name)
        wanted = name.lower().removesuffix(":latest")
        names = {self.model_id.lower(), self.model_id.lower().rsplit("/", 1)[-1]}
        if wanted not in names and not any(fnmatch.fnmatchcase(wanted, alias.lower())
                                           for alias in self.aliases):
            raise RequestError(404, f"model '{name}' not found; this server runs "
                                    f"'{self.model_id}'", code="model_not_found", param="model")

    def encode_chat(self, messages, tools=None, enable_thinking: bool | None = None) -> list[int]:
        self.check_generates()
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty list", param="messages")
        clean = [normalize_message(m, i) for i, m in enumerate(messages)]
        if tools is not None and not isinstance(tools, list):
            raise RequestError(400, "'tools' must be a list", param="tools")
        try:
            tokens = self.model.encode(clean, tools=tools or None,
                                       enable_thinking=enable_thinking)
        except QwenMlxError as e:
            raise RequestError(400, str(e)) from None
        except Exception as e:  # noqa: BLE001 - the template rejects odd input its own way
            raise RequestError(400, f"cannot render the messages: {e}",
                               param="messages") from None
        return tokens

    def check_generates(self) -> None:
        """An embedding model answers embeddings only: anything else is a 400 saying so."""
        if self.model.embedding_only:
            raise RequestError(400, self.model.embedding_only, code="embedding_model")

    def encode_text(self, prompt: str, *, raw: bool, system: str | None = None,
                    enable_thinking: bool | None = None) -> list[int]:
        self.check_generates()
        if raw:
            return self.model.encode(prompt, raw=True)
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": prompt}]
        return self.model.encode(messages, enable_thinking=enable_thinking)

    def request(self, tokens: list[int], sampling: dict, stop: list[str],
                context: int | None = None, constraint: Constraint | None = None,
                constraint_param: str | None = None, *, max_tokens_param: str = "max_tokens",
                default_max_tokens: int | None = None,
                speculative: dict | None = None) -> Request:
        """The engine's validated request, built before anything is queued: whatever the
        engine would refuse is a 400 here, in the API's own error shape (a structured
        output's schema too: ``constraint_param`` names the field it came from). A token
        limit the client set above the context's room is refused (``max_tokens_param``
        names its field); ``default_max_tokens``, the endpoint's own, is cut to fit.
        ``speculative``: :meth:`Speculation.kwargs`'s settings."""
        try:
            req = self.model.request(tokens, stop=stop, context=context,
                                     constraint=constraint, strict_max_tokens=True,
                                     **(speculative or {}), **sampling)
            if default_max_tokens is not None and "max_tokens" not in sampling:
                req = replace(req, params=req.params.override(
                    max_tokens=min(default_max_tokens, req.params.max_tokens)))
            return req
        except TooManyTokens as e:
            raise RequestError(400, e.named(f"'{max_tokens_param}'"),
                               param=max_tokens_param) from None
        except UnsupportedConstraint as e:
            raise RequestError(400, str(e), param=constraint_param) from None
        except ContextExceeded as e:
            raise RequestError(400, str(e), code="context_length_exceeded",
                               param="messages") from None
        except QwenMlxError as e:
            name = str(e).split()[0]  # SamplingParams' messages start with the field
            raise RequestError(400, str(e), param=name if name in sampling else None) \
                from None

    async def reply(self, request: Request, *, tools: bool,
                    logprobs: int | None = None) -> AsyncIterator[Delta | Outcome]:
        """The reply as deltas (text safe to show now, and the log-probabilities of the
        tokens since the last delta when ``logprobs`` is 0 or more: how many alternatives),
        then one :class:`Outcome`. With ``tools``, text from ``<tool_call>`` on is held back
        and parsed at the end. Leaving early (a client that went away) cancels the
        generation; a server shutting down, or an engine failure, ends it with an
        :class:`~qwen_mlx.serve.worker.Ended`."""
        pieces = self.worker.generate(request, self.progress() if self.progress else None,
                                      logprobs)
        splitter = tool_calls.Splitter(enabled=tools)
        stats, entries, generated = None, [], 0
        try:
            async for piece in pieces:
                stats = piece.stats or stats
                generated += len(piece.tokens)
                if piece.logprob is not None:
                    entries = [self.token_text.chat(piece)]
                text = splitter.feed(piece.text)
                if text or entries:
                    yield Delta(text, entries, generated)
                    entries = []
        finally:
            await pieces.aclose()
        rest, calls = splitter.finish()
        yield Outcome(rest, calls, stats)

    async def score(self, request: Request, top: int) -> list[dict]:
        """The prompt's tokens as log-probability entries (the first token's is None), each
        with ``top`` alternatives; a score job on the engine thread (between two steps)."""
        tokens = list(request.tokens)
        try:
            scores = await self.worker.compute(lambda: self.model.scoring(tokens, top))
        except Ended as e:
            raise RequestError(e.status, str(e), code=e.code) from None
        return [{**self.token_text.entry(s.token, s.logprob),
                 "top_logprobs": [self.token_text.entry(t, lp) for t, lp in s.top]}
                for s in scores]

    async def complete(self, request: Request, *, tools: bool, logprobs: int | None = None,
                       http=None) -> Outcome:
        """The whole reply at once: all its text, its tool calls, its stats. With ``http``
        (the Starlette request), a client that disconnects cancels the generation within
        a step, as a streaming one does."""
        async def gather() -> Outcome:
            parts, entries = [], []
            async for item in self.reply(request, tools=tools, logprobs=logprobs):
                if isinstance(item, Outcome):
                    return Outcome("".join(parts) + item.text, item.calls, item.stats, entries)
                parts.append(item.text)
                entries += item.logprobs
            raise RuntimeError("the reply ended without its outcome")

        work = asyncio.ensure_future(gather())
        gone = asyncio.ensure_future(disconnected(http)) if http is not None else None
        try:
            await asyncio.wait({work, gone} - {None}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                if task is not None and not task.done():
                    task.cancel()
        if not work.done():
            raise ClientGone()
        try:
            return work.result()
        except Ended as e:
            raise RequestError(e.status, str(e), code=e.code) from None


async def disconnected(http) -> None:
    """Return when the client behind ``http`` (a Starlette request whose body was read)
    disconnects: the ASGI server's next message is then ``http.disconnect``."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


class ClientGone(Exception):
    """The client left before its answer: nothing is sent."""


@dataclass
class Delta:
    """Reply text safe to show now, and the log-probability entries since the last one."""

    text: str
    logprobs: list[dict] = field(default_factory=list)
    generated: int = 0  # tokens generated so far (held-back ones included)


@dataclass
class Outcome:
    """How a reply ended: the text not yet sent, the tool calls, the stats (and, from
    :meth:`Server.complete`, every log-probability entry)."""

    text: str
    calls: list[dict]
    stats: Stats
    logprobs: list[dict] = field(default_factory=list)


ROLES = ("system", "developer", "user", "assistant", "tool")


def normalize_message(m, index: int) -> dict:
    """A chat message as the template wants it: text content (OpenAI content parts joined),
    tool-call arguments as objects; OpenAI's ``developer`` role is the system prompt. What
    the model cannot take (an image part) is refused, not dropped."""
    where = f"messages[{index}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise RequestError(400, f"{where} needs a role of system, developer, user, assistant "
                                f"or tool", param="messages")
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(400, f"{where}.content: only text parts are supported, "
                                        f"not {kind!r}", param="messages")
            texts.append(part["text"])
        content = "".join(texts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise RequestError(400, f"{where}.content must be text", param="messages")
    if m.get("images"):
        raise RequestError(400, f"{where}.images: images are not supported (a text model)",
                           param="messages")
    out = {"role": "system" if m["role"] == "developer" else m["role"], "content": content}
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise RequestError(400, f"{where}.tool_calls must be a list", param="messages")
    out_calls = []
    for call in calls:
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestError(400, f"{where}.tool_calls: each needs a function with a name",
                               param="messages")
        out_calls.append({"function": {"name": fn["name"], "arguments":
                                       tool_calls.as_object(fn.get("arguments", {}))}})
    if out_calls:
        out["tool_calls"] = out_calls
    return out


def _finite(value: int | float) -> bool:
    return isinstance(value, int) or math.isfinite(value)  # ints are exact, however large


def refuse_unsupported(body: dict, supported: set[str], no_ops: dict, *,
                       prefix: str = "") -> None:
    """Nothing silently ignored: a field we do not implement is a 400 that names it, unless
    it holds the value that means "off" (``no_ops[name](value)`` is true), as clients that
    send their defaults do (``presence_penalty: 0``, ``logprobs: false``)."""
    for name, value in body.items():
        if name in supported or (name in no_ops and no_ops[name](value)):
            continue
        raise RequestError(400, f"'{prefix}{name}' is not supported by qwen-mlx",
                           param=prefix + name)


def flag(body: dict, key: str, default: bool = False) -> bool:
    """An optional boolean field: true or false, nothing else."""
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(400, f"'{key}' must be true or false", param=key)
    return value


def stop_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise RequestError(400, "'stop' must be a string or a list of strings", param="stop")


def number(body: dict, key: str, kind=float, *, low=None, high=None):
    """An optional numeric field, range-checked."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not _finite(value) or (kind is int and value != int(value)):
        raise RequestError(400, f"'{key}' must be a {'whole ' if kind is int else ''}number",
                           param=key)
    value = kind(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(400, f"'{key}' is out of range", param=key)
    return value
