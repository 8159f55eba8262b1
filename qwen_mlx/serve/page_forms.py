"""Forms an MCP server asks the chat page's user (elicitation), carried by the running
call: the server's question goes down that call's stream of JSON lines as
``{"form": {id, server, message, schema}}``, and the page answers with
``POST /web/tools/form {id, action, content}``.

A question comes from a server, not from a call, so it goes to the newest page call running
on that server. An unanswered form is cancelled when its call ends (Stop, a closed tab) or
after :data:`FORM_TIMEOUT`; an answer is taken once, for a form that is pending, with its
fields' types checked here (the server checks them against its schema too).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import uuid
from typing import Callable, Iterator

FORM_TIMEOUT = 600.0  # seconds a form waits for its answer
ACTIONS = ("accept", "decline", "cancel")


class PageForms:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, list[Callable[[dict], None]]] = {}  # server -> senders
        self._pending: dict[str, tuple[Callable, concurrent.futures.Future]] = {}

    @contextlib.contextmanager
    def carried(self, server: str, send: Callable[[dict], None]) -> Iterator[None]:
        """While a page call runs on ``server``, its questions go out through ``send``; when
        it ends, its unanswered forms are cancelled."""
        with self._lock:
            self._calls.setdefault(server, []).append(send)
        try:
            yield
        finally:
            with self._lock:
                self._calls[server].remove(send)
                left = [f for sender, f in self._pending.values() if sender is send]
            for future in left:
                if not future.done():
                    future.set_result(("cancel", None))

    def ask(self, server: str, message: str, schema: dict) -> tuple[str, dict | None]:
        """Put a server's question to the user of the newest page call on it and wait for
        the answer -> (action, content). No page call running: cancelled."""
        with self._lock:
            senders = self._calls.get(server)
            if not senders:
                return "cancel", None
            send, ident = senders[-1], uuid.uuid4().hex
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._pending[ident] = (send, future)
        try:
            send({"form": {"id": ident, "server": server, "message": message,
                           "schema": schema}})
            return future.result(FORM_TIMEOUT)
        except concurrent.futures.TimeoutError:
            return "cancel", None
        finally:
            with self._lock:
                self._pending.pop(ident, None)

    def answer(self, ident, action, content) -> str | None:
        """Take the page's answer -> None, or what is wrong with it (the route says so)."""
        if action not in ACTIONS:
            return f"'action' must be one of {', '.join(ACTIONS)}"
        if action == "accept" and not (isinstance(content, dict) and all(
                isinstance(k, str) and valid(v) for k, v in content.items())):
            return ("'content' must map field names to text, numbers, true/false or lists "
                    "of text")
        with self._lock:
            pending = self._pending.get(ident) if isinstance(ident, str) else None
        if pending is None or pending[1].done():
            return "no form with that id is waiting for an answer"
        pending[1].set_result((action, content if action == "accept" else None))
        return None


def valid(value) -> bool:
    """A value MCP's flat form schemas allow."""
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, (str, int, float, bool)) and value == value  # not NaN
