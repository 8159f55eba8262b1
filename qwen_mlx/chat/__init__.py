"""Multi-turn chat: the session (engine side), saved sessions and the terminal REPL.
Imports the public API and every layer below it; of the other verbs, only serve (chat --web)."""

from .session import ChatSession

__all__ = ["ChatSession"]
