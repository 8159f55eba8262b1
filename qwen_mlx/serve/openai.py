"""OpenAI-compatible endpoints: GET /v1/models and POST /v1/chat/completions (SSE or not)."""

from __future__ import annotations

import json
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .server import RequestError, Server, flag, number, refuse_unsupported, stop_list


def error(e: RequestError) -> JSONResponse:
    kind = "authentication_error" if e.status == 401 else "invalid_request_error"
    return JSONResponse({"error": {"message": e.message, "type": kind, "param": e.param,
                                   "code": e.code}}, status_code=e.status)


async def models(server: Server, request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [
        {"id": server.model_id, "object": "model", "created": int(server.started),
         "owned_by": "qwen-mlx"}]})


SUPPORTED = {"model", "messages", "temperature", "top_p", "top_k", "min_p", "seed",
             "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options", "n",
             "tools", "tool_choice", "user"}
# Fields clients send with their "off" value: accepted when they hold it, refused otherwise.
NO_OPS = {"presence_penalty": lambda v: v in (None, 0), "frequency_penalty":
          lambda v: v in (None, 0), "logprobs": lambda v: v in (None, False),
          "top_logprobs": lambda v: v in (None, 0), "logit_bias": lambda v: v in (None, {}),
          "parallel_tool_calls": lambda v: v in (None, True), "store": lambda v: v in (None, False),
          "metadata": lambda v: v in (None, {}),
          "response_format": lambda v: v is None or v == {"type": "text"}}


def sampling(body: dict) -> dict:
    out = {"temperature": number(body, "temperature", low=0, high=2),
           "top_p": number(body, "top_p", low=0, high=1),
           "top_k": number(body, "top_k", int, low=0),
           "min_p": number(body, "min_p", low=0, high=1),
           "seed": number(body, "seed", int, low=0, high=2**64 - 1),
           "max_tokens": number(body, "max_completion_tokens", int, low=1)
           or number(body, "max_tokens", int, low=1)}
    return {k: v for k, v in out.items() if v is not None}


def chosen_tools(body: dict) -> list | None:
    """``tools`` as ``tool_choice`` allows: "auto" (the default) offers them, "none" does
    not; forcing a call ("required", a named function) is not supported."""
    choice = body.get("tool_choice")
    if choice in (None, "auto"):
        return body.get("tools")
    if choice == "none":
        return None
    raise RequestError(400, "tool_choice may be 'auto' or 'none'; forcing a tool call is not "
                            "supported", param="tool_choice")


def usage(stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def openai_calls(calls: list[dict]) -> list[dict]:
    return [{"index": i, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"],
                                                                     ensure_ascii=False)}}
            for i, c in enumerate(calls)]


async def chat_completions(server: Server, request: Request) -> Response:
    body = await read_json(request, server.max_body)
    server.check_model(body.get("model"))
    refuse_unsupported(body, SUPPORTED, NO_OPS)
    if body.get("n") not in (None, 1):
        raise RequestError(400, "only n=1 is supported", param="n")
    tools = chosen_tools(body)
    req = server.request(server.encode_chat(body.get("messages"), tools), sampling(body),
                         stop_list(body.get("stop")))
    stream = flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError(400, "'stream_options' may only hold include_usage",
                           param="stream_options")
    include_usage = flag(options, "include_usage")
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": ident, "created": created, "model": server.model_id}
    if not stream:
        out = await server.complete(req, tools=bool(tools))
        message = {"role": "assistant", "content": out.text.strip() if out.calls else out.text}
        finish = out.stats.finish_reason
        if out.calls:
            message["tool_calls"], finish = openai_calls(out.calls), "tool_calls"
        message["content"] = message["content"] or None
        return JSONResponse({**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage(out.stats)})

    def chunk(delta: dict, finish=None, **extra) -> str:
        data = {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": None}], **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        async for item in server.reply(req, tools=bool(tools)):
            if isinstance(item, str):
                yield chunk({"content": item})
                continue
            if item.text:
                yield chunk({"content": item.text})
            finish = item.stats.finish_reason
            if item.calls:
                yield chunk({"tool_calls": openai_calls(item.calls)})
                finish = "tool_calls"
            yield chunk({}, finish, **({"usage": None} if include_usage else {}))
            if include_usage:
                data = {**head, "object": "chat.completion.chunk", "choices": [],
                        "usage": usage(item.stats)}
                yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, read in pieces and refused with 413 once it passes
    ``limit`` bytes (before any parsing). NaN and Infinity are not JSON; nesting too deep
    for the parser is a 400 too."""
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
        body = json.loads(bytes(data), parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")
