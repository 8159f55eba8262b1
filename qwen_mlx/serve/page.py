"""The chat page: ``GET /`` answers a browser with the page and anything else (scripts,
health checks that read Ollama's "is running" line) with plain text; ``/web/`` holds the
page's files, shipped in the package (``web/``, libraries vendored under ``web/vendor/``).

The page is a client of our public API, from the same origin, so the Host and Origin
checks (:mod:`qwen_mlx.serve.guard`) apply to it unchanged. Its files are not secret and
are served without the API key: the page asks for the key when the API answers 401.
A Content-Security-Policy allows scripts from this origin only, so model output that got
past the sanitizer still cannot run, and no remote font, script or image is ever fetched.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

WEB = Path(__file__).with_name("web")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "font-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
# revalidated on every load (cheap: ETag), so an upgraded package's page is never stale
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}


def wants_page(request: Request) -> bool:
    """Browsers ask for text/html; curl, scripts and Ollama clients do not."""
    return "text/html" in request.headers.get("accept", "")


async def index(request: Request) -> Response:
    if wants_page(request):
        return FileResponse(WEB / "index.html", headers=HEADERS)
    return PlainTextResponse("qwen-mlx is running")


class PageFiles(StaticFiles):
    """Starlette's static files with the page's security and caching headers."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        return response


def routes() -> list:
    return [Route("/", index, methods=["GET", "HEAD"]),
            Mount("/web", app=PageFiles(directory=WEB), name="web")]
