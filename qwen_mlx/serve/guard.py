"""Browser safety: every web page the user visits can reach a server on 127.0.0.1.

Two attacks, and what Ollama did after its DNS-rebinding advisory against them:

* **DNS rebinding**: a page on ``evil.example`` re-points its name at 127.0.0.1 and reads our
  answers as same-origin. Its requests carry ``Host: evil.example``; on loopback only Host
  values naming this machine (localhost, 127.x, [::1], the --host given) are served, the rest
  get 403. A server bound to another address was exposed on purpose and skips this check.
* **Cross-origin requests**: a page's ``fetch`` or form POST (``text/plain`` needs no
  preflight) runs a generation. Requests whose ``Origin`` is not allowed get 403; allowed
  origins (localhost pages by default, ``--allow-origin`` for more, ``*`` only when asked)
  get CORS headers and their preflights answered, so browser apps work.

A pure ASGI middleware, so streamed replies pass through unbuffered.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

LOCAL_NAMES = ("localhost",)
PREFLIGHT_HEADERS = "Authorization, Content-Type"
METHODS = "GET, POST, OPTIONS"


def _hostname(value: str) -> str:
    """'example.com:8080' -> 'example.com', '[::1]:11434' -> '::1' (lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_local(host: str) -> bool:
    """localhost, *.localhost, or a loopback address."""
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """Refuse foreign Host and Origin values; answer CORS for allowed origins."""

    def __init__(self, app, *, bind_host: str = "127.0.0.1",
                 allow_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.bind_host = _hostname(bind_host)
        # bound to a non-loopback address: exposed on purpose, any Host may reach it
        self.check_host = is_local(self.bind_host)
        self.any_origin = "*" in allow_origins
        self.origins = {o.rstrip("/").lower() for o in allow_origins if o != "*"}

    def origin_allowed(self, origin: str) -> bool:
        if self.any_origin or origin.rstrip("/").lower() in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and is_local((parts.hostname or "").lower())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = _hostname(headers.get("host", ""))
        if self.check_host and host != self.bind_host and not is_local(host):
            return await _refuse(send, f"Host '{headers.get('host', '')}' is not this "
                                       f"machine (DNS rebinding is refused)")
        origin = headers.get("origin")
        if origin is None:
            return await self.app(scope, receive, send)
        if not self.origin_allowed(origin):
            return await _refuse(send, f"origin '{origin}' is not allowed (serve "
                                       f"--allow-origin adds origins)")
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            asked = headers.get("access-control-request-headers") or PREFLIGHT_HEADERS
            await send({"type": "http.response.start", "status": 204, "headers": cors + [
                (b"access-control-allow-methods", METHODS.encode()),
                (b"access-control-allow-headers", asked.encode("latin-1")),
                (b"access-control-max-age", b"600")]})
            return await send({"type": "http.response.body", "body": b""})

        async def send_with_cors(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + cors}
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _refuse(send, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
