"""Stopping a server that is answering: the first SIGINT or SIGTERM stops new work and lets
running replies finish for a grace period; then they are cut, each stream ending with an
error event (not a dropped connection), and the process exits 0. A second signal exits at
once.

uvicorn on its own waits for open streams without limit, and after a graceful stop
re-raises the signal (so a SIGTERM'd server exits 143 even when all went well).

The signal handler only sets flags and hands the rest to the event loop: Python runs it
between two bytecodes of the main thread, which may hold a lock at that moment (starting a
thread, writing to stderr), so making a timer thread or printing there can deadlock.
When uvicorn is done, :func:`qwen_mlx.serve.run` closes the engine thread before the
interpreter exits: MLX work still running in a thread at exit aborts the process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Callable

import uvicorn

from .server import Server


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, server: Server, grace: float,
                 on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.app_server, self.grace, self.on_ready = server, grace, on_ready
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        """uvicorn's startup, then ``on_ready`` once the port accepts connections (``chat
        --web`` opens the browser there, not before)."""
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:  # the second signal: no more waiting
            os._exit(128 + sig)
        self.should_exit = True
        for worker in self.workers():
            worker.closing.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._grace)
        else:  # before startup: nothing runs yet
            for worker in self.workers():
                worker.stopping.set()

    def workers(self) -> list:
        """The engines of every loaded model (the first's, and the fleet's others)."""
        fleet = self.app_server.fleet
        return [e.server.worker for e in fleet.loaded] if fleet is not None else \
            [self.app_server.worker]

    def _grace(self) -> None:
        """On the event loop: say what is waiting, and cut it when the grace ends."""
        workers = self.workers()
        busy = sum(w.busy for w in workers)
        if busy:
            sys.stderr.write(f"shutting down: {busy} request(s) get up to {self.grace:g} s to "
                             f"finish (signal again to stop now)\n")
        for worker in workers:
            self.loop.call_later(self.grace, worker.stopping.set)
