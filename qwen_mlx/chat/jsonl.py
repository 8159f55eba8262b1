"""`qwen-mlx chat --jsonl`: the chat for programs. Each input line gets exactly one JSON
object on stdout, so a script reading line by line never gets out of step, whatever the
reply holds (newlines included) and whether the line was a message, a command or refused:

    {"reply": "...", "finish_reason": "stop", "stats": {...}, "notices": [...]}
    {"command": "save", "message": "saved to ..."}
    {"error": "the message is too long: ..."}

With tools, the calls and their results come first, one record each, and a call that needs
approval reads it from the next input line (y, n or a):

    {"tool_call": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    {"tool_result": {"name": "add", "content": "5", "error": false}}
"""

from __future__ import annotations

import json
from typing import Iterator

from ..engine import Piece
from ..errors import QwenMlxError
from .repl import Repl


class JsonlRepl(Repl):
    """The REPL's commands and conversation, with one JSON record per input line."""

    def handle(self, text: str | QwenMlxError) -> bool:
        self._notes: list[str] = []
        self._record: dict | None = None
        if isinstance(text, QwenMlxError):  # a line that is not text
            self._emit({"error": str(text)})
            return True
        text = text.rstrip("\n")
        if not text.strip():
            self._emit({"error": "empty message"})
            return True
        go_on = super().handle(text)
        if self._record is None:
            name = text[1:].partition(" ")[0] if text.startswith("/") else None
            self._record = {"command": name, "message": "\n".join(self._notes)}
        self._emit(self._record)
        return go_on

    def show(self, pieces: Iterator[Piece]) -> None:
        if self._record is not None:  # a reply whose tool calls ran: out before the next
            self._emit(self._record)
        text, stats, notices = [], None, []
        for piece in pieces:
            if piece.notice:
                notices.append(piece.notice)
            text.append(piece.text)
            stats = piece.stats or stats
        self._record = {"reply": "".join(text),
                        "finish_reason": stats.finish_reason if stats else None,
                        "stats": stats.to_dict() if stats else None, "notices": notices}

    def tool_event(self, kind, call, result) -> None:
        """One record per call and one per result, as they happen (the answer to the
        line comes last)."""
        if self._record is not None:
            self._emit(self._record)
            self._record = None
        if kind == "call":
            self._emit({"tool_call": {"name": call.name, "arguments": call.arguments}})
        else:
            self._emit({"tool_result": {"name": call.name, "content": result.text,
                                        "error": result.error}})

    def stats(self) -> None:
        st = self.session.last_stats
        self._record = {"command": "stats", "stats": st.to_dict() if st else None}

    def note(self, text: str) -> None:
        self._notes.append(text)

    def error(self, message: str) -> None:
        self._record = {"error": message}

    def _emit(self, record: dict) -> None:
        self.out.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.file.flush()
