"""Several models behind one server, by name, as Ollama serves them: a model is loaded on its
first request, kept for its keep-alive after its last one, and unloaded, least recently used
first, when the next one would not fit (the memory budget, or ``--max-models``).

Each loaded model is a :class:`Server` of its own (its worker, caches and stores), so the
APIs' adapters are unchanged: the routes pick one per request by the body's ``model``. The
first server (the model `qwen-mlx serve` was started with) carries the page, the tools and
/health, and stays loaded.

What a model takes is estimated before it is loaded, from its folder: its weights as they
load, plus the KV cache of one 4,096-token sequence (``kv_room.RESERVE``). A model with
a request running or queued is never unloaded under it; when nothing idle can make room,
the request gets a 503 with the numbers.
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable

import anyio
import mlx.core as mx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .kv_room import RESERVE
from .openai import read_json
from ..errors import QwenMlxError
from .server import RequestError, Server

KEEP_ALIVE = 300.0  # seconds, Ollama's default (5m)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
GIB = 1 << 30
FOREVER = 100 * 365 * 86400  # seconds


def parse_keep_alive(value, param: str = "keep_alive") -> float | None:
    """Ollama's ``keep_alive``: seconds as a number, or a Go duration ("10m", "1h30m",
    "500ms"); negative (or over a century) means forever (None); 0 unloads once the request
    ends."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(400, f"'{param}' must be a duration like \"5m\" or a number of "
                                f"seconds", param=param)
    if isinstance(value, str):
        text = value.strip()
        sign = -1 if text.startswith("-") else 1
        body = text.lstrip("+-")
        if re.fullmatch(r"\d+(\.\d+)?", body):
            seconds = float(body)
        elif body and re.fullmatch(f"(?:{_DURATION.pattern})+", body):
            seconds = sum(float(n) * _SECONDS[u] for n, u in _DURATION.findall(body))
        else:
            raise RequestError(400, f"'{param}' {value!r} is not a duration (like \"5m\", "
                                    f"\"1h\", \"30s\", or seconds)", param=param)
        value = sign * seconds
    if value < 0 or value > FOREVER:  # past a century is for ever (as a negative is)
        return None
    return float(value)


@dataclass
class Catalog:
    """The models a server can load, by name: a converted model's folder each."""

    folders: dict[str, Path] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)  # /api/copy: a new name -> a name
    keep: dict[str, float | None] = field(default_factory=dict)  # a name's own keep-alive
    patterns: dict[str, str] = field(default_factory=dict)  # an alias (glob) -> a name

    def canonical(self, name: str) -> str:
        if name in self.copies:
            return self.copies[name]
        return next((target for pattern, target in self.patterns.items()
                     if fnmatch.fnmatchcase(name.lower(), pattern.lower())), name)

    def folder(self, name: str) -> Path | None:
        name = self.canonical(name)
        return self.folders.get(name) or next(
            (f for n, f in self.folders.items() if n.lower() == name.lower()), None)


@dataclass(eq=False)
class Loaded:
    """One loaded model and what decides its lifetime."""

    server: Server
    nbytes: int  # the estimate it was admitted with
    keep_alive: float | None  # seconds after its last request; None: forever
    pinned: bool = False  # the server's first model: never unloaded
    users: int = 0  # requests picked for it whose answers have not ended
    closing: bool = False  # being unloaded: no new requests
    last_used: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.server.model_id

    @property
    def idle(self) -> bool:
        return not self.closing and self.users == 0 and self.server.worker.busy == 0

    @property
    def expires(self) -> float | None:
        """When it unloads (monotonic seconds), if it stays idle; None: never."""
        if self.pinned or self.keep_alive is None:
            return None
        return self.last_used + self.keep_alive

    def expires_at(self) -> str:
        """Ollama's ``expires_at``: a wall-clock time, or far in the future."""
        when = self.expires
        if when is None:
            return "9999-12-31T23:59:59Z"
        wall = time.time() + (when - time.monotonic())
        return datetime.fromtimestamp(wall, timezone.utc).isoformat().replace("+00:00", "Z")


class Fleet:
    """The loaded models, the catalog of loadable ones, and the rules between them.

    ``open`` makes a Server for a catalog name and its folder (it loads the model; it runs
    in a worker thread, so the event loop goes on serving the loaded models meanwhile).
    ``budget`` is the bytes every loaded model together may take (their estimates).
    """

    def __init__(self, first: Server, catalog: Catalog, open: Callable[[str, Path], Server],
                 *, budget: int, keep_alive: float | None = KEEP_ALIVE,
                 max_models: int | None = None, settings: dict | None = None,
                 recipe: str = "q4") -> None:
        self.catalog, self.open, self.budget = catalog, open, budget
        self.recipe = recipe  # what /api/pull converts with (serve --recipe)
        self.settings = settings or {}  # what each Server is made with (its host, key...)
        self.keep_alive, self.max_models = keep_alive, max_models
        self.loaded: list[Loaded] = [Loaded(first, footprint(first), None, pinned=True)]
        self.loads = 0  # models loaded after the first (tests count them)
        self._lock: asyncio.Lock | None = None
        self._reaper: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    @property
    def first(self) -> Server:
        return self.loaded[0].server

    def add(self, server: Server, pinned: bool = False) -> None:
        """A model loaded before serving (`serve A B`): kept until memory needs the room,
        or (``pinned``) for as long as the server runs."""
        need = footprint(server)
        if self._used() + need > self.budget:
            raise QwenMlxError(f"{server.model_id} needs {need / GIB:.2f} GiB beside the "
                               f"models before it, and {(self.budget - self._used()) / GIB:.2f} "
                               f"GiB of the {self.budget / GIB:.2f} GiB budget is left")
        if self.max_models is not None and len(self.loaded) >= self.max_models:
            raise QwenMlxError(f"--max-models {self.max_models}: {server.model_id} is one "
                               f"model too many")
        self._adopt(server, need, None).pinned = pinned

    def names(self) -> list[str]:
        """Every model a request may name: the loaded ones, then the catalog's."""
        out = [e.name for e in self.loaded]
        return out + [n for n in [*self.catalog.folders, *self.catalog.copies] if n not in out]

    def find(self, name: str) -> Loaded | None:
        name = self.catalog.canonical(name)
        for entry in self.loaded:
            if entry.closing:
                continue
            try:
                entry.server.check_model(name)
                return entry
            except RequestError:
                continue
        return None

    async def use(self, name: str, keep_alive: float | None | str = "default") -> Loaded:
        """The loaded model ``name``, loaded now if it is not (one load at a time: eight
        first requests for a model load it once); counted as in use until :meth:`done`."""
        entry = self.find(name)
        if entry is None and self.first.closing:
            raise RequestError(503, "the server is shutting down", code="shutting_down")
        if entry is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                entry = self.find(name) or await self._load(name)
        entry.users += 1
        entry.last_used = time.monotonic()
        if keep_alive != "default" and not entry.pinned:
            entry.keep_alive = keep_alive
        self._start_reaper()
        return entry

    def done(self, entry: Loaded) -> None:
        entry.users -= 1
        entry.last_used = time.monotonic()
        if self._wake is not None:
            self._wake.set()

    async def _load(self, asked: str) -> Loaded:
        name, folder = self.catalog.canonical(asked), self.catalog.folder(asked)
        if folder is None:
            raise RequestError(404, f"model '{asked}' not found here: convert it into the "
                                    f"cache first (qwen-mlx convert {asked}), or pull it "
                                    f"(/api/pull); GET /api/tags lists what is",
                               code="model_not_found", param="model")
        need = estimate_bytes(folder)
        await self._make_room(name, need)
        server = await anyio.to_thread.run_sync(self.open, name, folder)
        self.loads += 1
        return self._adopt(server, need, self.catalog.keep.get(name, self.keep_alive))

    def _adopt(self, server: Server, need: int, keep_alive: float | None) -> Loaded:
        # one store of responses: GET /v1/responses/{id} finds any model's
        server.responses, server.fleet = self.first.responses, self
        entry = Loaded(server, need, keep_alive)
        self.loaded.append(entry)
        return entry

    def _used(self) -> int:
        return sum(e.nbytes for e in self.loaded)

    async def _make_room(self, name: str, need: int) -> None:
        """Unload idle models, least recently used first, until ``need`` more bytes fit in
        the budget and the count is under --max-models; else a 503 with the numbers."""
        def fits() -> bool:
            under = self.max_models is None or len(self.loaded) < self.max_models
            return under and self._used() + need <= self.budget

        while not fits():
            idle = sorted((e for e in self.loaded if e.idle and not e.pinned),
                          key=lambda e: e.last_used)
            if not idle:
                busy = ", ".join(f"{e.name} ({e.nbytes / GIB:.2f} GiB"
                                 f"{', in use' if not e.idle else ', kept'})"
                                 for e in self.loaded)
                limit = f"; --max-models {self.max_models}" if self.max_models else ""
                raise RequestError(503, f"model '{name}' needs {need / GIB:.2f} GiB and "
                                        f"{(self.budget - self._used()) / GIB:.2f} GiB of the "
                                        f"{self.budget / GIB:.2f} GiB budget is free{limit}; "
                                        f"loaded: {busy}. Try again when one is idle",
                                   code="model_busy")
            await self.unload(idle[0])

    def add_folder(self, name: str, recipe: str, folder: Path) -> list[str]:
        """A conversion just made (/api/pull): named as the cache's are; the names."""
        names = ([name] if recipe == self.recipe else []) + [f"{name}:{recipe}"]
        for n in names:
            self.catalog.folders[n] = folder
        return names

    async def forget(self, folder: Path) -> None:
        """Unload the model of ``folder`` and drop its names (/api/delete)."""
        for entry in [e for e in self.loaded if e.server.model.path.resolve() == folder]:
            if entry.pinned or not entry.idle:
                raise RequestError(409, f"'{entry.name}' is in use (or was named when the "
                                        f"server started): it cannot be deleted now")
            await self.unload(entry)
        gone = {n for n, f in self.catalog.folders.items() if f.resolve() == folder}
        for n in gone:
            del self.catalog.folders[n]
        for n in [c for c, target in self.catalog.copies.items() if target in gone]:
            del self.catalog.copies[n]

    async def unload(self, entry: Loaded) -> None:
        """Stop its engine and give its memory back."""
        if entry.pinned or entry.closing or entry not in self.loaded:
            return
        entry.closing = True
        server = entry.server
        await anyio.to_thread.run_sync(stop, server)
        self.loaded.remove(entry)
        # the caller's frame may hold the entry: the server must not be reachable from it
        # when the memory is collected
        entry.server = None
        del server
        await anyio.to_thread.run_sync(release)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._wake = asyncio.Event()
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Unload each idle model once its keep-alive has passed."""
        while True:
            now = time.monotonic()
            for entry in [e for e in self.loaded if e.idle and e.expires is not None
                          and e.expires <= now]:
                await self.unload(entry)
            pending = [e.expires for e in self.loaded if e.expires is not None]
            wait = min([max(0.0, min(pending) - time.monotonic()), 1.0]) if pending else 1.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.01))
            except asyncio.TimeoutError:
                pass

    async def route(self, request: Request,
                    handler: Callable[[Server, Request], Awaitable[Response]]) -> Response:
        """Run ``handler`` on the server its body's ``model`` names, loading it if needed;
        the model counts as in use until the answer (a stream too) has ended."""
        body = await read_json(request, self.first.max_body)
        name = body.get("model") if "model" in body else body.get("name")
        ollama = request.url.path.startswith("/api/")
        keep = parse_keep_alive(body["keep_alive"]) \
            if ollama and body.get("keep_alive") is not None else "default"
        if not isinstance(name, str) or not name:
            return await handler(self.first, request)  # the adapter names what is wrong
        found = self.find(name)
        if found is not None and found.pinned:
            if keep == 0.0:
                raise RequestError(400, f"'keep_alive' 0: '{name}' was named when the server "
                                        f"started and stays loaded until it stops")
            return await handler(found.server, request)
        entry = await self.use(name, keep)
        try:
            response = await handler(entry.server, request)
        except BaseException:
            self.done(entry)
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._tracked(response.body_iterator, entry)
        else:
            self.done(entry)
        return response

    async def _tracked(self, chunks, entry: Loaded):
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.done(entry)

    def close(self) -> None:
        """Stop every engine but the first's (the server's shutdown ends that one)."""
        for entry in self.loaded[1:]:
            stop(entry.server)
        del self.loaded[1:]
        release()


def stop(server: Server) -> None:
    """End a server's engine thread and drop its kept caches."""
    server.worker.close(timeout=60)
    server.worker.pool.caches.clear()


def release() -> None:
    """Return what unreferenced models and caches held to the system."""
    gc.collect()
    mx.clear_cache()


def footprint(server: Server) -> int:
    """A loaded model's weights (as its memory plan counts them) and one sequence's KV."""
    from .kv_room import kv_token_bytes

    plan = server.model.plan
    weights = plan.weights if plan is not None else 0
    return int(weights + RESERVE * kv_token_bytes(server.model))


def estimate_bytes(folder: Path) -> int:
    """What a converted model will take, from its folder: its weights as they load (floats
    in the compute type) and one 4,096-token sequence's KV."""
    from ..engine.kv_cache import KVSpec
    from ..engine.memory_plan import kv_bytes_per_token, weight_bytes_of_folder
    from ..models.checkpoint import read_config
    from ..models.loader import compute_dtype
    from ..models.shapes import Shape

    cast = compute_dtype("auto")  # as load() runs it: float32 on the CPU, stored on Metal
    compute = cast.size if cast else None
    config = read_config(folder)
    kv = kv_bytes_per_token(Shape.of(config), KVSpec(), compute or 2)  # as plan_for counts
    return int(weight_bytes_of_folder(folder, compute) + RESERVE * kv)
