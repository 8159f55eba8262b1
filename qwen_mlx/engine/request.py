"""One generation, validated: what the engine runs.

Every front end builds a :class:`Request` once, at its edge (the CLI's options, a chat
message, an HTTP body), through :meth:`qwen_mlx.model.Model.request`, which renders the
prompt, checks the sampling settings and fits the reply into the context. Past that point
nothing the user sent can be wrong: the engine (and the server's worker thread) trusts it,
so a bad value is a one-line error or a 4xx at the edge, never an error deep in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constraint import Constraint
from .sampling import SamplingParams


@dataclass(frozen=True)
class Speculative:
    """Speculative decoding for a request: ``tokens`` proposals per step, from ``draft`` (a
    :class:`~qwen_mlx.model.Model` of the same vocabulary) or, without one, prompt lookup."""

    tokens: int
    draft: object | None = None


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
