"""The chat page's tools: ``serve --mcp FILE`` (and ``chat --web --mcp``) offer MCP servers'
tools to the page, and only to it. The API offers a model only the tools a request lists,
and nothing here runs a call on the model's word: the page shows each call and runs it
through ``POST /web/tools/call`` once the user allows it.

These routes are behind the same Host and Origin checks as the rest and the API key when
one is set (``serve --mcp`` off loopback requires one). A call must come from the page
itself (its ``Origin`` is this server's), and since a script can forge that header, it must
also be a call the model made in a reply this server gave: same id, name and arguments,
run once (:mod:`qwen_mlx.serve.issued_calls`). Nothing runs on a caller's word alone.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import QwenMlxError
from ..tools import Toolbox
from .server import RequestError, Server
from .openai import read_json


async def tools(server: Server, request: Request) -> Response:
    """The tools the page may offer: name, server, description, parameters, and whether
    its server's file lets it run without asking (autoApprove)."""
    box = server.page_tools
    approved = box.approved() if box else set()
    return JSONResponse({"tools": [
        {"name": t.name, "server": t.source, "description": t.description,
         "parameters": t.parameters, "approved": t.name in approved}
        for t in (box.tools if box else [])]})


FIELDS = {"id", "name", "arguments"}


async def call(server: Server, request: Request) -> Response:
    """Run one call of the model's that the user allowed in the page: {id, name, arguments}
    -> lines of JSON: its progress, then {content, error, server}. A tool's failure, a
    timeout or a server that stopped is a result, not an HTTP error."""
    from_the_page(request, "tool calls come")
    body = await read_json(request, server.max_body)
    ident, name, arguments = body.get("id"), body.get("name"), body.get("arguments", {})
    if set(body) - FIELDS:
        raise RequestError(400, f"unknown field {sorted(set(body) - FIELDS)[0]!r} (a call has "
                                f"an id, a name and arguments)")
    box = server.page_tools
    tool = next((t for t in box.tools if t.name == name), None) if box else None
    if not isinstance(name, str) or tool is None:
        raise RequestError(404, f"no tool named {name!r} is offered to the page", param="name")
    if not server.issued.take(ident, name, arguments):
        raise RequestError(403, "the model made no such call (id, name and arguments of a "
                                "call in one of this server's replies; each runs once)",
                           param="id")
    return StreamingResponse(running(server, tool, name, arguments),
                             media_type="application/x-ndjson")


async def running(server: Server, tool, name: str, arguments) -> AsyncIterator[str]:
    """The call's lines: {"progress", "total", "message"} as its server reports them, and
    {"form": ...} or {"sample": ...} for each question it asks the user (:mod:`.page_forms`),
    then its result
    {content, error, server}. A client that goes away (the page's Stop) ends this
    generator, and that cancels the call on its server (and its unanswered forms)."""
    loop, heard = asyncio.get_running_loop(), asyncio.Queue()
    stop = threading.Event()

    def send(line: dict) -> None:
        loop.call_soon_threadsafe(heard.put_nowait, line)

    def progressed(progress: float, total: float | None, message: str | None) -> None:
        send({"progress": progress, "total": total, "message": message})

    with server.forms.carried(tool.source, send, loop):
        work = asyncio.ensure_future(asyncio.to_thread(server.page_tools.call, name,
                                                       arguments, stop, progressed))
        try:
            while not work.done():
                news = asyncio.ensure_future(heard.get())
                await asyncio.wait({work, news}, return_when=asyncio.FIRST_COMPLETED)
                if news.done():
                    yield json.dumps(news.result()) + "\n"
                else:
                    news.cancel()
            result = work.result()
            yield json.dumps({"content": result.text, "error": result.error,
                              "server": tool.source}) + "\n"
        finally:
            if not work.done():  # the page stopped the call: so does the server
                stop.set()


FORM_FIELDS = {"id", "action", "content"}


async def form(server: Server, request: Request) -> Response:
    """The page's answer to an MCP server's question: {id, action, content} -> {}."""
    from_the_page(request, "forms are answered")
    body = await read_json(request, server.max_body)
    if set(body) - FORM_FIELDS:
        raise RequestError(400, f"unknown field {sorted(set(body) - FORM_FIELDS)[0]!r} (an "
                                f"answer has an id, an action and content)")
    wrong = server.forms.answer(body.get("id"), body.get("action"), body.get("content"))
    if wrong:
        raise RequestError(404 if wrong.startswith("no form") else 400, wrong)
    return JSONResponse({})


def from_the_page(request: Request, what: str) -> None:
    """Only this server's own page may call (its Origin); a forged Origin is caught by
    what each route checks beside it (a call the model made, a form that is waiting)."""
    origin = request.headers.get("origin", "")
    if origin.rstrip("/") != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise RequestError(403, f"{what} from the chat page of this server only")


async def extras(server: Server, request: Request) -> Response:
    """The page's servers' resources and prompts (the terminal's /resources and /prompts):
    {resources: [{server, uri, name, mime}], prompts: [{server, name, description,
    arguments: [{name, description, required}]}]}."""
    boxes = server.page_tools.servers() if server.page_tools else []

    def listed() -> dict:
        return {"resources": [{"server": name, "uri": str(r.uri), "name": r.name,
                               "mime": r.mime_type} for b in boxes for name, r in b.resources()],
                "prompts": [{"server": name, "name": p.name, "description": p.description,
                             "arguments": [{"name": a.name, "description": a.description,
                                            "required": bool(a.required)}
                                           for a in p.arguments or []]}
                            for b in boxes for name, p in b.prompts()]}
    return JSONResponse(await asyncio.to_thread(listed))


async def read(server: Server, request: Request) -> Response:
    """A resource's text, to attach to the next message: {uri} -> {text}."""
    from_the_page(request, "resources are read")
    body = await read_json(request, server.max_body)
    if set(body) != {"uri"} or not isinstance(body["uri"], str):
        raise RequestError(400, "a resource is read by its 'uri' (text), and nothing else")
    return JSONResponse({"text": await from_servers(
        server, lambda box: box.read_resource(body["uri"]))})


async def prompt(server: Server, request: Request) -> Response:
    """A prompt filled in, for the composer: {name, arguments} -> {text}."""
    from_the_page(request, "prompts are filled")
    body = await read_json(request, server.max_body)
    name, arguments = body.get("name"), body.get("arguments", {})
    if set(body) - {"name", "arguments"} or not isinstance(name, str) or \
            not isinstance(arguments, dict) or \
            not all(isinstance(v, str) for v in arguments.values()):
        raise RequestError(400, "a prompt is filled by its 'name' and 'arguments' (names to "
                                "text), and nothing else")
    return JSONResponse({"text": await from_servers(
        server, lambda box: box.prompt(name, arguments))})


async def from_servers(server: Server, ask: Callable[[Toolbox], str]) -> str:
    """``ask`` of the page's toolbox (in a thread: it waits on the servers); what no server
    has, or a server's failure, is a 404 naming it."""
    if not (server.page_tools and server.page_tools.servers()):
        raise RequestError(404, "the page has no MCP servers")
    try:
        return await asyncio.to_thread(ask, server.page_tools)
    except QwenMlxError as e:
        raise RequestError(404, str(e)) from None
