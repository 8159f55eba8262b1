"""Anthropic's Messages API: POST /v1/messages (streamed as Anthropic's named events, or not)
and POST /v1/messages/count_tokens, for the ``anthropic`` SDK and Claude Code.

The adapter turns Anthropic's wire format into the one :class:`~qwen_mlx.engine.Request`
and back; the engine knows nothing of it. Content blocks become chat messages as
:mod:`.anthropic_blocks` says (``cache_control`` is accepted anywhere: the server reuses
every prompt's cached prefix by itself). A hybrid model's ``<think>`` block comes back
as a ``thinking`` block (``thinking: {"type": "disabled"}`` turns it off; ``budget_tokens``
is accepted as Anthropic requires it, and ``max_tokens`` bounds the whole reply).
``output_config.format`` (a JSON schema) goes through the grammar engine. ``temperature``,
``top_p`` and ``top_k`` (which the 2026 SDK no longer sends) are still read.
"""

from __future__ import annotations

import json
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .anthropic_blocks import chat_messages, known
from .formats import json_schema, tool_choice
from .openai import STREAM_HEADERS, read_json
from .server import Delta, RequestError, Server, flag, number, refuse_unsupported
from .thoughts import Thoughts
from .worker import Ended

FIELDS = {"model", "messages", "max_tokens", "system", "stop_sequences", "temperature",
          "top_p", "top_k", "stream", "tools", "tool_choice", "thinking", "metadata",
          "output_config", "cache_control", "context_management"}
# Fields clients send with their "off" value: accepted when they hold it (the SDK's
# routing and placement fields mean nothing on one machine).
NO_OPS = {"service_tier": lambda v: v in (None, "auto", "standard_only"),
          "speed": lambda v: v in (None, "standard"),
          **{name: lambda v: v is None for name in ("container", "diagnostics",
                                                      "inference_geo", "user_profile_id",
                                                      "workspace_id")}}
COUNT_FIELDS = {"model", "messages", "system", "tools", "tool_choice", "thinking",
                "output_config", "cache_control"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error"}


def error(e: RequestError) -> JSONResponse:
    kind = ERROR_TYPES.get(e.status, "api_error")
    return JSONResponse({"type": "error", "error": {"type": kind, "message": e.message}},
                        status_code=e.status)


def chosen_tools(body: dict) -> tuple[list | None, object, bool]:
    """``tools`` (custom tools: name, description, input_schema) in OpenAI's shape, as
    ``tool_choice`` says: auto (the default), none, any (one call or more, one with
    ``disable_parallel_tool_use``), tool (that one) -> (tools to offer, the forcing
    constraint, whether several calls may be returned)."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise RequestError(400, "'tools' must be a list", param="tools")
        converted = []
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise RequestError(400, f"{where}: the tool type {kind!r} is not supported (only "
                                        f"custom tools with an input_schema)", param="tools")
            known(tool, {"type", "name", "description", "input_schema", "cache_control",
                          "defer_loading"}, where)
            if not isinstance(tool.get("name"), str) or \
                    not isinstance(tool.get("input_schema"), dict):
                raise RequestError(400, f"{where} needs a name and an input_schema object",
                                   param="tools")
            if flag(tool, "defer_loading"):
                continue  # kept out of the prompt until a search loads it, as Anthropic does
            converted.append({"type": "function", "function": {
                "name": tool["name"], "description": tool.get("description") or "",
                "parameters": tool["input_schema"]}})
        tools = converted or None
    choice = body.get("tool_choice")
    if choice is None:
        return tools, None, True
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise RequestError(400, "'tool_choice' must be {\"type\": \"auto\" | \"any\" | "
                                "\"tool\" | \"none\"}", param="tool_choice")
    known(choice, {"type", "name", "disable_parallel_tool_use"}, "tool_choice")
    kind = {"any": "required", "tool": "named"}.get(choice["type"], choice["type"])
    if kind == "named" and not isinstance(choice.get("name"), str):
        raise RequestError(400, "'tool_choice' of type tool needs a name", param="tool_choice")
    return tool_choice(kind, tools, choice.get("name"),
                       not flag(choice, "disable_parallel_tool_use"))


def thinking(body: dict) -> tuple[bool | None, bool]:
    """``thinking`` -> (the template's enable_thinking, whether thinking is shown).
    ``adaptive`` lets the hybrid model decide, as it does by default; ``display: omitted``
    keeps the thinking out of the reply."""
    value = body.get("thinking")
    if value is None:
        return None, True
    if not isinstance(value, dict) or value.get("type") not in ("enabled", "adaptive",
                                                                 "disabled"):
        raise RequestError(400, "'thinking' must be {\"type\": \"enabled\" | \"adaptive\" | "
                                "\"disabled\"}", param="thinking")
    known(value, {"type", "budget_tokens", "display"}, "thinking")
    number(value, "budget_tokens", int, low=1)
    if value.get("display") not in (None, "summarized", "omitted"):
        raise RequestError(400, "'thinking.display' must be summarized or omitted",
                           param="thinking")
    on = {"enabled": True, "adaptive": None, "disabled": False}[value["type"]]
    return on, value.get("display") != "omitted"


def output_format(body: dict):
    """``output_config.format`` (a JSON schema) through the grammar engine; ``effort``,
    which asks Claude to think more or less, has nothing to apply to here: refused."""
    config = body.get("output_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise RequestError(400, "'output_config' must be an object", param="output_config")
    known(config, {"effort", "format"}, "output_config")
    if config.get("effort") is not None:
        raise RequestError(400, "'output_config.effort' is not supported by qwen-mlx",
                           param="output_config.effort")
    wanted = config.get("format")
    if wanted is None:
        return None
    if not isinstance(wanted, dict) or wanted.get("type") != "json_schema" or \
            not isinstance(wanted.get("schema"), dict) or set(wanted) - {"type", "schema"}:
        raise RequestError(400, "'output_config.format' must be {\"type\": \"json_schema\", "
                                "\"schema\": {...}}", param="output_config.format")
    return json_schema(wanted["schema"], "output_config.format")


def sampling(body: dict) -> dict:
    if body.get("max_tokens") is None:
        raise RequestError(400, "'max_tokens' is required", param="max_tokens")
    out = {"max_tokens": number(body, "max_tokens", int, low=1),
           "temperature": number(body, "temperature", low=0, high=1),
           "top_p": number(body, "top_p", low=0, high=1),
           "top_k": number(body, "top_k", int, low=0)}
    return {k: v for k, v in out.items() if v is not None}


def stop_sequences(body: dict) -> list[str]:
    value = body.get("stop_sequences")
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise RequestError(400, "'stop_sequences' must be a list of strings",
                       param="stop_sequences")


def checked(server: Server, body: dict, fields: set[str]) -> None:
    server.check_model(body.get("model"))
    refuse_unsupported(body, fields, NO_OPS)
    context_management(body)
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise RequestError(400, "'metadata' may only hold user_id", param="metadata")


def context_management(body: dict) -> None:
    """Context editing: ``clear_thinking`` edits are what the template does anyway (earlier
    turns' thinking is never rendered), so they are accepted (Claude Code sends one); edits
    that would clear tool results are not implemented: refused by name."""
    value = body.get("context_management")
    if value is None:
        return
    edits = value.get("edits") if isinstance(value, dict) and set(value) <= {"edits"} else None
    if not isinstance(edits, list):
        raise RequestError(400, "'context_management' must be {\"edits\": [...]}",
                           param="context_management")
    for edit in edits:
        kind = edit.get("type") if isinstance(edit, dict) else None
        if not (isinstance(kind, str) and kind.startswith("clear_thinking_")):
            raise RequestError(400, f"the context edit {kind!r} is not supported by qwen-mlx "
                                    f"(clear_thinking only)", param="context_management")


def usage(stats) -> dict:
    """Anthropic's usage: input tokens computed now, those read from the cache apart."""
    return {"input_tokens": stats.prompt_tokens - stats.cached_tokens,
            "cache_read_input_tokens": stats.cached_tokens, "cache_creation_input_tokens": 0,
            "output_tokens": stats.generated_tokens}


def stop_reason(stats, calls: list) -> tuple[str, str | None]:
    if calls:
        return "tool_use", None
    if stats.finish_reason == "length":
        return "max_tokens", None
    if stats.stop_string is not None:
        return "stop_sequence", stats.stop_string
    return "end_turn", None


def tool_uses(calls: list[dict]) -> list[dict]:
    return [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": c["name"],
             "input": c["arguments"] if isinstance(c["arguments"], dict) else {}}
            for c in calls]


async def messages(server: Server, request: Request) -> Response:
    """POST /v1/messages."""
    body = await read_json(request, server.max_body)

    def build():
        checked(server, body, FIELDS)
        tools, forced, several = chosen_tools(body)
        think, shown = thinking(body)
        wanted = output_format(body)
        if wanted is not None and forced is not None:
            raise RequestError(400, "'output_config.format' and a forced tool_choice cannot "
                                    "be combined", param="output_config")
        req = server.request(server.encode_chat(chat_messages(body), tools, think),
                             sampling(body), stop_sequences(body), constraint=wanted or forced,
                             constraint_param="tool_choice" if forced else "output_config")
        return req, tools, several, think is not False and server.model.hybrid, shown, \
            flag(body, "stream")

    req, tools, several, thinks, shown, stream = await server.validate(build)
    most = None if several else 1
    head = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": body["model"]}

    if not stream:
        out = await server.complete(req, tools=bool(tools), http=request)
        thoughts = Thoughts(thinks)
        parts = [p for p in thoughts.feed(out.text) + thoughts.flush()
                 if shown or p[0] != "thinking"]
        content = []
        for kind, text in parts:
            if content and content[-1]["type"] == kind:
                content[-1][kind] += text
            else:
                content.append({"type": "thinking", "thinking": text, "signature": ""}
                               if kind == "thinking" else {"type": "text", "text": text})
        calls = out.calls[:most]
        if calls:  # the text before the calls, trimmed as Anthropic's is
            content = [b for b in content if b["type"] != "text" or b["text"].strip()]
            for b in content:
                if b["type"] == "text":
                    b["text"] = b["text"].strip()
        content += tool_uses(calls)
        reason, sequence = stop_reason(out.stats, calls)
        return JSONResponse({**head, "content": content, "stop_reason": reason,
                             "stop_sequence": sequence, "usage": usage(out.stats)})

    def event(kind: str, data: dict) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"

    async def events():
        started = {"input_tokens": len(req.tokens), "cache_read_input_tokens": 0,
                   "cache_creation_input_tokens": 0, "output_tokens": 0}
        yield event("message_start", {"message": {**head, "content": [], "stop_reason": None,
                                                  "stop_sequence": None, "usage": started}})
        yield event("ping", {})
        thoughts, index, open_kind = Thoughts(thinks), -1, None
        last = time.monotonic()

        def parts_out(parts):
            nonlocal index, open_kind
            for kind, text in parts:
                if kind == "thinking" and not shown:
                    continue
                if kind != open_kind:
                    if open_kind is not None:
                        yield event("content_block_stop", {"index": index})
                    index, open_kind = index + 1, kind
                    block = {"type": "thinking", "thinking": "", "signature": ""} \
                        if kind == "thinking" else {"type": "text", "text": ""}
                    yield event("content_block_start", {"index": index,
                                                        "content_block": block})
                delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" \
                    else {"type": "text_delta", "text": text}
                yield event("content_block_delta", {"index": index, "delta": delta})

        try:
            async for item in server.reply(req, tools=bool(tools)):
                if isinstance(item, Delta):
                    for line in parts_out(thoughts.feed(item.text)):
                        yield line
                    if time.monotonic() - last > 10:  # a long thought: the client's timer
                        last = time.monotonic()
                        yield event("ping", {})
                    continue
                parts = thoughts.feed(item.text) + thoughts.flush()
                calls = item.calls[:most]
                if calls:
                    parts = [(k, t) for k, t in parts if k != "text" or t.strip()]
                for line in parts_out(parts):
                    yield line
                if open_kind is not None:
                    yield event("content_block_stop", {"index": index})
                for use in tool_uses(calls):
                    index += 1
                    yield event("content_block_start", {"index": index, "content_block":
                                                        {**use, "input": {}}})
                    yield event("content_block_delta", {"index": index, "delta": {
                        "type": "input_json_delta",
                        "partial_json": json.dumps(use["input"], ensure_ascii=False)}})
                    yield event("content_block_stop", {"index": index})
                reason, sequence = stop_reason(item.stats, calls)
                yield event("message_delta", {"delta": {"stop_reason": reason,
                                                        "stop_sequence": sequence},
                                              "usage": usage(item.stats)})
                yield event("message_stop", {})
        except Ended as e:
            yield event("error", {"error": {"type": "overloaded_error"
                                            if e.code == "shutting_down" else "api_error",
                                            "message": str(e)}})

    return StreamingResponse(events(), media_type="text/event-stream", headers=STREAM_HEADERS)


async def count_tokens(server: Server, request: Request) -> JSONResponse:
    """POST /v1/messages/count_tokens: the prompt's tokens, as /v1/messages would render
    it (tools and thinking included)."""
    body = await read_json(request, server.max_body)

    def build() -> int:
        checked(server, body, COUNT_FIELDS)
        tools, _, _ = chosen_tools(body)
        output_format(body)
        return len(server.encode_chat(chat_messages(body), tools, thinking(body)[0]))

    return JSONResponse({"input_tokens": await server.validate(build)})
