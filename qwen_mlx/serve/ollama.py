"""Ollama-compatible endpoints: /api/chat and /api/generate (NDJSON streaming by default,
and Ollama's load requests: a model and no prompt or messages), /api/tags, /api/ps,
/api/show, /api/version. Durations are nanoseconds, as Ollama reports them."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from ..engine.sampling import PENALTY_WINDOW
from .fleet import Loaded, parse_keep_alive
from .formats import ollama_format
from .openai import read_json
from .server import Delta, RequestError, Server, flag, number, refuse_unsupported, stop_list
from .speculative import usage_record
from .worker import Ended


def error(e: RequestError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status)


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


CHAT_FIELDS = {"model", "messages", "stream", "options", "tools", "keep_alive", "format",
               "think", "speculative"}  # speculative: ours (serve/speculative.py)
GENERATE_FIELDS = {"model", "prompt", "system", "stream", "options", "raw", "keep_alive",
                   "format", "think", "speculative"}
# Fields holding their "off" value are accepted: a client's defaults are not requests.
NO_OPS = {"images": lambda v: v in (None, []), "template": lambda v: v in (None, ""),
          "context": lambda v: v in (None, []), "suffix": lambda v: v in (None, "")}
OPTIONS = {"temperature", "top_p", "top_k", "min_p", "seed", "num_predict", "num_ctx", "stop",
           "repeat_penalty", "presence_penalty", "frequency_penalty"}
# Options that tune only the hardware Ollama runs on (GPU layers, threads, batch, memory
# mapping): accepted with any value, since no reply depends on them here. Open WebUI and
# other Ollama apps send them.
HARDWARE = ("num_gpu", "num_thread", "num_batch", "use_mmap", "use_mlock", "numa", "low_vram",
            "main_gpu")
# the penalties look at the last PENALTY_WINDOW tokens, Ollama's default repeat_last_n;
# typical_p and tfs_z at 1 are those samplers switched off
OPTION_NO_OPS = {"repeat_last_n": lambda v: v in (None, PENALTY_WINDOW),
                 "typical_p": lambda v: v in (None, 1), "tfs_z": lambda v: v in (None, 1),
                 **{name: lambda v: True for name in HARDWARE}}


def validated(server: Server, body: dict, tokens: list[int]):
    """The engine's request from a prompt, Ollama's ``options`` and its ``format``."""
    sampling, stop, num_ctx = options(body)
    return server.request(tokens, sampling, stop, num_ctx,
                          constraint=ollama_format(body.get("format")),
                          constraint_param="format", max_tokens_param="options.num_predict",
                          speculative=server.speculative(body))


def thinking(body: dict) -> bool | None:
    """``think: false`` turns a hybrid Qwen3's thinking off. ``think: true`` would ask for
    the thinking apart from the reply, which qwen-mlx does not do: refused."""
    think = body.get("think")
    if think is None or think is False:
        return think
    raise RequestError(400, "'think' may only be false: qwen-mlx returns a hybrid model's "
                            "thinking inside the reply, not apart")


def check_fields(server: Server, body: dict, supported: set[str]) -> None:
    """Everything Ollama's body may say that we do not do is refused by name."""
    refuse_unsupported(body, supported, NO_OPS)
    if keep_alive(body) == 0 and server.fleet is None:
        raise RequestError(400, "'keep_alive' 0 (unload) is not supported by a server of one "
                                "model: it keeps its model loaded until it stops")


def keep_alive(body: dict) -> float | None | str:
    """The body's keep_alive in seconds (None: forever), or "default" when it has none."""
    value = body.get("keep_alive")
    return "default" if value is None else parse_keep_alive(value)


def options(body: dict) -> tuple[dict, list[str], int | None]:
    """Ollama's ``options`` -> (sampling, stop strings, num_ctx)."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise RequestError(400, "'options' must be an object")
    refuse_unsupported(opts, OPTIONS, OPTION_NO_OPS, prefix="options.")
    predict = number(opts, "num_predict", int)
    seed = number(opts, "seed", int, high=2**64 - 1)
    out = {"temperature": number(opts, "temperature", low=0),
           "top_p": number(opts, "top_p", low=0, high=1),
           "top_k": number(opts, "top_k", int, low=0),
           "min_p": number(opts, "min_p", low=0, high=1),
           "seed": seed if seed is None or seed >= 0 else None,  # Ollama's -1: random
           "repetition_penalty": number(opts, "repeat_penalty", low=0.01, high=10),
           "presence_penalty": number(opts, "presence_penalty", low=-2, high=2),
           "frequency_penalty": number(opts, "frequency_penalty", low=-2, high=2),
           "max_tokens": predict if predict and predict > 0 else None}  # -1: until the end
    return ({k: v for k, v in out.items() if v is not None}, stop_list(opts.get("stop")),
            number(opts, "num_ctx", int, low=1))


def final(server: Server, stats, started: float, **fields) -> dict:
    """The last record: Ollama's counts (``prompt_eval_count`` is the whole prompt, as in
    Ollama; ``prompt_eval_cached_count`` the part that was cached, when any was), and ours:
    of those, the tokens read from the disk tier, when any were."""
    cached = {"prompt_eval_cached_count": stats.cached_tokens} if stats.cached_tokens else {}
    if stats.disk_tokens:
        cached["prompt_eval_disk_cached_count"] = stats.disk_tokens
    return {"model": server.model_id, "created_at": now(), **fields, "done": True,
            "done_reason": stats.finish_reason,
            "total_duration": int((time.perf_counter() - started) * 1e9), "load_duration": 0,
            "prompt_eval_count": stats.prompt_tokens, **cached,
            "prompt_eval_duration": int(stats.time_to_first_token * 1e9),
            "eval_count": stats.generated_tokens,
            "eval_duration": int(stats.decode_seconds * 1e9), **usage_record(stats)}


def ollama_calls(calls: list[dict]) -> list[dict]:
    return [{"function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]


async def respond(server: Server, body: dict, req, started: float, *, key: str,
                  tools: bool, http: Request) -> Response:
    """Run the generation; ``key`` is "message" (/api/chat) or "response" (/api/generate)."""

    def payload(text: str, calls: list[dict] | None = None):
        if key == "response":
            return text
        message = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = ollama_calls(calls)
        return message

    if not flag(body, "stream", True):
        out = await server.complete(req, tools=tools, http=http)
        return JSONResponse(final(server, out.stats, started, **{key: payload(out.text,
                                                                              out.calls)}))

    def line(record: dict) -> str:
        return json.dumps(record, ensure_ascii=False) + "\n"

    async def lines():
        try:
            async for item in server.reply(req, tools=tools):
                calls = [] if isinstance(item, Delta) else item.calls
                if item.text or calls:
                    yield line({"model": server.model_id, "created_at": now(),
                                key: payload(item.text, calls), "done": False})
                if not isinstance(item, Delta):
                    yield line(final(server, item.stats, started, **{key: payload("")}))
        except Ended as e:
            yield line({"error": str(e)})

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def loaded(server: Server, key: str, body: dict) -> JSONResponse:
    """Ollama's answer to a load request (a model and nothing to say): the model is loaded,
    or with ``keep_alive: 0`` it is unloaded (by the fleet, once this answer is sent)."""
    empty = "" if key == "response" else {"role": "assistant", "content": ""}
    return JSONResponse({"model": server.model_id, "created_at": now(), key: empty,
                         "done_reason": "unload" if keep_alive(body) == 0 else "load",
                         "done": True})


async def chat(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    body = await read_json(request, server.max_body)

    def build():
        server.check_model(body.get("model"))
        check_fields(server, body, CHAT_FIELDS)
        if body.get("messages") in (None, []):
            return None
        return validated(server, body, server.encode_chat(body.get("messages"),
                                                          body.get("tools"), thinking(body)))

    req = await server.validate(build)
    if req is None:
        return loaded(server, "message", body)
    return await respond(server, body, req, started, key="message",
                         tools=bool(body.get("tools")), http=request)


async def generate(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    body = await read_json(request, server.max_body)

    def build():
        server.check_model(body.get("model"))
        check_fields(server, body, GENERATE_FIELDS)
        prompt = body.get("prompt")
        if prompt in (None, ""):
            return None
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be text")
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise RequestError(400, "'system' must be text")
        return validated(server, body, server.encode_text(prompt, raw=flag(body, "raw"),
                                                          system=system,
                                                          enable_thinking=thinking(body)))

    req = await server.validate(build)
    if req is None:
        return loaded(server, "response", body)
    return await respond(server, body, req, started, key="response", tools=False,
                         http=request)


def details(server: Server) -> dict:
    from math import prod

    from ..models.shapes import expected_shapes

    config = server.model.config
    quant = config.get("quantization") or {}
    try:
        count = sum(prod(s) for s in expected_shapes(config).values())
        size = f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
    except KeyError:
        size = ""
    return {"parent_model": "", "format": "mlx", "family": "qwen3", "families": ["qwen3"],
            "parameter_size": size,
            "quantization_level": f"Q{quant['bits']}" if quant.get("bits") else "F16"}


def disk_size(folder) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


async def tags(server: Server, request: Request) -> JSONResponse:
    """Every model a request may name: the loaded ones, then those the server can load."""
    fleet = server.fleet
    entries = [(e.name, e.server.model.path, details(e.server)) for e in
               (fleet.loaded if fleet else [Loaded(server, 0, None, pinned=True)])]
    if fleet is not None:
        entries += [(n, f, {"format": "mlx", "family": "qwen3", "families": ["qwen3"]})
                    for n, f in fleet.catalog.folders.items()
                    if n not in {e[0] for e in entries}]
    return JSONResponse({"models": [{
        "name": name, "model": name,
        "modified_at": datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(),
        "size": disk_size(folder), "digest": "", "details": info}
        for name, folder, info in entries]})


async def ps(server: Server, request: Request) -> JSONResponse:
    """The loaded models, as Ollama lists running ones: size, context, when each unloads."""
    loaded = server.fleet.loaded if server.fleet else [Loaded(server, 0, None, pinned=True)]
    return JSONResponse({"models": [{
        "name": e.name, "model": e.name, "size": disk_size(e.server.model.path), "digest": "",
        "details": details(e.server), "expires_at": e.expires_at(),
        "size_vram": disk_size(e.server.model.path),
        "context_length": e.server.model.context_length} for e in loaded]})


async def show(server: Server, request: Request) -> JSONResponse:
    body = await read_json(request, server.max_body)
    server.check_model(body.get("model") or body.get("name"))
    config = server.model.config
    d = server.model.defaults
    return JSONResponse({
        "modelfile": f"FROM {server.model.path}\n",
        "template": getattr(server.model.tokenizer, "chat_template", None) or "",
        "parameters": f"temperature {d.temperature}\ntop_p {d.top_p}\ntop_k {d.top_k}\n"
                      f"num_predict {d.max_tokens}",
        "details": details(server),
        "model_info": {"general.architecture": "qwen3",
                       "qwen3.context_length": server.model.context_length,
                       "qwen3.embedding_length": config.get("hidden_size"),
                       "qwen3.block_count": config.get("num_hidden_layers")},
        "capabilities": ["completion", "tools"] + (["thinking"] if server.model.hybrid else []),
        "modified_at": datetime.fromtimestamp(server.started, timezone.utc).isoformat()})


async def version(server: Server, request: Request) -> JSONResponse:
    return JSONResponse({"version": __version__})
