"""Embeddings and reranking over HTTP: OpenAI's POST /v1/embeddings, Ollama's POST /api/embed
and its older POST /api/embeddings, and POST /v1/rerank (and /rerank) in the shape llama.cpp,
vLLM and Jina/Cohere-style clients send. Each turns its body into token rows at the edge
(every field checked, an input too long named by its index) and runs them as one compute
job on the engine thread (:mod:`qwen_mlx.engine.embed`), between the batch's steps."""

from __future__ import annotations

import base64
import time
import uuid

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..engine import embed
from ..engine.embed import TooLong
from .ollama import HARDWARE
from .openai import read_json
from .server import RequestError, Server, flag, number, refuse_unsupported
from .worker import Ended

MOST_INPUTS = 2048  # OpenAI's own limit per request


def texts(value, param: str, *, ids_ok: bool, vocab: int) -> list:
    """A string, a list of strings, (OpenAI only) token ids or lists of them -> a list of
    strings and id lists; anything else is a 400 naming the field or the item."""
    if isinstance(value, str):
        value = [value]
    elif ids_ok and isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RequestError(400, f"'{param}' must be a non-empty string or list", param=param)
    if len(value) > MOST_INPUTS:
        raise RequestError(400, f"'{param}' has {len(value):,} items; at most {MOST_INPUTS:,} "
                                f"per request", param=param)
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if isinstance(item, str):
            if not item:
                raise RequestError(400, f"'{where}' is empty", param=where)
        elif ids_ok and isinstance(item, list) and item:
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                       for t in item):
                raise RequestError(400, f"'{where}' must hold token ids from 0 to {vocab - 1}",
                                   param=where)
        else:
            kinds = "text or a list of token ids" if ids_ok else "text"
            raise RequestError(400, f"'{where}' must be {kinds}", param=where)
    return value


def dimensions(server: Server, body: dict) -> int | None:
    hidden = int(server.model.config["hidden_size"])
    return number(body, "dimensions", int, low=1, high=hidden)


async def run(server: Server, rows: list[list[int]], *, rerank: bool = False,
              dims: int | None = None) -> list:
    """The rows' embeddings or scores, in order, computed on the engine thread."""
    try:
        out = await server.worker.pooled(rows, dimensions=dims, rerank=rerank)
    except Ended as e:
        raise RequestError(e.status, str(e), code=e.code) from None
    return embed.gathered([out], len(rows))


async def rows_of(server: Server, build, param: str = "input") -> list[list[int]]:
    """Token rows, made off the event loop; an input over the context named by its index."""
    def checked():
        try:
            return build()
        except TooLong as e:
            raise RequestError(400, f"'{param}[{e.index}]': {e}",
                               param=f"{param}[{e.index}]") from None
    return await server.validate(checked)


async def openai_embeddings(server: Server, request: Request) -> JSONResponse:
    body = await read_json(request, server.max_body)
    refuse_unsupported(body, {"model", "input", "dimensions", "encoding_format", "user"}, {})
    server.check_model(body.get("model"))
    items = texts(body.get("input"), "input", ids_ok=True,
                  vocab=int(server.model.config["vocab_size"]))
    dims = dimensions(server, body)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(400, "'encoding_format' must be \"float\" or \"base64\"",
                           param="encoding_format")
    # OpenAI truncates nothing: an input over the context is refused
    rows = await rows_of(server, lambda: embed.embedding_rows(server.model, items,
                                                              truncate=False))
    vectors = await run(server, rows, dims=dims)
    shown = (lambda v: base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()) \
        if encoding == "base64" else (lambda v: v)
    used = sum(map(len, rows))
    return JSONResponse({"object": "list", "model": server.model_id,
                         "data": [{"object": "embedding", "index": i, "embedding": shown(v)}
                                  for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": used, "total_tokens": used}})


async def ollama_embed(server: Server, request: Request) -> JSONResponse:
    """Ollama's /api/embed: ``input`` text or texts, ``truncate`` (default true),
    ``dimensions``; normalized vectors."""
    started = time.perf_counter()
    body = await read_json(request, server.max_body)
    refuse_unsupported(body, {"model", "input", "truncate", "dimensions", "keep_alive",
                              "options"}, {})
    server.check_model(body.get("model"))
    items = texts(body.get("input"), "input", ids_ok=False, vocab=0)
    dims, truncate = dimensions(server, body), flag(body, "truncate", True)
    check_options(body)
    rows = await rows_of(server, lambda: embed.embedding_rows(server.model, items,
                                                              truncate=truncate))
    vectors = await run(server, rows, dims=dims)
    return JSONResponse({"model": server.model_id, "embeddings": vectors,
                         "total_duration": int((time.perf_counter() - started) * 1e9),
                         "load_duration": 0, "prompt_eval_count": sum(map(len, rows))})


async def ollama_embeddings(server: Server, request: Request) -> JSONResponse:
    """Ollama's older /api/embeddings: one ``prompt``, one ``embedding`` (normalized here,
    as Qwen3-Embedding defines it)."""
    body = await read_json(request, server.max_body)
    refuse_unsupported(body, {"model", "prompt", "keep_alive", "options"}, {})
    server.check_model(body.get("model"))
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise RequestError(400, "'prompt' must be non-empty text", param="prompt")
    check_options(body)
    rows = await rows_of(server, lambda: embed.embedding_rows(server.model, [prompt]))
    (vector,) = await run(server, rows)
    return JSONResponse({"embedding": vector})


def check_options(body: dict) -> None:
    """Ollama's ``options``: the hardware ones (as for /api/chat) and unset ones (LangChain
    sends every option, most None) are accepted; any other would change nothing an
    embedding depends on, so it is refused by name rather than ignored."""
    options = body.get("options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise RequestError(400, "'options' must be an object", param="options")
    for name, value in options.items():
        if value is not None and name not in HARDWARE:
            raise RequestError(400, f"'options.{name}' is not supported for embeddings",
                               param=f"options.{name}")


async def rerank(server: Server, request: Request) -> JSONResponse:
    """``query`` and ``documents`` (strings or ``{text}``) -> results sorted by
    ``relevance_score`` (Qwen3-Reranker's yes/no judgement), ``top_n`` of them."""
    body = await read_json(request, server.max_body)
    refuse_unsupported(body, {"model", "query", "documents", "top_n", "return_documents",
                              "instruction"}, {})
    server.check_model(body.get("model"))
    server.check_generates()  # a reranker judges with its output layer
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise RequestError(400, "'query' must be non-empty text", param="query")
    raw = body.get("documents")
    if isinstance(raw, list):
        raw = [d["text"] if isinstance(d, dict) and set(d) == {"text"} else d for d in raw]
    documents = texts(raw, "documents", ids_ok=False, vocab=0) if not isinstance(raw, str) \
        else None
    if documents is None:
        raise RequestError(400, "'documents' must be a list", param="documents")
    top_n = number(body, "top_n", int, low=1)
    returned = flag(body, "return_documents", False)
    instruction = body.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction):
        raise RequestError(400, "'instruction' must be non-empty text", param="instruction")
    rows = await rows_of(server, lambda: embed.rerank_rows(server.model, query, documents,
                                                           instruction=instruction),
                         "documents")
    scores = await run(server, rows, rerank=True)
    ranked = sorted(enumerate(scores), key=lambda pair: -pair[1])[:top_n]
    used = sum(map(len, rows))
    return JSONResponse({
        "id": f"rerank-{uuid.uuid4().hex}", "model": server.model_id,
        "results": [{"index": i, "relevance_score": s,
                     **({"document": {"text": documents[i]}} if returned else {})}
                    for i, s in ranked],
        "usage": {"prompt_tokens": used, "total_tokens": used}})
