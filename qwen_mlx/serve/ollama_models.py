"""Ollama's model management over the fleet (:mod:`qwen_mlx.serve.fleet`): /api/pull
downloads and converts a model into the cache through the same path `qwen-mlx convert`
takes, streaming Ollama's progress records; /api/delete unloads and removes a cached
conversion (never a folder the user named); /api/copy gives a model another name (kept
while the server runs)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import QwenMlxError
from .openai import read_json
from .server import RequestError, Server, flag, refuse_unsupported

PULL_FIELDS = {"model", "name", "insecure", "stream"}


def model_name(body: dict, key: str = "model") -> str:
    name = body.get(key) if key in body else body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RequestError(400, f"'{key}' must name a model")
    return name.strip()


def fleet_of(server: Server):
    if server.fleet is None:
        raise RequestError(400, "this server serves one model: it cannot pull, delete or "
                                "copy models")
    return server.fleet


async def pull(server: Server, request: Request) -> Response:
    """Download (unless the Hugging Face cache or a local folder has it) and convert with
    the server's recipe; offline and not here, a 400 at once."""
    from ..hub import resolver as hub
    from ..models.recipes import parse_recipe

    body = await read_json(request, server.max_body)
    refuse_unsupported(body, PULL_FIELDS, {"insecure": lambda v: v in (None, False)})
    name, fleet, stream = model_name(body), fleet_of(server), flag(body, "stream", True)
    try:
        arg = hub.parse_arg(name)
        recipe = parse_recipe(fleet.recipe)
        if arg.folder is None and hub.offline():  # at once, not after a stream has begun
            await anyio.to_thread.run_sync(hub.source_folder, arg)
    except QwenMlxError as e:
        raise RequestError(400, str(e)) from None
    records: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    say = lambda record: loop.call_soon_threadsafe(records.put_nowait, record)  # noqa: E731

    def work() -> None:
        def convert(src: Path, out: Path, rec, display: str) -> None:
            from ..quant.convert import convert as run

            say({"status": f"converting {display} ({rec.name})"})
            run(src, out, rec, force=True, source_name=display)

        try:
            say({"status": "pulling manifest"})
            if arg.folder is None:
                say({"status": f"downloading {arg.repo_id}"})
            spec = hub.resolve(name, recipe, convert)
            names = fleet.add_folder(spec.display if arg.folder is None else name,
                                     recipe.name, spec.folder)
            say({"status": "success", "models": names})
        except QwenMlxError as e:
            say({"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a bug: said, not a dropped connection
            say({"error": f"internal error: {type(e).__name__}: {e}"})

    threading.Thread(target=work, name="qwen-mlx-pull", daemon=True).start()

    async def lines():
        while True:
            record = await records.get()
            yield json.dumps(record) + "\n"
            if "error" in record or record.get("status") == "success":
                return

    if stream:
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    last = None
    async for line in lines():
        last = json.loads(line)
    if "error" in last:
        raise RequestError(400, last["error"])
    return JSONResponse({"status": "success"})


async def delete(server: Server, request: Request) -> Response:
    """Unload, then remove a cached conversion; a folder the server was given by path, or
    a model in use, is refused."""
    from ..hub import cache

    body = await read_json(request, server.max_body)
    refuse_unsupported(body, {"model", "name"}, {})
    name, fleet = model_name(body), fleet_of(server)
    if name in fleet.catalog.copies:  # a name /api/copy made: only the name goes
        del fleet.catalog.copies[name]
        return Response(status_code=200)
    folder = fleet.catalog.folder(name)
    entry = fleet.find(name)
    if folder is None and entry is not None:
        folder = entry.server.model.path
    if folder is None:
        raise RequestError(404, f"model '{name}' not found")
    folder = folder.resolve()
    cached = [m for m in cache.list_models() if m.path.resolve() == folder]
    if not cached:
        raise RequestError(400, f"'{name}' is the folder {folder}, not a conversion in the "
                                f"model cache: qwen-mlx never deletes a folder it was given")
    await fleet.forget(folder)
    await anyio.to_thread.run_sync(cache.remove, cached[0])
    return Response(status_code=200)


async def copy(server: Server, request: Request) -> Response:
    body = await read_json(request, server.max_body)
    refuse_unsupported(body, {"source", "destination"}, {})
    source, destination = model_name(body, "source"), model_name(body, "destination")
    fleet = fleet_of(server)
    if fleet.find(source) is None and fleet.catalog.folder(source) is None:
        raise RequestError(404, f"model '{source}' not found")
    if fleet.find(destination) is not None or fleet.catalog.folder(destination) is not None:
        raise RequestError(400, f"'{destination}' already names a model")
    target = fleet.find(source)
    fleet.catalog.copies[destination] = target.name if target else \
        fleet.catalog.canonical(source)
    return Response(status_code=200)
