"""How uvicorn runs our app: its config, and connections that cannot sit idle.

uvicorn's keep-alive timeout starts only once a response is complete, and any data stops
it: a client that connects and says nothing, or sends a request head a byte at a time, holds
its connection for ever. :class:`IdleTimeoutH11` gives every request head the same
``--idle-timeout``: a connection that has not sent a complete head in time (after
connecting, or after its last response) is closed.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import create_app
from .server import Server


class IdleTimeoutH11(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        waiting_after = self.cycle  # the request that was last begun (None: none yet)
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()

        def expire() -> None:
            if self.cycle is waiting_after and (self.cycle is None or
                                                self.cycle.response_complete):
                self.timeout_keep_alive_handler()  # no new request began in time: close

        self._head_timer = self.loop.call_later(self.timeout_keep_alive, expire)


def uvicorn_config(server: Server, host: str, port: int, *, idle_timeout: float = 5.0,
                   shutdown_timeout: float = 10.0) -> uvicorn.Config:
    return uvicorn.Config(create_app(server), host=host, port=port, log_level="warning",
                          http=IdleTimeoutH11, timeout_keep_alive=idle_timeout,
                          timeout_graceful_shutdown=shutdown_timeout + 5)
