"""The Responses API's stored responses (``store``, the default): what ``previous_response_id``
continues from and what ``GET /v1/responses/{id}`` returns, in memory and bounded.

At most :data:`MAX_RESPONSES` responses and :data:`MAX_BYTES` of them (their JSON, input
items and conversation); past either, the oldest are dropped first, so a continuation of a
dropped one is a 404 that says so. Nothing is written to disk: a restart forgets them all,
as a stateless server would.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

MAX_RESPONSES = 1024
MAX_BYTES = 256 << 20


@dataclass
class Stored:
    response: dict  # the response object as it was returned
    input_items: list[dict]  # its input, as items
    messages: list[dict]  # the whole conversation up to and including its output, as chat
    # messages without the instructions (a continuation does not inherit them)
    size: int = 0


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES) -> None:
        self.max_responses, self.max_bytes = max_responses, max_bytes
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, stored: Stored) -> None:
        stored.size = len(json.dumps([stored.response, stored.input_items, stored.messages],
                                     ensure_ascii=False))
        with self._lock:
            self._items[stored.response["id"]] = stored
            self._bytes += stored.size
            while self._items and (len(self._items) > self.max_responses or
                                   self._bytes > self.max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= old.size

    def get(self, ident) -> Stored | None:
        with self._lock:
            return self._items.get(ident) if isinstance(ident, str) else None

    def delete(self, ident: str) -> bool:
        with self._lock:
            old = self._items.pop(ident, None)
            if old is not None:
                self._bytes -= old.size
            return old is not None
