"""`qwen-mlx serve`: the model behind OpenAI- and Ollama-compatible HTTP APIs.

    from qwen_mlx import load
    from qwen_mlx.serve import create_app, Server
    app = create_app(Server(load(), "Qwen/Qwen3-4B-Instruct-2507"))   # any ASGI server
"""

from .app import create_app
from .server import RequestError, Server

__all__ = ["RequestError", "Server", "create_app", "run"]


def run(server: Server, host: str = "127.0.0.1", port: int = 11434) -> None:
    """Serve until Ctrl-C, with uvicorn."""
    import uvicorn

    uvicorn.run(create_app(server), host=host, port=port, log_level="warning")
