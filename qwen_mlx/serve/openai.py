"""OpenAI-compatible endpoints: GET /v1/models and POST /v1/chat/completions (SSE or not)."""

from __future__ import annotations

import json
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .server import RequestError, Server, number, stop_list


def error(e: RequestError) -> JSONResponse:
    kind = "authentication_error" if e.status == 401 else "invalid_request_error"
    return JSONResponse({"error": {"message": e.message, "type": kind, "param": e.param,
                                   "code": e.code}}, status_code=e.status)


async def models(server: Server, request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [
        {"id": server.model_id, "object": "model", "created": int(server.started),
         "owned_by": "qwen-mlx"}]})


def sampling(body: dict) -> dict:
    out = {"temperature": number(body, "temperature", low=0, high=2),
           "top_p": number(body, "top_p", low=0, high=1),
           "top_k": number(body, "top_k", int, low=0),
           "min_p": number(body, "min_p", low=0, high=1),
           "seed": number(body, "seed", int),
           "max_tokens": number(body, "max_completion_tokens", int, low=1)
           or number(body, "max_tokens", int, low=1)}
    return {k: v for k, v in out.items() if v is not None}


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
    body = await read_json(request)
    server.check_model(body.get("model"))
    if body.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported", param="n")
    tools = body.get("tools")
    req = server.request(server.encode_chat(body.get("messages"), tools), sampling(body),
                         stop_list(body.get("stop")))
    stream = bool(body.get("stream", False))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
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


async def read_json(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body
