"""OpenAI-compatible endpoints: GET /v1/models (and /v1/models/{id}) and POST
/v1/chat/completions, streamed as server-sent events or not, and what the OpenAI endpoints
share (the legacy /v1/completions is :mod:`.completions`)."""

from __future__ import annotations

import json
import re
import time
import uuid

import anyio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..engine.constraint import Constraint
from .formats import openai_format, tool_choice
from .server import (Delta, RequestError, Server, flag, number, refuse_unsupported,
                     stop_list)
from .speculative import usage_record
from .worker import Ended


def error(e: RequestError) -> JSONResponse:
    kind = "authentication_error" if e.status == 401 else \
        "server_error" if e.status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": e.message, "type": kind, "param": e.param,
                                   "code": e.code}}, status_code=e.status)


async def models(server: Server, request: Request) -> JSONResponse:
    """Every model a request may name (with a fleet, the loadable ones too)."""
    names = server.fleet.names() if server.fleet is not None else [server.model_id]
    return JSONResponse({"object": "list", "data": [model_card(server, n) for n in names]})


async def model(server: Server, request: Request) -> JSONResponse:
    """GET /v1/models/{id}: the model, or OpenAI's 404."""
    name = request.path_params["model"]
    fleet = server.fleet
    if fleet is not None and (fleet.find(name) or fleet.catalog.folder(name)):
        entry = fleet.find(name)
        return JSONResponse(model_card(server, entry.name if entry else name))
    server.check_model(name)
    return JSONResponse(model_card(server, server.model_id))


def model_card(server: Server, name: str) -> dict:
    loaded = name == server.model_id if server.fleet is None else \
        any(e.name == name for e in server.fleet.loaded)
    return {"id": name, "object": "model", "created": int(server.started),
            "owned_by": "qwen-mlx", "loaded": loaded}


SAMPLING = {"model", "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "stop",
            "stream", "stream_options", "n", "user", "presence_penalty", "frequency_penalty"}
SUPPORTED = SAMPLING | {"messages", "max_completion_tokens", "tools", "tool_choice",
                        "parallel_tool_calls", "logprobs", "top_logprobs", "response_format",
                        "chat_template_kwargs", "speculative"}
# Fields clients send with their "off" value: accepted when they hold it, refused otherwise.
NO_OPS = {"logit_bias": lambda v: v in (None, {}), "store": lambda v: v in (None, False),
          "metadata": lambda v: v in (None, {})}
INLINE_JSON = 64 << 10  # bodies up to this size are parsed on the event loop
STREAM_HEADERS = {"Cache-Control": "no-cache"}


def sampling(body: dict) -> dict:
    out = {"temperature": number(body, "temperature", low=0, high=2),
           "top_p": number(body, "top_p", low=0, high=1),
           "top_k": number(body, "top_k", int, low=0),
           "min_p": number(body, "min_p", low=0, high=1),
           "seed": number(body, "seed", int, low=0, high=2**64 - 1),
           "presence_penalty": number(body, "presence_penalty", low=-2, high=2),
           "frequency_penalty": number(body, "frequency_penalty", low=-2, high=2),
           "max_tokens": number(body, "max_completion_tokens", int, low=1)
           or number(body, "max_tokens", int, low=1)}
    return {k: v for k, v in out.items() if v is not None}


def chosen_tools(body: dict) -> tuple[list | None, Constraint | None, bool]:
    """``tools`` as ``tool_choice`` says: "auto" (the default) offers them, "none" does
    not, "required" forces one call (a grammar over the tools' parameter schemas), or one
    or more with ``parallel_tool_calls`` (true unless false, as OpenAI's default), a named
    function forces one call of it -> (tools to offer, the forcing constraint, whether
    several calls may be returned)."""
    choice, tools = body.get("tool_choice"), body.get("tools")
    several = flag(body, "parallel_tool_calls", True)
    if choice in (None, "auto", "none", "required"):
        return tool_choice(choice or "auto", tools, None, several)
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and \
        choice.get("type") == "function" and isinstance(choice.get("function"), dict) else None
    if not isinstance(name, str):
        raise RequestError(400, "tool_choice must be 'auto', 'none', 'required' or "
                                "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                           param="tool_choice")
    return tool_choice("named", tools, name, several)


def thinking(body: dict) -> bool | None:
    """``chat_template_kwargs: {"enable_thinking": false}`` (vLLM's and SGLang's way) turns
    a hybrid Qwen3's thinking off; nothing else may be passed to the template."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"}:
        raise RequestError(400, "'chat_template_kwargs' may only hold enable_thinking",
                           param="chat_template_kwargs")
    return flag(kwargs, "enable_thinking", None)


def usage(stats) -> dict:
    """OpenAI's usage, and ours: a speculating reply's ``speculative``."""
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": cached_details(stats), **usage_record(stats)}


def cached_details(stats) -> dict:
    """The prompt's reused tokens (``cached_tokens``), and ours: of those, the ones read
    from the disk tier (``disk_cached_tokens``, when any were). Chat completions' and
    Responses' usage both carry it."""
    details = {"cached_tokens": stats.cached_tokens}
    if stats.disk_tokens:
        details["disk_cached_tokens"] = stats.disk_tokens
    return details


def openai_calls(server: Server, calls: list[dict]) -> list[dict]:
    """The model's calls in OpenAI's shape; calls of the page's tools are noted as issued,
    the only ones the page's call endpoint will run."""
    out = [{"index": i, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"],
                                                                    ensure_ascii=False)}}
           for i, c in enumerate(calls)]
    offered = {t.name for t in server.page_tools.tools} if server.page_tools else set()
    for call, c in zip(out, calls):
        if c["name"] in offered:
            server.issued.record(call["id"], c["name"], c["arguments"])
    return out


# include_usage is OpenAI's; continuous_usage_stats is vLLM's extension
STREAM_OPTIONS = {"include_usage", "continuous_usage_stats"}


def running_usage(prompt: int, generated: int) -> dict:
    """vLLM's ``continuous_usage_stats``: the counts so far, on every streamed chunk (the
    chat page shows how many tokens a reply it stopped had)."""
    return {"prompt_tokens": prompt, "completion_tokens": generated,
            "total_tokens": prompt + generated}


def common(server: Server, body: dict, fields: set[str],
           no_ops: dict) -> tuple[bool, bool, bool]:
    """What both endpoints check alike: the model, the fields they support, n, stream and
    stream_options -> (stream, include usage, usage on every chunk)."""
    server.check_model(body.get("model"))
    refuse_unsupported(body, fields, no_ops)
    if body.get("n") not in (None, 1):
        raise RequestError(400, "only n=1 is supported", param="n")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - STREAM_OPTIONS:
        raise RequestError(400, "'stream_options' may only hold include_usage and "
                                "continuous_usage_stats", param="stream_options")
    return (flag(body, "stream"), flag(options, "include_usage"),
            flag(options, "continuous_usage_stats"))


def chat_logprobs(body: dict) -> int | None:
    """``logprobs: true`` (with ``top_logprobs`` 0 to 20 alternatives) -> how many
    alternatives; None when off."""
    top = number(body, "top_logprobs", int, low=0, high=20)
    if not flag(body, "logprobs"):
        if top:
            raise RequestError(400, "'top_logprobs' needs 'logprobs': true",
                               param="top_logprobs")
        return None
    return top or 0


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def stream_error(e: Ended) -> str:
    """The event that ends a stream the server had to cut (shutting down, an engine
    failure)."""
    return sse({"error": {"message": str(e), "type": "server_error", "code": e.code,
                          "param": None}})


async def chat_completions(server: Server, request: Request) -> Response:
    body = await read_json(request, server.max_body)

    def build():
        stream, include_usage, continuous = common(server, body, SUPPORTED, NO_OPS)
        tools, forced, several = chosen_tools(body)
        logprobs = chat_logprobs(body)
        wanted = openai_format(body.get("response_format"))
        if wanted is not None and forced is not None:
            raise RequestError(400, "'response_format' and a forced tool_choice cannot be "
                                    "combined", param="response_format")
        req = server.request(server.encode_chat(body.get("messages"), tools, thinking(body)),
                             sampling(body), stop_list(body.get("stop")),
                             constraint=wanted or forced,
                             constraint_param="tool_choice" if forced else "response_format",
                             max_tokens_param="max_completion_tokens"
                             if "max_completion_tokens" in body else "max_tokens",
                             speculative=server.speculative(body))
        return req, tools, stream, include_usage, continuous, logprobs, several

    req, tools, stream, include_usage, continuous, logprobs, several = \
        await server.validate(build)
    # parallel_tool_calls false: at most one call (a forced one is one by its grammar)
    most = None if several else 1
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": ident, "created": created, "model": server.model_id}

    def shown(entries: list[dict]) -> dict | None:
        return None if logprobs is None else {"content": entries, "refusal": None}

    if not stream:
        out = await server.complete(req, tools=bool(tools), logprobs=logprobs, http=request)
        message = {"role": "assistant", "content": out.text.strip() if out.calls else out.text}
        finish = out.stats.finish_reason
        if out.calls:
            message["tool_calls"] = openai_calls(server, out.calls[:most])
            finish = "tool_calls"
        message["content"] = message["content"] or None
        return JSONResponse({**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": message, "finish_reason": finish,
             "logprobs": shown(out.logprobs)}], "usage": usage(out.stats)})

    def chunk(delta: dict, finish=None, entries=(), **extra) -> str:
        return sse({**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                 "logprobs": shown(list(entries)) if entries else None}],
                    **extra})

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for item in server.reply(req, tools=bool(tools), logprobs=logprobs):
                if isinstance(item, Delta):
                    yield chunk({"content": item.text}, entries=item.logprobs,
                                **({"usage": running_usage(len(req.tokens), item.generated)}
                                   if continuous else {}))
                    continue
                if item.text:
                    yield chunk({"content": item.text})
                finish = item.stats.finish_reason
                if item.calls:
                    yield chunk({"tool_calls": openai_calls(server, item.calls[:most])})
                    finish = "tool_calls"
                yield chunk({}, finish, **({"usage": None} if include_usage else {}))
                if include_usage:
                    yield sse({**head, "object": "chat.completion.chunk", "choices": [],
                               "usage": usage(item.stats)})
        except Ended as e:
            yield stream_error(e)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=STREAM_HEADERS)


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, read in pieces and refused with 413 once it passes
    ``limit`` bytes (before any parsing). NaN and Infinity are not JSON; nesting too deep
    for the parser is a 400 too."""
    cached = getattr(request.state, "json_body", None)
    if cached is not None:  # read once already (the fleet read its "model")
        return cached
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is over {limit:,} bytes (serve --max-body)")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise RequestError(413, f"the request body is over {limit:,} bytes (serve "
                                    f"--max-body)")
    try:
        if len(data) > INLINE_JSON:  # parsing megabytes takes a while: off the event loop
            body = await anyio.to_thread.run_sync(_parse, bytes(data))
        else:
            body = _parse(bytes(data))
    except (ValueError, RecursionError):
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    where = lone_surrogate(body)
    if where is not None:
        raise RequestError(400, f"the request body has invalid Unicode at {where}: a lone "
                                f"UTF-16 surrogate (\\ud800-\\udfff) is not text",
                           param=where)
    request.state.json_body = body
    return body


def _parse(data: bytes):
    return json.loads(data, parse_constant=_not_json)


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value, path: str = "") -> str | None:
    """Where in a parsed body a string (or a key) holds a lone surrogate, which JSON's
    ``\\ud800`` escapes allow and no UTF-8 text can: it would fail every encoder downstream
    (the tokenizer, the error path itself). None when the body is clean."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where or "the body"
        elif isinstance(item, dict):
            for key, inner in item.items():
                name = f"{where}.{key}" if where else str(key)
                if _SURROGATE.search(key):
                    return f"a key of {where or 'the body'}"
                stack.append((inner, name))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}[{i}]") for i, inner in enumerate(item))
    return None


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")
