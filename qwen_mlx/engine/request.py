"""One generation, validated: what the engine runs.

Every front end builds a :class:`Request` once, at its edge (the CLI's options, a chat
message, an HTTP body), through :meth:`qwen_mlx.model.Model.request`, which renders the
prompt, checks the sampling settings and fits the reply into the context. Past that point
nothing the user sent can be wrong: the engine (and the server's worker thread) trusts it,
so a bad value is a one-line error or a 4xx at the edge, never an error deep in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import QwenMlxError
from .constraint import Constraint
from .sampling import SamplingParams

DRAFT_TOKENS = 4  # proposals per step of speculative decoding, unless told
MAX_DRAFT_TOKENS = 16


@dataclass(frozen=True)
class Speculative:
    """Speculative decoding for a request: ``tokens`` proposals per step, from ``draft`` (a
    :class:`~qwen_mlx.model.Model` of the same vocabulary) or, without one, prompt lookup."""

    tokens: int
    draft: object | None = None

    @classmethod
    def checked(cls, draft, lookup: int | None, draft_tokens: int | None,
                vocabulary_problem: Callable[[], str | None]) -> "Speculative | None":
        """The settings from their parts (None: plain decoding), or a one-line error;
        ``vocabulary_problem()`` says why a draft cannot propose for the model, if so."""
        if draft is None and lookup is None:
            if draft_tokens is not None:
                raise QwenMlxError("draft_tokens needs a draft model (or use lookup)")
            return None
        if draft is not None and lookup is not None:
            raise QwenMlxError("choose a draft model (--draft) or prompt lookup (--lookup), "
                               "not both")
        tokens = lookup if lookup is not None else (draft_tokens or DRAFT_TOKENS)
        if not 1 <= tokens <= MAX_DRAFT_TOKENS:
            raise QwenMlxError(f"{'lookup' if lookup is not None else 'draft_tokens'} must be "
                               f"from 1 to {MAX_DRAFT_TOKENS}")
        problem = vocabulary_problem() if draft is not None else None
        if problem:
            raise QwenMlxError(problem)
        return cls(tokens, draft)


@dataclass(frozen=True)
class Request:
    """Prompt token ids, sampling (``params.max_tokens`` already within the context's
    room), stop strings (none empty), and what the reply must match (its grammar already
    compiled once, so it cannot fail in the engine; ``think_first``: only after the
    model's ``</think>``)."""

    tokens: tuple[int, ...]
    params: SamplingParams
    stop: tuple[str, ...] = ()
    constraint: Constraint | None = None
    think_first: bool = False
    speculative: Speculative | None = None
