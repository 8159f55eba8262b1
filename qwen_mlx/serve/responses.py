"""OpenAI's Responses API: POST /v1/responses (streamed as its semantic events, or not),
GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items.

Its items become chat messages for the one :class:`~qwen_mlx.engine.Request`, and the reply
output items, as :mod:`.response_items` says. Function tools only; ``text.format``
(json_object, json_schema) goes through the grammar engine; a hybrid model's thinking comes
back as a ``reasoning`` item (``reasoning.effort: "none"`` turns it off; other efforts and
``summary`` are accepted, the reasoning text is returned whole). ``store`` (the default)
keeps the response (:mod:`.response_store`) for ``previous_response_id``, whose
conversation is rendered again: the server's KV caches hold its prefix, so only the new
input is prefilled (``usage.input_tokens_details.cached_tokens`` says how much was reused).
"""

from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..engine.constraint import Constraint
from .formats import json_schema, tool_choice
from .openai import STREAM_HEADERS, cached_details, read_json
from .response_items import as_messages, input_messages, new_id, output_items
from .response_store import Stored
from .server import Delta, RequestError, Server, flag, number, refuse_unsupported
from .thoughts import Thoughts
from .worker import Ended

FIELDS = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
          "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning", "metadata",
          "user", "store", "previous_response_id", "stream", "prompt_cache_key",
          "safety_identifier", "client_metadata"}
NO_OPS = {"truncation": lambda v: v in (None, "disabled"),
          "service_tier": lambda v: v in (None, "auto", "default"),
          # Codex asks for reasoning's encrypted form; ours is returned as text, nothing hidden
          "include": lambda v: v is None or (isinstance(v, list) and
                                             set(v) <= {"reasoning.encrypted_content"}),
          "background": lambda v: v in (None, False), "stream_options": lambda v: v in (None, {})}


def chosen_tools(body: dict) -> tuple[list | None, Constraint | None, bool]:
    """Function tools in the chat template's shape, as ``tool_choice`` says (auto, none,
    required, or {"type": "function", "name"}) -> (tools, forcing constraint, several)."""
    tools, converted = body.get("tools"), []
    if tools is not None and not isinstance(tools, list):
        raise RequestError(400, "'tools' must be a list", param="tools")
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise RequestError(400, f"tools[{i}]: the tool type {kind!r} is not supported "
                                    f"(function tools only)", param="tools")
        if not isinstance(tool.get("name"), str):
            raise RequestError(400, f"tools[{i}] needs a name", param="tools")
        converted.append({"type": "function", "function": {
            "name": tool["name"], "description": tool.get("description") or "",
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}})
    tools = converted or None
    several = flag(body, "parallel_tool_calls", True)
    choice = body.get("tool_choice")
    if choice in (None, "auto", "none", "required"):
        return tool_choice(choice or "auto", tools, None, several)
    if isinstance(choice, dict) and choice.get("type") == "function" and \
            isinstance(choice.get("name"), str):
        return tool_choice("named", tools, choice["name"], several)
    raise RequestError(400, "'tool_choice' must be auto, none, required or {\"type\": "
                            "\"function\", \"name\": ...}", param="tool_choice")


def text_format(body: dict) -> Constraint | None:
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict) or set(text) - {"format", "verbosity"} or \
            text.get("verbosity") not in (None, "medium"):
        raise RequestError(400, "'text' may hold format only", param="text")
    spec = text.get("format")
    if spec is None or (isinstance(spec, dict) and spec.get("type") == "text"):
        return None
    if isinstance(spec, dict) and spec.get("type") == "json_object":
        return Constraint.json()
    if isinstance(spec, dict) and spec.get("type") == "json_schema" and \
            isinstance(spec.get("schema"), dict):
        return json_schema(spec["schema"], "text.format")
    raise RequestError(400, "'text.format' must be text, json_object or json_schema (with a "
                            "schema)", param="text.format")


def thinking(body: dict) -> bool | None:
    reasoning = body.get("reasoning")
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict) or set(reasoning) - {"effort", "summary",
                                                            "generate_summary"}:
        raise RequestError(400, "'reasoning' may hold effort and summary", param="reasoning")
    effort = reasoning.get("effort")
    if effort not in (None, "none", "minimal", "low", "medium", "high", "xhigh"):
        raise RequestError(400, "'reasoning.effort' is not one of none, minimal, low, medium, "
                                "high, xhigh", param="reasoning.effort")
    return None if effort is None else effort != "none"


def sampling(body: dict) -> dict:
    out = {"temperature": number(body, "temperature", low=0, high=2),
           "top_p": number(body, "top_p", low=0, high=1),
           "max_tokens": number(body, "max_output_tokens", int, low=1)}
    return {k: v for k, v in out.items() if v is not None}


def usage(stats, reasoning_tokens: int) -> dict:
    return {"input_tokens": stats.prompt_tokens,
            "input_tokens_details": {**cached_details(stats), "cache_write_tokens": 0},
            "output_tokens": stats.generated_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": stats.prompt_tokens + stats.generated_tokens}


async def create(server: Server, request: Request) -> Response:
    """POST /v1/responses."""
    body = await read_json(request, server.max_body)

    def build():
        server.check_model(body.get("model"))
        refuse_unsupported(body, FIELDS, NO_OPS)
        for name in ("metadata", "client_metadata"):  # kept with the response / unread
            value = body.get(name)
            if value is not None and not (isinstance(value, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
                raise RequestError(400, f"'{name}' must map text to text", param=name)
        history: list[dict] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            stored = server.responses.get(previous)
            if stored is None:
                raise RequestError(404, f"no stored response {previous!r} (it was never "
                                        f"stored, was deleted, or was dropped as the store "
                                        f"filled)", param="previous_response_id")
            history = stored.messages
        new = input_messages(body.get("input"))
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise RequestError(400, "'instructions' must be text", param="instructions")
        system = [{"role": "system", "content": instructions}] if instructions else []
        tools, forced, several = chosen_tools(body)
        wanted = text_format(body)
        if wanted is not None and forced is not None:
            raise RequestError(400, "'text.format' and a forced tool_choice cannot be combined",
                               param="text.format")
        think = thinking(body)
        req = server.request(server.encode_chat(system + history + new, tools, think),
                             sampling(body), [], constraint=wanted or forced,
                             constraint_param="tool_choice" if forced else "text.format",
                             max_tokens_param="max_output_tokens")
        return req, history + new, tools, several, \
            think is not False and server.model.hybrid, flag(body, "stream"), \
            flag(body, "store", True)

    req, conversation, tools, several, thinks, stream, store = await server.validate(build)
    most = None if several else 1
    shell = {"id": new_id("resp"), "object": "response", "created_at": int(time.time()),
             "model": body["model"], "status": "in_progress", "output": [], "error": None,
             "incomplete_details": None, "instructions": body.get("instructions"),
             "metadata": body.get("metadata") or {}, "parallel_tool_calls": most is None,
             "temperature": body.get("temperature"), "top_p": body.get("top_p"),
             "max_output_tokens": body.get("max_output_tokens"),
             "previous_response_id": body.get("previous_response_id"),
             "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
             "text": body.get("text") or {"format": {"type": "text"}},
             "reasoning": body.get("reasoning"), "store": store, "user": body.get("user"),
             "usage": None}

    def finished(text: str, calls: list[dict], stats) -> dict:
        thoughts = Thoughts(thinks)
        parts = thoughts.feed(text) + thoughts.flush()
        done = stats.finish_reason != "length" or bool(calls)
        items = output_items(parts, calls[:most], done)
        reasoning = sum(len(server.model.encode(t, raw=True)) for k, t in parts
                        if k == "thinking")
        response = {**shell, "status": "completed" if done else "incomplete",
                    "output": items, "usage": usage(stats, reasoning),
                    "incomplete_details": None if done else {"reason": "max_output_tokens"}}
        if store:
            items_in = body["input"] if isinstance(body["input"], list) else \
                [{"type": "message", "role": "user", "content": body["input"]}]
            server.responses.put(Stored(response, items_in, conversation + as_messages(items)))
        return response

    if not stream:
        out = await server.complete(req, tools=bool(tools), http=request)
        return JSONResponse(finished(out.text, out.calls, out.stats))

    return StreamingResponse(events(server, req, tools, shell, thinks, finished),
                             media_type="text/event-stream", headers=STREAM_HEADERS)


async def events(server: Server, req, tools, shell: dict, thinks: bool, finished):
    """The semantic events, each with its ``sequence_number``: the text streams as it comes
    (a reasoning item's text, then the message's); function calls come whole at the end."""
    number_of = iter(range(1 << 62))

    def event(kind: str, **data) -> str:
        payload = {"type": kind, "sequence_number": next(number_of), **data}
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    yield event("response.created", response=shell)
    yield event("response.in_progress", response=shell)
    thoughts, text, index = Thoughts(thinks), "", -1
    open_item: dict | None = None

    def close():
        nonlocal open_item
        if open_item is None:
            return
        item, body = open_item, open_item["_text"]
        del item["_text"]
        if item["type"] == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": body}]
            yield event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                        content_index=0, text=body)
        else:
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": body}
            item.update(status="completed", content=[part])
            yield event("response.output_text.done", item_id=item["id"], output_index=index,
                        content_index=0, text=body, logprobs=[])
            yield event("response.content_part.done", item_id=item["id"], output_index=index,
                        content_index=0, part=part)
        yield event("response.output_item.done", output_index=index, item=item)
        open_item = None

    def parts_out(parts):
        nonlocal open_item, index
        for kind, piece in parts:
            kind = "reasoning" if kind == "thinking" else "message"
            if open_item is None or open_item["type"] != kind:
                yield from close()
                index += 1
                if kind == "reasoning":
                    open_item = {"type": "reasoning", "id": new_id("rs"), "summary": [],
                                 "content": [], "_text": ""}
                else:
                    open_item = {"type": "message", "id": new_id("msg"), "role": "assistant",
                                 "status": "in_progress", "content": [], "_text": ""}
                shown = {k: v for k, v in open_item.items() if k != "_text"}
                yield event("response.output_item.added", output_index=index, item=shown)
                if kind == "message":
                    yield event("response.content_part.added", item_id=open_item["id"],
                                output_index=index, content_index=0, part={
                                    "type": "output_text", "annotations": [], "text": ""})
            open_item["_text"] += piece
            if kind == "reasoning":
                yield event("response.reasoning_text.delta", item_id=open_item["id"],
                            output_index=index, content_index=0, delta=piece)
            else:
                yield event("response.output_text.delta", item_id=open_item["id"],
                            output_index=index, content_index=0, delta=piece, logprobs=[])

    try:
        async for item in server.reply(req, tools=bool(tools)):
            if isinstance(item, Delta):
                text += item.text
                for line in parts_out(thoughts.feed(item.text)):
                    yield line
                continue
            text += item.text
            for line in parts_out(thoughts.feed(item.text) + thoughts.flush()):
                yield line
            for line in close():
                yield line
            response = finished(text, item.calls, item.stats)
            for call in [i for i in response["output"] if i["type"] == "function_call"]:
                index += 1
                yield event("response.output_item.added", output_index=index,
                            item={**call, "arguments": "", "status": "in_progress"})
                yield event("response.function_call_arguments.delta", item_id=call["id"],
                            output_index=index, delta=call["arguments"])
                yield event("response.function_call_arguments.done", item_id=call["id"],
                            output_index=index, arguments=call["arguments"])
                yield event("response.output_item.done", output_index=index, item=call)
            kind = "response.completed" if response["status"] == "completed" else \
                "response.incomplete"
            yield event(kind, response=response)
    except Ended as e:
        yield event("response.failed", response={**shell, "status": "failed", "error": {
            "code": "server_error", "message": str(e)}})


async def retrieve(server: Server, request: Request) -> JSONResponse:
    return JSONResponse(_stored(server, request).response)


async def delete(server: Server, request: Request) -> JSONResponse:
    ident = _stored(server, request).response["id"]
    server.responses.delete(ident)
    return JSONResponse({"id": ident, "object": "response", "deleted": True})


async def input_items(server: Server, request: Request) -> JSONResponse:
    items = [{"id": item.get("id") or f"item_{i}", **item}
             for i, item in enumerate(_stored(server, request).input_items)]
    return JSONResponse({"object": "list", "data": items, "has_more": False,
                         "first_id": items[0]["id"] if items else None,
                         "last_id": items[-1]["id"] if items else None})


def _stored(server: Server, request: Request) -> Stored:
    ident = request.path_params["ident"]
    stored = server.responses.get(ident)
    if stored is None:
        raise RequestError(404, f"no stored response {ident!r}", param="response_id")
    return stored
