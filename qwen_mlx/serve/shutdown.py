"""Stopping a server that is answering: the first SIGINT or SIGTERM stops new work and lets
running replies finish for a grace period; then they are cut, each stream ending with an
error event (not a dropped connection), and the process exits 0. A second signal exits at
once.

uvicorn on its own waits for open streams without limit, and after a graceful stop
re-raises the signal (so a SIGTERM'd server exits 143 even when all went well).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable

import uvicorn

from .server import Server


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, server: Server, grace: float,
                 on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.app_server, self.grace, self.on_ready = server, grace, on_ready

    async def startup(self, sockets=None) -> None:
        """uvicorn's startup, then ``on_ready`` once the port accepts connections (``chat
        --web`` opens the browser there, not before)."""
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:  # the second signal: no more waiting
            os._exit(128 + sig)
        self.should_exit = True
        worker = self.app_server.worker
        worker.closing.set()
        busy = worker.busy
        if busy:
            sys.stderr.write(f"shutting down: {busy} request(s) get up to {self.grace:g} s to "
                             f"finish (signal again to stop now)\n")
        cut = threading.Timer(self.grace, worker.stopping.set)
        cut.daemon = True
        cut.start()
