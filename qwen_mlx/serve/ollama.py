"""Ollama-compatible endpoints: /api/chat and /api/generate (NDJSON streaming by default),
/api/tags, /api/show, /api/version. Durations are nanoseconds, as Ollama reports them."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from .openai import read_json
from .server import Outcome, RequestError, Server, flag, number, refuse_unsupported, stop_list


def error(e: RequestError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status)


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


CHAT_FIELDS = {"model", "messages", "stream", "options", "tools", "keep_alive"}
GENERATE_FIELDS = {"model", "prompt", "system", "stream", "options", "raw", "keep_alive"}
# Fields holding their "off" value are accepted: a client's defaults are not requests.
NO_OPS = {"format": lambda v: v in (None, ""), "images": lambda v: v in (None, []),
          "think": lambda v: v in (None, False), "template": lambda v: v in (None, ""),
          "context": lambda v: v in (None, []), "suffix": lambda v: v in (None, "")}
OPTIONS = {"temperature", "top_p", "top_k", "min_p", "seed", "num_predict", "num_ctx", "stop"}


def validated(server: Server, body: dict, tokens: list[int]):
    """The engine's request from a prompt and Ollama's ``options``."""
    sampling, stop, num_ctx = options(body)
    return server.request(tokens, sampling, stop, num_ctx)


def check_fields(body: dict, supported: set[str]) -> None:
    """Everything Ollama's body may say that we do not do is refused by name."""
    refuse_unsupported(body, supported, NO_OPS)
    keep = body.get("keep_alive")
    if keep in (0, "0", "0s", "0m"):
        raise RequestError(400, "'keep_alive' 0 (unload) is not supported: qwen-mlx keeps "
                                "its one model loaded until it stops")


def options(body: dict) -> tuple[dict, list[str], int | None]:
    """Ollama's ``options`` -> (sampling, stop strings, num_ctx)."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise RequestError(400, "'options' must be an object")
    refuse_unsupported(opts, OPTIONS, {}, prefix="options.")
    predict = number(opts, "num_predict", int)
    seed = number(opts, "seed", int, high=2**64 - 1)
    out = {"temperature": number(opts, "temperature", low=0),
           "top_p": number(opts, "top_p", low=0, high=1),
           "top_k": number(opts, "top_k", int, low=0),
           "min_p": number(opts, "min_p", low=0, high=1),
           "seed": seed if seed is None or seed >= 0 else None,  # Ollama's -1: random
           "max_tokens": predict if predict and predict > 0 else None}  # -1: until the end
    return ({k: v for k, v in out.items() if v is not None}, stop_list(opts.get("stop")),
            number(opts, "num_ctx", int, low=1))


def final(server: Server, stats, started: float, **fields) -> dict:
    return {"model": server.model_id, "created_at": now(), **fields, "done": True,
            "done_reason": stats.finish_reason,
            "total_duration": int((time.perf_counter() - started) * 1e9), "load_duration": 0,
            "prompt_eval_count": stats.prompt_tokens,
            "prompt_eval_duration": int(stats.time_to_first_token * 1e9),
            "eval_count": stats.generated_tokens,
            "eval_duration": int(stats.decode_seconds * 1e9)}


def ollama_calls(calls: list[dict]) -> list[dict]:
    return [{"function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]


async def respond(server: Server, body: dict, req, started: float, *,
                  key: str, tools: bool) -> Response:
    """Run the generation; ``key`` is "message" (/api/chat) or "response" (/api/generate)."""

    def payload(text: str, calls: list[dict] | None = None):
        if key == "response":
            return text
        message = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = ollama_calls(calls)
        return message

    if not flag(body, "stream", True):
        out = await server.complete(req, tools=tools)
        return JSONResponse(final(server, out.stats, started, **{key: payload(out.text,
                                                                              out.calls)}))

    def line(record: dict) -> str:
        return json.dumps(record, ensure_ascii=False) + "\n"

    async def lines():
        async for item in server.reply(req, tools=tools):
            if isinstance(item, str):
                item = Outcome(item, [], None)
            if item.text or item.calls:
                yield line({"model": server.model_id, "created_at": now(),
                            key: payload(item.text, item.calls), "done": False})
            if item.stats is not None:
                yield line(final(server, item.stats, started, **{key: payload("")}))

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def chat(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    body = await read_json(request, server.max_body)
    server.check_model(body.get("model"))
    check_fields(body, CHAT_FIELDS)
    req = validated(server, body, server.encode_chat(body.get("messages"), body.get("tools")))
    return await respond(server, body, req, started, key="message",
                         tools=bool(body.get("tools")))


async def generate(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    body = await read_json(request, server.max_body)
    server.check_model(body.get("model"))
    check_fields(body, GENERATE_FIELDS)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise RequestError(400, "'prompt' must be non-empty text")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise RequestError(400, "'system' must be text")
    tokens = server.encode_text(prompt, raw=flag(body, "raw"),
                                system=system if isinstance(system, str) else None)
    return await respond(server, body, validated(server, body, tokens), started,
                         key="response", tools=False)


def details(server: Server) -> dict:
    from math import prod

    from ..checkpoint import expected_shapes

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


async def tags(server: Server, request: Request) -> JSONResponse:
    size = sum(f.stat().st_size for f in server.model.path.glob("*.safetensors"))
    return JSONResponse({"models": [{
        "name": server.model_id, "model": server.model_id,
        "modified_at": datetime.fromtimestamp(server.started, timezone.utc).isoformat(),
        "size": size, "digest": "", "details": details(server)}]})


async def show(server: Server, request: Request) -> JSONResponse:
    body = await read_json(request, server.max_body)
    server.check_model(body.get("model") or body.get("name"))
    config = server.model.config
    d = server.model.defaults
    return JSONResponse({
        "modelfile": f"FROM {server.model.path}\n",
        "template": getattr(server.model.tokenizer, "chat_template", None) or "",
        "parameters": f"temperature {d.temperature}\ntop_p {d.top_p}\ntop_k {d.top_k}",
        "details": details(server),
        "model_info": {"general.architecture": "qwen3",
                       "qwen3.context_length": server.model.context_length,
                       "qwen3.embedding_length": config.get("hidden_size"),
                       "qwen3.block_count": config.get("num_hidden_layers")},
        "capabilities": ["completion", "tools"],
        "modified_at": datetime.fromtimestamp(server.started, timezone.utc).isoformat()})


async def version(server: Server, request: Request) -> JSONResponse:
    return JSONResponse({"version": __version__})
