"""`qwen-mlx serve`: OpenAI- and Ollama-compatible server on one loaded model."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from ..errors import QwenMlxError
from .console import PrefillBars, err, open_draft, open_model
from .fleet import fleet_of, served_name, server_speculation
from .models_file import read_models_file
from .options import (MODEL_HELP, force_option, kv_disk_options, load_options, memory_kwargs,
                      memory_options, speculative_options)
from ..tools.config import default_file
from .tools import open_tools, page_tool_options, tool_servers


@click.command(help=f"""Serve MODEL over HTTP: OpenAI's /v1/chat/completions, /v1/responses,
/v1/completions and /v1/models, Anthropic's /v1/messages (and count_tokens), Ollama's
/api/chat, /api/generate, /api/tags, /api/ps, /api/show and /api/version, /tokenize and
/detokenize, and /health. Concurrent requests are decoded together (continuous batching, up to
--parallel); the KV caches of recent conversations are kept, so a client that resends its
history prefills only the new part. Loopback only unless --host says otherwise.
{MODEL_HELP} Further MODELs are loaded too; every model in the cache is served by name,
loaded on its first request and kept for --keep-alive (Ollama's way; /api/pull adds more).""")
@click.argument("models", nargs=-1, metavar="[MODEL]...")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback exposes the model to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=11434, show_default=True,
              help="Port (11434 is Ollama's, so Ollama clients find it unchanged).")
@click.option("--api-key", envvar="QWEN_MLX_API_KEY",
              help="Require 'Authorization: Bearer KEY' (or set QWEN_MLX_API_KEY).")
@click.option("--cache-slots", type=click.IntRange(1, 64), default=None,
              help="Most conversations whose KV caches are kept for reuse; the KV memory "
                   "budget may keep fewer [default: 16].")
@click.option("--parallel", type=click.IntRange(1, 64), default=None,
              help="Most requests decoded at once [default: from the memory plan, 1 to 8].")
@click.option("--max-body", default="8MB", show_default=True,
              help="Largest request body; larger ones get 413 before they are parsed.")
@click.option("--request-timeout", type=click.FloatRange(0, min_open=True), default=None,
              metavar="SECONDS", help="Longest one request may generate; it then ends with "
                                      "finish_reason 'length' [default: no limit].")
@click.option("--idle-timeout", type=click.FloatRange(0, min_open=True), default=5.0,
              show_default=True, metavar="SECONDS",
              help="Close a connection that has sent no complete request for this long "
                   "(silent, slow, or idle on keep-alive).")
@click.option("--shutdown-timeout", type=click.FloatRange(0), default=10.0, show_default=True,
              metavar="SECONDS", help="On SIGINT/SIGTERM, how long running replies may "
                                      "finish before they are cut; a second signal stops now.")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
              help="A web origin (https://app.example) whose pages may call the server, "
                   "beyond localhost pages; '*' allows every page. Repeatable.")
@click.option("--alias", "aliases", multiple=True, metavar="NAME=MODEL",
              help="Answer requests for model NAME with MODEL, the served model; NAME may "
                   "hold * ('claude-*=MODEL' for Claude Code). Repeatable.")
@click.option("--keep-alive", default="5m", show_default=True, metavar="DURATION",
              help="How long a model loaded on demand stays after its last request (\"10m\", "
                   "seconds, -1 forever); a request's keep_alive overrides it.")
@click.option("--max-models", type=click.IntRange(1, 64), default=None,
              help="Most models loaded at once [default: as many as memory holds].")
@click.option("--models", "models_file", type=click.Path(path_type=Path, dir_okay=False),
              help="A TOML file of models served by name, each with its own options "
                   "(context, KV bits, parallel, draft or lookup, aliases, keep_alive, "
                   "pinned): see the README.")
@speculative_options
@page_tool_options
@load_options
@memory_options
@kv_disk_options
@force_option
def serve(models: tuple[str, ...], host: str, port: int, api_key: str | None, cache_slots: int,
          parallel: int | None, max_body: str, request_timeout: float | None,
          idle_timeout: float, shutdown_timeout: float, allow_origins: tuple[str, ...],
          aliases: tuple[str, ...], keep_alive: str, max_models: int | None,
          models_file: Path | None,
          mcp_files: tuple[Path, ...], tool_timeout: float, mcp_roots: tuple[Path, ...],
          mcp_start_timeout: float,
          adapter: Path | None, recipe: str,
          **options) -> None:
    from ..serve import Server, run
    from ..serve.guard import is_local
    from ..units import parse_size

    model, more = (models[0], models[1:]) if models else (None, ())
    body_limit = parse_size(max_body, "a body size")  # one-line error on a bad size
    keep = checked_keep_alive(keep_alive)
    entries = read_models_file(models_file) if models_file else []  # before any load
    names = alias_names(aliases, served_name(model))
    exposed = not is_local(host) and not api_key
    if mcp_files and exposed:
        raise QwenMlxError(f"serve --mcp on {host} needs --api-key: the page's tools run on "
                           f"this machine, and anyone who can reach {host} could ask for them")
    # the default mcp.json, as `chat --web` reads it; never offered to a server anyone reaches
    specs = tool_servers(mcp_files, (), default=not exposed)
    if exposed and default_file().is_file():
        note(f"the tools of {default_file()} are not offered: serving on {host} without "
             f"--api-key")
    check_port(host, port)  # before minutes of loading, not after
    if not is_local(host) and not api_key:
        err.print(f"[yellow]serving on {host} without --api-key: anyone who can reach this "
                  f"machine can use the model[/yellow]", soft_wrap=True)
    kwargs = memory_kwargs(options)
    draft = open_draft(options, recipe)
    llm = open_model(model, recipe=recipe, adapter=adapter, draft=draft, **kwargs)
    speculation = server_speculation(llm, options, draft)
    model_id = served_name(model)
    tools = open_tools(specs, (), tool_timeout, note, mcp_start_timeout, list(mcp_roots))
    slots = {"slots": cache_slots} if cache_slots else {}  # else the server's default
    server = Server(llm, model_id, api_key=api_key, progress=PrefillBars(), **slots,
                    host=host, allow_origins=allow_origins, max_body=body_limit,
                    parallel=parallel, time_limit=request_timeout, page_tools=tools,
                    speculation=speculation, aliases=names)
    if more and (adapter is not None or options.get("draft") or options.get("lookup")):
        raise QwenMlxError("--adapter, --draft and --lookup apply to one model: serve the "
                           "others without them, or give their own in --models FILE")
    server.fleet = fleet_of(server, recipe, kwargs, keep, max_models,
                            dict(api_key=api_key, host=host, allow_origins=allow_origins,
                                 max_body=body_limit, parallel=parallel,
                                 time_limit=request_timeout, **slots),
                            more=more, entries=entries)
    others = len([n for n in server.fleet.catalog.folders if server.fleet.find(n) is None])
    if others:
        err.print(f"[dim]{others} more cached model name(s) load on first request "
                  f"(GET /api/tags lists them)[/dim]", soft_wrap=True)
    err.print(f"serving {model_id} on http://{host}:{port} (OpenAI: /v1, Ollama: /api, "
              f"chat page: /), {server.worker.parallel} at a time; Ctrl-C stops",
              soft_wrap=True)
    if "*" in allow_origins:
        err.print("[yellow]--allow-origin '*': every web page you visit can use the "
                  "model[/yellow]", soft_wrap=True)
    run(server, host, port, shutdown_timeout=shutdown_timeout, idle_timeout=idle_timeout)


def checked_keep_alive(text: str) -> float | None:
    from ..serve.fleet import parse_keep_alive
    from ..serve.server import RequestError

    try:
        return parse_keep_alive(text, "--keep-alive")
    except RequestError as e:
        raise QwenMlxError(e.message.replace("'--keep-alive'", "--keep-alive")) from None


def note(line: str) -> None:
    err.print(line, style="dim", markup=False, highlight=False, soft_wrap=True)


def alias_names(aliases: tuple[str, ...], served: str) -> tuple[str, ...]:
    """``--alias NAME=MODEL``'s names, each for the served model (this server runs one)."""
    names = []
    for alias in aliases:
        name, _, target = alias.partition("=")
        if not name.strip() or not target.strip():
            raise QwenMlxError(f"--alias {alias}: give NAME=MODEL (e.g. 'claude-*={served}')")
        if target.lower() not in {served.lower(), served.lower().rsplit("/", 1)[-1]}:
            raise QwenMlxError(f"--alias {alias}: this server runs {served}, so MODEL must "
                               f"be that name")
        names.append(name.strip())
    return tuple(names)


def check_port(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise QwenMlxError(f"cannot resolve --host {host}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise QwenMlxError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
