"""`qwen-mlx serve`: the model behind OpenAI- and Ollama-compatible HTTP APIs.

    from qwen_mlx import load
    from qwen_mlx.serve import create_app, Server
    app = create_app(Server(load(), "Qwen/Qwen3-4B-Instruct-2507"))   # any ASGI server

A browser opening the server's root gets the chat page (:mod:`qwen_mlx.serve.page`).
Imports the public API and every layer below it, never cli.
"""

import gc
import os
import sys
from typing import Callable

from .app import create_app
from .server import RequestError, Server

__all__ = ["RequestError", "Server", "create_app", "run"]


def run(server: Server, host: str = "127.0.0.1", port: int = 11434, *,
        shutdown_timeout: float = 10.0, idle_timeout: float = 5.0,
        on_ready: Callable[[], None] | None = None) -> None:
    """Serve with uvicorn until SIGINT or SIGTERM, then shut down gracefully (see
    :mod:`qwen_mlx.serve.shutdown`); ``on_ready`` runs once the port is listening. The
    engine thread is ended before this returns: MLX work left running in a thread when the
    interpreter exits aborts the process."""
    from .connections import uvicorn_config
    from .shutdown import GracefulServer

    config = uvicorn_config(server, host, port, idle_timeout=idle_timeout,
                            shutdown_timeout=shutdown_timeout)
    try:
        GracefulServer(config, server, shutdown_timeout, on_ready).run()
    finally:
        if server.page_tools is not None:  # the page's MCP servers stop with it
            server.page_tools.close()
        if server.fleet is not None:  # the models loaded on demand
            server.fleet.close()
        if not server.worker.close(timeout=60):  # a step that never returns: exit anyway
            sys.stderr.write("the engine did not stop within 60 s; exiting\n")
            sys.stderr.flush()
            os._exit(1)
        server.worker.pool.caches.clear()
        from ..engine.kv_disk import finish_writes

        finish_writes()  # the caches the engines handed to the disk tier
        gc.collect()  # here, not in whichever thread collects while the interpreter exits
