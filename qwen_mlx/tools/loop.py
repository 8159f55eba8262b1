"""One round of a tool loop: the calls in a reply, each approved (or not) and run, turned
into the ``tool`` messages the model reads next.

The text of a result only ever goes into a ``tool`` message: calls are parsed from the
model's reply, never from a result, so a result that holds ``<tool_call>`` markup or
instructions stays data. The terminal chat, ``generate --mcp`` and ``Model.chat`` drive
rounds with this; each shows calls and results its own way through ``on_event``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .calls import parse
from .toolbox import CANCELLED, DEFAULT_ROUNDS, Toolbox, ToolResult

__all__ = ["CANCELLED", "DEFAULT_ROUNDS", "Approvals", "Call", "Round", "calls_in", "run_round"]
DENIED = "the user did not allow this call"
NOT_RUN = "not run: the user stopped the calls"


@dataclass(frozen=True)
class Call:
    """A call the model asked for."""

    name: str
    arguments: object


def calls_in(reply: str) -> list[Call]:
    """The calls in a reply's answer (what it thought, in ``<think>``, calls nothing)."""
    answer = reply.rpartition("</think>")[2]
    return [Call(c["name"], c["arguments"]) for c in parse(answer)[1]]


@dataclass
class Approvals:
    """Which calls may run: tools allowed for the whole session (``--allow-tool``, or an
    "always" answer), else ``ask(call)`` -> "yes", "no" or "always"; without ``ask``,
    every call runs (a script that passed its own tools)."""

    allowed: set[str] = field(default_factory=set)
    ask: Callable[[Call], str] | None = None

    def allow(self, call: Call) -> bool:
        if self.ask is None or call.name in self.allowed:
            return True
        answer = self.ask(call)
        if answer == "always":
            self.allowed.add(call.name)
        return answer in ("yes", "always")


@dataclass
class Round:
    """A round's outcome: the tool messages (one per call, in order), and whether Ctrl-C
    stopped it (the calls not run say so)."""

    messages: list[dict]
    cancelled: bool = False


def run_round(reply: str, toolbox: Toolbox, approvals: Approvals, *,
              on_event: Callable[[str, Call, ToolResult | None], None] = lambda *_: None,
              on_progress: Callable[[Call, float, float | None, str | None], None] | None
              = None) -> Round | None:
    """Run the calls of ``reply``; None when it has none. ``on_event("call", call, None)``
    before each, ``on_event("result", call, result)`` after; ``on_progress(call, progress,
    total, message)`` while one runs, as its server reports. Ctrl-C during a call cancels
    it and the rest, and ends the round (the conversation keeps every message)."""
    calls = calls_in(reply)
    if not calls:
        return None
    out = Round([])
    for call in calls:
        if out.cancelled:
            result = ToolResult(NOT_RUN, True)
        else:
            on_event("call", call, None)
            try:
                heard = None if on_progress is None else \
                    (lambda p, t, m, call=call: on_progress(call, p, t, m))
                result = toolbox.call(call.name, call.arguments, on_progress=heard) \
                    if approvals.allow(call) else ToolResult(DENIED, True)
            except KeyboardInterrupt:
                out.cancelled, result = True, ToolResult(CANCELLED, True)
            on_event("result", call, result)
        out.messages.append({"role": "tool", "name": call.name, "content": result.text})
    return out
