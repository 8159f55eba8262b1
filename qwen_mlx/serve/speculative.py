"""Speculative decoding over HTTP: the server's default and the ``speculative`` field.

``serve --draft MODEL`` (or ``--lookup N``) speculates on every request. A request may
choose for itself with a field of ours, the same on the OpenAI and Ollama endpoints::

    "speculative": {"method": "draft" | "lookup" | "off", "tokens": N}

``method`` defaults to the server's (a server without one needs it said), ``tokens``
(proposals per step, 1 to 16) to the server's or 4; any other key is refused by name.
Structured outputs (each proposal checked against the grammar) and log-probabilities (from
the rows that verified the proposals) work as without speculation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.request import DRAFT_TOKENS, MAX_DRAFT_TOKENS
from ..model import Model
from .server import RequestError

KEYS = {"method", "tokens"}
METHODS = ("draft", "lookup", "off")
PARAM = "speculative"


@dataclass(frozen=True)
class Speculation:
    """The server's speculative decoding: ``method`` "draft" (with ``draft``, a model of
    the same vocabulary), "lookup", or None (off unless a request asks for lookup)."""

    method: str | None = None
    tokens: int | None = None
    draft: Model | None = None

    def kwargs(self, value) -> dict:
        """A request's ``speculative`` field (None: absent) -> :meth:`Model.request`'s
        keyword arguments (draft, draft_tokens, lookup), checked."""
        if value is None:
            if self.method is None:
                return {}
            return self._chosen(self.method, self.tokens)
        if not isinstance(value, dict):
            raise RequestError(400, "'speculative' must be an object: {\"method\": \"draft\" | "
                                    "\"lookup\" | \"off\", \"tokens\": N}", param=PARAM)
        unknown = sorted(set(value) - KEYS)
        if unknown:
            raise RequestError(400, f"'speculative.{unknown[0]}' is not supported by qwen-mlx "
                                    f"(it takes method and tokens)",
                               param=f"{PARAM}.{unknown[0]}")
        method = value.get("method")
        if method is None:  # absent or null: the server's own (null once read as none)
            method = self.method
        if method is None:
            raise RequestError(400, "'speculative.method' is needed: this server was started "
                                    "without --draft or --lookup", param=f"{PARAM}.method")
        if method not in METHODS:
            raise RequestError(400, "'speculative.method' must be \"draft\", \"lookup\" or "
                                    "\"off\"", param=f"{PARAM}.method")
        tokens = value.get("tokens")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                                   or not 1 <= tokens <= MAX_DRAFT_TOKENS):
            raise RequestError(400, f"'speculative.tokens' must be a whole number from 1 to "
                                    f"{MAX_DRAFT_TOKENS}", param=f"{PARAM}.tokens")
        if method == "off":
            if tokens is not None:
                raise RequestError(400, "'speculative.tokens' needs method draft or lookup",
                                   param=f"{PARAM}.tokens")
            return {}
        if method == "draft" and self.draft is None:
            raise RequestError(400, "'speculative.method' draft needs a server started with "
                                    "--draft MODEL", param=f"{PARAM}.method")
        return self._chosen(method, tokens or (self.tokens if method == self.method else None))

    def _chosen(self, method: str, tokens: int | None) -> dict:
        if method == "draft":
            return {"draft": self.draft, "draft_tokens": tokens or DRAFT_TOKENS}
        return {"lookup": tokens or DRAFT_TOKENS}


def usage_record(stats) -> dict:
    """The usage extension (ours) of a reply that speculated: proposals made and kept, the
    model's forwards while decoding and the tokens each made."""
    if not stats.target_forwards:
        return {}
    return {"speculative": {"draft_tokens": stats.draft_tokens,
                            "accepted_tokens": stats.accepted_tokens,
                            "acceptance_rate": round(stats.acceptance_rate, 4),
                            "target_forwards": stats.target_forwards,
                            "tokens_per_forward": round(stats.tokens_per_forward, 4)}}
