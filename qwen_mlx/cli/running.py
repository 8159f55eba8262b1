"""`qwen-mlx ps` and `qwen-mlx stop MODEL`: a running server's loaded models, and unloading
one, as `ollama ps` and `ollama stop` do (over the server's Ollama API)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import click

from ..errors import QwenMlxError

server_options = [
    click.option("--host", default="127.0.0.1", show_default=True,
                 help="The server's address."),
    click.option("--port", type=click.IntRange(1, 65535), default=11434, show_default=True,
                 help="The server's port."),
    click.option("--api-key", envvar="QWEN_MLX_API_KEY",
                 help="The server's --api-key (or set QWEN_MLX_API_KEY)."),
]


def with_server_options(command):
    for option in reversed(server_options):
        command = option(command)
    return command


def call(host: str, port: int, api_key: str | None, method: str, path: str,
         body: dict | None = None) -> dict:
    """One request to the server; its error, or no server there, as a one-line error."""
    url = f"http://{host}:{port}{path}"
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method),
                                    timeout=600) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error") or e.reason
        except ValueError:
            message = e.reason
        raise QwenMlxError(f"the server at {host}:{port} answered {e.code}: {message}") \
            from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise QwenMlxError(f"no qwen-mlx server at http://{host}:{port} ({reason}): start one "
                           f"with `qwen-mlx serve`") from None


@click.command()
@with_server_options
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def ps(host: str, port: int, api_key: str | None, as_json: bool) -> None:
    """The models a running `qwen-mlx serve` has loaded: size, context, until when."""
    from .models import _size, _table

    models = call(host, port, api_key, "GET", "/api/ps").get("models", [])
    if as_json:
        click.echo(json.dumps(models))
        return
    rows = [[m["name"], _size(m.get("size", 0)), f"{m.get('context_length', 0):,}",
             "forever" if m.get("expires_at", "").startswith("9999") else
             m.get("expires_at", "")] for m in models]
    _table(f"loaded in the server at {host}:{port}", ["name", "size", "context", "until"],
           rows)


@click.command()
@click.argument("model")
@with_server_options
def stop(model: str, host: str, port: int, api_key: str | None) -> None:
    """Unload MODEL from a running `qwen-mlx serve` (its keep_alive set to 0)."""
    call(host, port, api_key, "POST", "/api/generate", {"model": model, "keep_alive": 0})
