"""Structured outputs: a reply that must match a JSON Schema, any JSON, a regular expression
or one of a list of choices, enforced token by token.

Each step, before sampling, the logits of every token that cannot continue a valid reply
are set to -inf (a per-sequence mask), so whatever the model and the sampler do, the text
matches when the reply ends; once it is complete only an end-of-turn token is allowed.

The matcher is llguidance (Microsoft's, Rust, MIT), chosen over the two others built for
this by measurement (``bench/constrained.py``, results/constrained.json, on Qwen3's
151,669-token vocabulary):

* outlines-core turns a schema into one regex and that into a token index over the whole
  vocabulary up front: 0.24 s for a flat schema, 2.3 s for an anyOf of two objects and
  42 s for a nested one (llguidance: 0.5 to 2 ms each, lazily). Its masks are a
  lookup in that index, faster than llguidance's on flat schemas (0.4-18 us against 37-81 us)
  and slower on the nested ones (0.9 and 1.4 ms against 0.3 and 0.7 ms). Its regexes also
  drop what a regex cannot say: integer and number bounds and ``uniqueItems`` are silently
  ignored, so a reply can break the schema;
* xgrammar needs torch (and triton on Linux) at install time: hundreds of MB for a Mac tool
  that otherwise needs none;
* llguidance compiles lazily, computes a mask in tens to hundreds of microseconds, covers
  objects, arrays, strings (formats, patterns, lengths), numbers (bounds), enum, const,
  anyOf / oneOf / allOf and $ref, and names what it does not implement (``Unimplemented
  keys: ["uniqueItems"]``), which we pass on as the error.

The tokenizer comes from the model folder's tokenizer.json, so the mask is exact for
Qwen3's byte-level BPE; special tokens are never allowed inside the text, and the
end-of-turn tokens only where the grammar may end.

The mask is made on the CPU while the device computes the step's logits: the processor
first dispatches the logits (``mx.async_eval``), then reads the token just sampled, advances
the matcher and computes the mask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Sequence

import mlx.core as mx
import numpy as np

from ..errors import QwenMlxError, UnsupportedConstraint

log = logging.getLogger("qwen_mlx")

# Compact JSON: no optional whitespace (the model cannot pad a reply with blank space for
# ever), ", " and ": " between items as json.dumps writes them.
FORCED_STEPS = 16  # forced tokens walked at compile time (a schema's fixed opening)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Constraint:
    """What a reply must match. Build one with :meth:`json`, :meth:`schema`, :meth:`regex`
    or :meth:`choice`; ``model.stream(prompt, constraint=...)`` applies it."""

    kind: str  # "json", "schema", "regex", "choice" or "lark"
    source: str  # the schema as JSON text, the regex, the choices as a JSON list, the grammar

    @classmethod
    def json(cls) -> "Constraint":
        """Any JSON object (OpenAI's ``json_object``, Ollama's ``format: "json"``)."""
        return cls("json", "{}")

    @classmethod
    def schema(cls, schema) -> "Constraint":
        """JSON valid under ``schema``: a dict, JSON text, or a Pydantic model class."""
        if hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise QwenMlxError(f"the JSON schema is not valid JSON: {e}") from None
            except RecursionError:
                raise QwenMlxError("the JSON schema is nested too deeply") from None
        if not isinstance(schema, dict):
            raise QwenMlxError("a JSON schema must be an object")
        return cls("schema", json.dumps(schema))  # key order kept: replies follow it

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        """Text matching the regular expression (whole reply)."""
        if not isinstance(pattern, str) or not pattern:
            raise QwenMlxError("the regular expression is empty")
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: Sequence[str]) -> "Constraint":
        """Exactly one of ``options``."""
        options = list(options)
        if not options or not all(isinstance(o, str) and o for o in options):
            raise QwenMlxError("choices must be a non-empty list of non-empty texts")
        return cls("choice", json.dumps(options))

    @classmethod
    def lark(cls, grammar: str) -> "Constraint":
        """A grammar in llguidance's Lark dialect (forced tool calls are built this way)."""
        return cls("lark", grammar)

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.kind}\0{self.source}".encode()).hexdigest()

    def grammar(self) -> str:
        """The llguidance grammar for this constraint."""
        from llguidance import LLMatcher

        if self.kind == "json":
            return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_STYLE)
        if self.kind == "schema":
            return LLMatcher.grammar_from_json_schema(json.loads(self.source),
                                                      defaults=JSON_STYLE)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.source)
        if self.kind == "choice":
            alternatives = " | ".join(json.dumps(o) for o in json.loads(self.source))
            return LLMatcher.grammar_from_lark(f"start: {alternatives}")
        return LLMatcher.grammar_from_lark(self.source)

    @property
    def label(self) -> str:
        return {"json": "JSON", "schema": "JSON schema", "regex": "regular expression",
                "choice": "choice list", "lark": "grammar"}[self.kind]


class Grammars:
    """One model's matchers: its llguidance tokenizer (built once, about a second) and the
    compiled grammars by constraint hash, each copied for the sequence that uses it."""

    def __init__(self, tokenizer_json: str, eos_ids: list[int],
                 think: tuple[int, int] | None) -> None:
        """``think``: a hybrid model's ``<think>`` and ``</think>`` ids (None: none)."""
        self._tokenizer_json, self.eos_ids, self.think = tokenizer_json, eos_ids, think
        self._tokenizer = None
        self._compiled: dict[str, object] = {}
        self._lock = threading.Lock()  # requests are validated on several threads

    @property
    def tokenizer(self):
        from llguidance import LLTokenizer

        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = LLTokenizer(self._tokenizer_json, eos_token=self.eos_ids)
            return self._tokenizer

    def compile(self, constraint: Constraint):
        """The compiled matcher for ``constraint``, or an UnsupportedConstraint naming what
        is wrong (an unsupported keyword, a bad regex)."""
        from llguidance import LLMatcher

        tokenizer = self.tokenizer
        with self._lock:
            matcher = self._compiled.get(constraint.key)
        if matcher is None:
            try:
                # log_level 0: a problem is ours to report, in one line (llguidance's own
                # warning dumped its whole parser state on stderr)
                matcher = LLMatcher(tokenizer, constraint.grammar(), log_level=0)
                problem = matcher.get_error() if matcher.is_error() else \
                    self._forced_path_problem(matcher)
            except (ValueError, TypeError) as e:
                problem = str(e)
            if problem:
                raise UnsupportedConstraint(f"the {constraint.label} is not supported: "
                                            f"{matcher_message(problem)}")
            with self._lock:
                if len(self._compiled) >= 256:
                    self._compiled.pop(next(iter(self._compiled)))
                self._compiled[constraint.key] = matcher
        return matcher

    def _forced_path_problem(self, matcher) -> str | None:
        """Walk a copy of ``matcher`` along the tokens its grammar forces from the start (up
        to FORCED_STEPS): a schema with no finite instance (a required property that
        refers back to its own object) forces an endless ``{"a": {"a": ...`` and fails
        there, after its first token; refused now, it never ends a reply as "stop" with
        text that matches nothing."""
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

        probe = matcher.deep_copy()
        words = allocate_token_bitmask(1, self.tokenizer.vocab_size)
        for _ in range(FORCED_STEPS):
            fill_next_token_bitmask(probe, words)
            if probe.is_error():
                return "no finite JSON matches it, or it is too complex to follow (a " \
                    "required property that refers back to its own object?): " + \
                    matcher_message(probe.get_error())
            bits = np.unpackbits(words.view(np.uint8), bitorder="little")
            allowed = np.flatnonzero(bits)
            if len(allowed) != 1 or allowed[0] in self.eos_ids:
                return None  # a choice (or the end): the model's to make
            probe.consume_token(int(allowed[0]))
        return None

    def processor(self, constraint: Constraint, *, think_first: bool) -> "GrammarMask":
        return GrammarMask(self.compile(constraint).deep_copy(), self.tokenizer.vocab_size,
                           self.think if think_first else None, self.eos_ids)


def matcher_message(problem: str) -> str:
    """llguidance's message in one line: its first line without the position prefix, and
    the regex parser's own ``error:`` line when there is one."""
    lines = [line.strip() for line in problem.splitlines() if line.strip()]
    head = re.sub(r"^at \d+\(\d+\): ", "", lines[0]).removesuffix(" regex parse error:")
    detail = next((line[6:].strip() for line in lines[1:] if line.startswith("error:")), "")
    return f"{head.rstrip(':')}: {detail}" if detail else head


_SHIFTS = None  # 0..31, to unpack the bitmask's words on the device


class GrammarMask:
    """An mlx-lm logits processor ``(tokens, logits) -> logits`` for one sequence. Its first
    call is for the prompt; every later call first hands the matcher the token just fed.

    With ``think`` (a hybrid model's ``<think>`` and ``</think>`` ids, on a prompt where
    the reply may open with a thinking block), the first token may be the grammar's first
    or ``<think>``: after ``<think>`` tokens pass unmasked until ``</think>`` and the grammar
    applies from there; any other first token starts the grammar at once (a model that
    skips the block is constrained from its first token, not never).

    The matcher writes its mask into a preallocated buffer of 32-bit words (llguidance's
    numpy fill), which is unpacked to one boolean per token on the device.
    """

    def __init__(self, matcher, vocab_size: int, think: tuple[int, int] | None = None,
                 eos_ids: list[int] = ()) -> None:
        from llguidance.numpy import allocate_token_bitmask

        self.matcher, self.think, self.eos_ids = matcher, think, list(eos_ids)
        self.state = "first" if think else "grammar"  # then "thinking" or "grammar"
        self.started = False
        self.broken: str | None = None  # the matcher refused a token (it should not)
        self.consumed = 0  # tokens the matcher has taken (speculation rolls some back)
        self.words = allocate_token_bitmask(1, vocab_size)

    def mark(self) -> tuple:
        """Where the mask stands now: :meth:`rewind` comes back here (speculative decoding
        masks rows for proposals that may then be rejected)."""
        return self.state, self.started, self.broken, self.consumed

    def rewind(self, mark: tuple) -> None:
        """Back to a :meth:`mark`: the tokens taken since are rolled back in the matcher."""
        if self.consumed > mark[3]:
            self.matcher.rollback(self.consumed - mark[3])
        self.state, self.started, self.broken, self.consumed = mark

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        mx.async_eval(logits)  # the device computes the step while the mask is made here
        if self.started:
            self._advance(tokens[-1].item())
        self.started = True
        if self.state == "thinking":
            return logits
        return self._masked(logits)

    def _advance(self, token: int) -> None:
        if self.state == "first":
            if token == self.think[0]:
                self.state = "thinking"
                return
            self.state = "grammar"
        elif self.state == "thinking":
            if token == self.think[1]:  # thinking is over: the grammar starts fresh
                self.state = "grammar"
            return
        if self.broken is not None:
            return
        if self.matcher.consume_token(token):
            self.consumed += 1
        else:
            self.broken = self.matcher.get_error() or f"token {token} refused"
            log.warning("the structured output's matcher refused a token (%s): the reply "
                        "ends here", matcher_message(self.broken))

    def _masked(self, logits: mx.array) -> mx.array:
        global _SHIFTS
        width = logits.shape[-1]
        if self.broken is not None:  # end the reply: only an end-of-turn token
            allowed = mx.zeros((width,), dtype=mx.bool_)
            allowed[mx.array(self.eos_ids)] = True
            return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.words)
        if _SHIFTS is None:
            _SHIFTS = mx.arange(32, dtype=mx.int32)
        words = mx.array(self.words[0])
        allowed = ((words[:, None] >> _SHIFTS) & 1).reshape(-1).astype(mx.bool_)
        if self.state == "first":  # a thinking block may open instead
            allowed[self.think[0]] = True
        if allowed.size < width:  # the model's vocabulary is padded past the tokenizer's
            allowed = mx.concatenate([allowed, mx.zeros((width - allowed.size,), mx.bool_)])
        return mx.where(allowed[:width], logits, mx.array(-mx.inf, dtype=logits.dtype))
