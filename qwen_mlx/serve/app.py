"""The ASGI app: routes for every API over one :class:`Server`, each API's error shape (an
unknown route or method too), and the optional API key.

Starlette (with uvicorn) rather than FastAPI: the two APIs need their own error bodies and
streaming formats, which we write by hand either way, so FastAPI's validation layer would only
be bypassed; Starlette is the part of it we use.
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import anthropic
from . import completions
from . import embeddings
from . import ollama
from . import ollama_models
from . import openai
from . import page
from . import page_tools
from . import responses
from . import tokens
from .guard import Guard
from .server import ClientGone, RequestError, Server

Handler = Callable[[Server, Request], Awaitable[Response]]
# the routes whose body names a model: with a fleet, that model's server answers
NAMED = {openai.chat_completions, completions.completions, responses.create, anthropic.messages,
         anthropic.count_tokens, ollama.chat, ollama.generate, ollama.show,
         embeddings.openai_embeddings, embeddings.ollama_embed, embeddings.ollama_embeddings,
         embeddings.rerank}


def create_app(server: Server) -> Guard:
    """The routes, behind the browser-safety guard (:mod:`qwen_mlx.serve.guard`)."""
    def route(path: str, handler: Handler, methods: list[str], api) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                authorize(server, request)
                if server.fleet is not None and handler in NAMED:
                    return await server.fleet.route(request, handler)
                return await handler(server, request)
            except RequestError as e:
                return api.error(e)
            except (ClientGone, ClientDisconnect):  # nobody to answer: say nothing, log nothing
                return Response(status_code=499)
        return Route(path, endpoint, methods=methods)

    # the page's tools before the page's files (/web/...)
    routes = [route("/web/tools", page_tools.tools, ["GET"], openai),
              route("/web/tools/call", page_tools.call, ["POST"], openai),
              route("/web/tools/form", page_tools.form, ["POST"], openai),
              route("/web/tools/extras", page_tools.extras, ["GET"], openai),
              route("/web/tools/read", page_tools.read, ["POST"], openai),
              route("/web/tools/prompt", page_tools.prompt, ["POST"], openai)] + \
        page.routes() + [
        Route("/health", lambda request: health(server), methods=["GET"]),
        route("/v1/models", openai.models, ["GET"], openai),
        route("/v1/models/{model:path}", openai.model, ["GET"], openai),
        route("/v1/chat/completions", openai.chat_completions, ["POST"], openai),
        route("/v1/completions", completions.completions, ["POST"], openai),
        route("/v1/responses", responses.create, ["POST"], openai),
        route("/v1/responses/{ident}", responses.retrieve, ["GET"], openai),
        route("/v1/responses/{ident}", responses.delete, ["DELETE"], openai),
        route("/v1/responses/{ident}/input_items", responses.input_items, ["GET"], openai),
        route("/v1/embeddings", embeddings.openai_embeddings, ["POST"], openai),
        route("/v1/rerank", embeddings.rerank, ["POST"], openai),
        route("/rerank", embeddings.rerank, ["POST"], openai),
        route("/tokenize", tokens.tokenize, ["POST"], openai),
        route("/detokenize", tokens.detokenize, ["POST"], openai),
        route("/v1/messages", anthropic.messages, ["POST"], anthropic),
        route("/v1/messages/count_tokens", anthropic.count_tokens, ["POST"], anthropic),
        route("/api/ps", ollama.ps, ["GET"], ollama),
        route("/api/tags", ollama.tags, ["GET"], ollama),
        route("/api/show", ollama.show, ["POST"], ollama),
        route("/api/version", ollama.version, ["GET"], ollama),
        route("/api/chat", ollama.chat, ["POST"], ollama),
        route("/api/generate", ollama.generate, ["POST"], ollama),
        route("/api/embed", embeddings.ollama_embed, ["POST"], ollama),
        route("/api/embeddings", embeddings.ollama_embeddings, ["POST"], ollama),
        route("/api/pull", ollama_models.pull, ["POST"], ollama),
        route("/api/delete", ollama_models.delete, ["DELETE"], ollama),
        route("/api/copy", ollama_models.copy, ["POST"], ollama),
    ]

    async def missing(request: Request, exc) -> Response:
        """An unknown route or method, in the error shape of the API its path belongs to
        (a bare "Not Found" left every SDK showing "Error code: 404" and nothing else)."""
        path, status = request.url.path, getattr(exc, "status_code", 404)
        api = ollama if path.startswith("/api/") else \
            anthropic if path.startswith("/v1/messages") else openai
        what = f"{request.method} {path} is not served here" if status == 405 else \
            f"{path} is not served by qwen-mlx"
        return api.error(RequestError(status, f"{what} (its APIs: OpenAI's /v1/chat/"
                                              f"completions, /v1/completions, /v1/responses, "
                                              f"/v1/embeddings, /v1/models; /v1/rerank; "
                                              f"Anthropic's /v1/messages; Ollama's /api/...; "
                                              f"/tokenize, /detokenize)",
                                      code="not_found" if status == 404 else None))

    app = Starlette(routes=routes, exception_handlers={404: missing, 405: missing})
    return Guard(app, bind_host=server.host, allow_origins=tuple(server.allow_origins))


def health(server: Server) -> JSONResponse:
    """Liveness without the API key (load balancers and scripts poll it): 200 while
    serving, 503 once shutting down or if the engine thread has stopped; how many requests
    run and wait, the engine's failures survived (the last one named), and what the disk
    tier for prompt caches did."""
    worker = server.worker
    status = "shutting down" if server.closing else \
        "ok" if worker.state == "ok" else "engine stopped"
    return JSONResponse({"status": status, "model": server.model_id,
                         "parallel": worker.parallel,
                         "running": len(worker.running) + len(worker.speculating),
                         "waiting": worker.waiting_count,
                         "engine": {"state": worker.state, "faults": worker.faults,
                                    "last_fault": worker.fault},
                         **({"kv_disk": server.model.kv_disk.counts}
                            if server.model.kv_disk is not None else {})},
                        status_code=200 if status == "ok" else 503)


def authorize(server: Server, request: Request) -> None:
    """With --api-key, every API route needs ``Authorization: Bearer KEY`` (or Anthropic's
    ``x-api-key: KEY``, which its SDK and Claude Code send)."""
    if server.api_key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else \
        request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), server.api_key.encode()):
        raise RequestError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                           code="invalid_api_key")
