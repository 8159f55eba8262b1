"""Questions an MCP server asks the chat page's user, carried by the running call: a form
(elicitation) goes down that call's stream of JSON lines as ``{"form": {id, server,
message, schema}}``, a request for a reply from the model (sampling) as ``{"sample": {id,
server, messages, last, system, max_tokens}}``; the page answers either with
``POST /web/tools/form {id, action, content}`` (a sample: accept or decline, no content).

A question comes from a server, not from a call, so it goes to the newest page call running
on that server. An unanswered form is cancelled when its call ends (Stop, a closed tab) or
after :data:`FORM_TIMEOUT`; an answer is taken once, for a form that is pending, with its
fields' types checked here (the server checks them against its schema too).
"""

from __future__ import annotations

import asyncio
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
        # server -> its page calls' (send, event loop), newest last
        self._calls: dict[str, list[tuple[Callable[[dict], None], object]]] = {}
        self._pending: dict[str, tuple[Callable, concurrent.futures.Future, str]] = {}

    @contextlib.contextmanager
    def carried(self, server: str, send: Callable[[dict], None],
                loop: asyncio.AbstractEventLoop | None = None) -> Iterator[None]:
        """While a page call runs on ``server`` (on ``loop``), its questions go out through
        ``send``; when it ends, its unanswered ones are cancelled."""
        with self._lock:
            self._calls.setdefault(server, []).append((send, loop))
        try:
            yield
        finally:
            with self._lock:
                self._calls[server].remove((send, loop))
                left = [f for sender, f, _ in self._pending.values() if sender is send]
            for future in left:
                if not future.done():
                    future.set_result(("cancel", None))

    def ask(self, server: str, message: str, schema: dict) -> tuple[str, dict | None]:
        """Put a server's form to the user of the newest page call on it and wait for the
        answer -> (action, content). No page call running: cancelled."""
        action, content, _ = self._put(server, "form", {"message": message,
                                                        "schema": schema})
        return action, content

    def allow_sample(self, server: str, asked: dict) -> asyncio.AbstractEventLoop | None:
        """Ask the user of the newest page call on ``server`` whether the model may answer
        its sampling request (``asked``: what the page shows) -> the event loop of that
        call's server when allowed, None when not (declined, or no page call running)."""
        action, _, loop = self._put(server, "sample", asked)
        return loop if action == "accept" else None

    def _put(self, server: str, kind: str, payload: dict) -> tuple[str, dict | None, object]:
        with self._lock:
            calls = self._calls.get(server)
            if not calls:
                return "cancel", None, None
            (send, loop), ident = calls[-1], uuid.uuid4().hex
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._pending[ident] = (send, future, kind)
        try:
            send({kind: {"id": ident, "server": server, **payload}})
            action, content = future.result(FORM_TIMEOUT)
            return action, content, loop
        except concurrent.futures.TimeoutError:
            return "cancel", None, None
        finally:
            with self._lock:
                self._pending.pop(ident, None)

    def answer(self, ident, action, content) -> str | None:
        """Take the page's answer -> None, or what is wrong with it (the route says so)."""
        if action not in ACTIONS:
            return f"'action' must be one of {', '.join(ACTIONS)}"
        with self._lock:
            pending = self._pending.get(ident) if isinstance(ident, str) else None
        if pending is None or pending[1].done():
            return "no form with that id is waiting for an answer"
        if pending[2] == "sample" and content is not None:
            return "'content' answers a form; a sampling request takes an action only"
        if pending[2] == "form" and action == "accept" and not (
                isinstance(content, dict) and all(isinstance(k, str) and valid(v)
                                                  for k, v in content.items())):
            return ("'content' must map field names to text, numbers, true/false or lists "
                    "of text")
        pending[1].set_result((action, content if action == "accept" else None))
        return None


def valid(value) -> bool:
    """A value MCP's flat form schemas allow."""
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, (str, int, float, bool)) and value == value  # not NaN
