"""A qwen-mlx server on a loopback port for the serve tests: a uvicorn thread (the
``model`` and ``running`` fixtures in conftest.py start one per test module)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from qwen_mlx.serve import Server
from qwen_mlx.serve.connections import uvicorn_config

MODEL = "tiny-qwen3"
PORTS = random.Random()  # its own: a test that seeds `random` does not choose ports


def free_port() -> int:
    """A free loopback port of this xdist worker's own residue modulo the worker count, so
    two workers never pick the same port between choosing it and a server binding it.
    (Linux's bind to port 0 hands out even ports, so the choice is ours: below the
    ephemeral range, where no outgoing connection takes one meanwhile.)"""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    while True:
        port = PORTS.randrange(20000, 32000, count) + index
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class Running:
    """A uvicorn server in a thread."""

    def __init__(self, server: Server, idle_timeout: float = 5.0, port: int | None = None) -> None:
        self.server = server
        self.port = port or free_port()
        self.uvicorn = uvicorn.Server(uvicorn_config(server, "127.0.0.1", self.port,
                                                     idle_timeout=idle_timeout))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        while not self.uvicorn.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(10)
        if self.server.fleet is not None:  # the models it loaded by name
            self.server.fleet.close()
        self.server.worker.close()


def serve_process(folder: Path, port: int, *extra: str, command: str = "serve",
                  env: dict | None = None) -> subprocess.Popen:
    """`qwen-mlx serve FOLDER` (or `chat --web` with ``command="chat"``) as a process,
    returned once /health answers 200; its stderr is a text pipe; ``env`` adds variables."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BROWSER": "true", **(env or {})}
    args = ["serve", str(folder), "--port", str(port), "--context", "2048"] \
        if command == "serve" else ["chat", str(folder), "--web", "--port", str(port)]
    proc = subprocess.Popen([sys.executable, "-m", "qwen_mlx", *args, *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(proc.stderr.read())


def served(first_folder, catalog: dict, **fleet) -> Running:
    """The first model served as `qwen-mlx serve` serves it, with ``catalog`` ({name: folder})
    loadable by name (serve/fleet.py); ``fleet`` overrides the Fleet's settings."""
    from qwen_mlx import load
    from qwen_mlx.serve.fleet import Catalog, Fleet

    first = Server(load(first_folder, context=1024), MODEL)
    opened = lambda name, folder: Server(load(folder, context=1024), name)  # noqa: E731
    first.fleet = Fleet(first, Catalog(catalog), opened, **{"budget": 1 << 40, **fleet})
    return Running(first)


HI = [{"role": "user", "content": "Tell me a story."}]


def poll(check, timeout: float = 60):
    """Wait for a state (never a fixed time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("the state was not reached in time")


def ps(url: str) -> dict[str, dict]:
    """/api/ps: the loaded models by name."""
    return {m["name"]: m for m in httpx.get(f"{url}/api/ps").json()["models"]}


def alone_text(folder, name: str, **extra) -> str:
    """The reply to HI from ``folder`` served alone as ``name`` (greedy, 12 tokens)."""
    import openai

    from qwen_mlx import load

    running = Running(Server(load(folder, context=1024), name))
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        return client.chat.completions.create(model=name, messages=HI, max_tokens=12,
                                              temperature=0, **extra).choices[0].message.content
    finally:
        running.stop()
