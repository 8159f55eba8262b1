"""The calls of the page's tools that the model emitted: what ``POST /web/tools/call`` may run.

An ``Origin`` header proves nothing outside a browser (any script sets it), so the call
endpoint runs only a call this server's model actually made: its id (about 90 random bits,
sent only to the client whose request produced it), name and arguments must match a call in a
reply the server gave, and each runs at most once. A client that never received the call
cannot name it; one that did can run only what the model asked for, once.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

MAX_OPEN = 1024  # calls waiting for the user's answer; the oldest are forgotten past this


def canonical(arguments) -> str:
    """Arguments as one comparable text (key order and spacing do not matter)."""
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class IssuedCalls:
    """Tool calls the model made, by id, until they are run (or forgotten past MAX_OPEN)."""

    def __init__(self, limit: int = MAX_OPEN) -> None:
        self._open: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        self.limit = limit

    def record(self, ident: str, name: str, arguments) -> None:
        with self._lock:
            self._open[ident] = (name, canonical(arguments))
            while len(self._open) > self.limit:
                self._open.popitem(last=False)

    def take(self, ident, name, arguments) -> bool:
        """True (and the call is used up) when the model made exactly this call."""
        if not isinstance(ident, str):
            return False
        with self._lock:
            made = self._open.get(ident)
            if made is None or made != (name, canonical(arguments)):
                return False
            del self._open[ident]
            return True
