"""Multi-turn chat: the session (engine side) and the terminal REPL."""

from .session import ChatSession

__all__ = ["ChatSession"]
