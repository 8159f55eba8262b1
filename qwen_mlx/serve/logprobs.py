"""Log-probabilities in OpenAI's shapes: each token's text and bytes, its log-probability
and the likeliest alternatives.

Qwen3's tokens are byte-level BPE: a token is a run of bytes written with GPT-2's
byte-to-character table, and may hold half of a UTF-8 character. ``bytes`` is exact; the
``token`` text shows such a fragment with U+FFFD, as OpenAI does.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """GPT-2's table, reversed: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenText:
    """Token ids -> their bytes and display text, for one tokenizer (cached per id)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bytes = lru_cache(maxsize=65536)(self._bytes)

    def _bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        table = _byte_of_char()
        if piece and all(c in table for c in piece):
            return bytes(table[c] for c in piece)
        return (piece or "").encode()  # a special token: its text as it is

    def entry(self, token: int, logprob: float) -> dict:
        data = self.bytes(token)
        return {"token": data.decode("utf-8", "replace"), "logprob": logprob,
                "bytes": list(data)}

    def chat(self, piece) -> dict:
        """One entry of ``choices[].logprobs.content`` for a piece with log-probabilities."""
        token = piece.tokens[0]
        return {**self.entry(token, piece.logprob),
                "top_logprobs": [self.entry(t, lp) for t, lp in piece.top_logprobs]}


def legacy(entries: list[dict], offset: int = 0) -> dict:
    """/v1/completions' shape of the same entries: parallel lists and text offsets."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            # an echoed prompt's first token has no log-probability and no alternatives
            "top_logprobs": [None if e["logprob"] is None else
                             {t["token"]: t["logprob"] for t in e["top_logprobs"]}
                             for e in entries],
            "text_offset": offsets}
