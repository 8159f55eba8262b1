"""What structured outputs cost: decode speed under a nested JSON schema against free text,
grammar compile times, and llguidance against outlines-core on the same schemas.

    python bench/constrained.py [--shape small] [--recipes q4-f32] [--tokens 128] [--reps 5]

* decode: the same chat prompt, greedy, --tokens new tokens, with the schema's mask and
  without, alternated --reps times after a warm-up of each; tokens/s after the first
  (qwen-mlx's Stats), medians. The schema needs more than --tokens tokens to complete, so
  both runs make exactly --tokens. Goal: constrained >= 0.95x free.
* batch: --batch sequences (different prompts) decoded together in the server's batch
  (:class:`qwen_mlx.engine.batch.Batch`), all with the schema's mask or none; aggregate
  tokens/s from the step after every sequence's first token to the end, alternated
  --reps times, medians. Goal: constrained >= 0.95x free.
* compile: building llguidance's tokenizer for Qwen3's vocabulary (once per model), then
  each schema's first compile and a cached one (``Grammars.compile``, by hash).
* llguidance vs outlines-core (when installed: ``pip install outlines-core``, not a
  dependency): for each schema, compile time (outlines-core: the schema's regex to a
  token index over the vocabulary) or the error it gives, and the mean time to compute the
  next-token mask along a valid reply.
"""

from __future__ import annotations

import json
import statistics
import time

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

from qwen_mlx import load
from qwen_mlx.engine.constraint import Constraint
from qwen_mlx.testing import as_instruct

MESSAGES = [{"role": "user", "content": "List the rooms of a large house as JSON."}]
ROOM = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 8, "maxLength": 24},
    "floor": {"type": "integer", "minimum": 0, "maximum": 3},
    "kind": {"enum": ["bedroom", "kitchen", "bath", "study", "hall"]},
    "windows": {"type": "array", "items": {"type": "string", "maxLength": 10},
                "minItems": 1, "maxItems": 3}},
    "required": ["name", "floor", "kind", "windows"], "additionalProperties": False}
NESTED = {"type": "object", "properties": {
    "house": {"type": "object", "properties": {
        "address": {"type": "string", "minLength": 10, "maxLength": 40},
        "rooms": {"type": "array", "items": ROOM, "minItems": 12, "maxItems": 20}},
        "required": ["address", "rooms"], "additionalProperties": False}},
    "required": ["house"], "additionalProperties": False}
SCHEMAS = {
    "flat": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"},
                                               "c": {"type": "boolean"}},
             "required": ["a", "b", "c"], "additionalProperties": False},
    "nested": NESTED,
    "anyOf objects": {"anyOf": [ROOM, {"type": "object", "properties": {
        "error": {"type": "string", "maxLength": 20}}, "required": ["error"],
        "additionalProperties": False}]},
    "bounded numbers": {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 13, "maximum": 977},
        "x": {"type": "number", "minimum": -1.5, "maximum": 2.5}},
        "required": ["n", "x"], "additionalProperties": False},
    "formats and patterns": {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}},
        "required": ["day", "code"], "additionalProperties": False},
}


def batch_rate(model, constraint, n: int, tokens: int) -> float:
    """Aggregate decode tokens/s of ``n`` sequences in one batch, each making ``tokens``."""
    from qwen_mlx.engine.batch import Batch

    batch = Batch(model, parallel=n)
    for i in range(n):
        messages = [{"role": "user", "content": f"{MESSAGES[0]['content']} House {i}."}]
        batch.add(model.request(messages, constraint=constraint, temperature=0,
                                max_tokens=tokens), model.new_cache())
    started, start, counted = set(), None, 0
    while len(batch):
        events = batch.step()
        if start is not None:
            counted += sum(len(e.piece.tokens) for e in events)
            continue
        started.update(e.uid for e in events)
        if len(started) == n:  # every sequence is decoding from here
            start = time.perf_counter()
    seconds = time.perf_counter() - start
    batch.close()
    return counted / seconds


def decode_rate(model, constraint, tokens: int) -> tuple[float, int]:
    out = model.generate(MESSAGES, constraint=constraint, temperature=0, max_tokens=tokens)
    return out.stats.generation_tps, out.stats.generated_tokens


def mask_times(model, schema: dict, reply_tokens: list[int]) -> dict:
    """Mean seconds per next-token mask along ``reply_tokens``, for llguidance and (if
    installed) outlines-core, plus their compile times or errors."""
    out = {}
    start = time.perf_counter()
    matcher = model.grammars.compile(Constraint.schema(schema)).deep_copy()
    out["llguidance_compile_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for t in reply_tokens:
        matcher.compute_bitmask()
        matcher.consume_token(t)
    out["llguidance_mask_s"] = (time.perf_counter() - start) / max(1, len(reply_tokens))
    try:
        import outlines_core
    except ImportError:
        return out
    from outlines_core.json_schema import build_regex_from_schema

    from qwen_mlx.serve.logprobs import TokenText

    text = TokenText(model.tokenizer)
    vocab: dict[bytes, list[int]] = {}
    for token in range(len(model.tokenizer.get_vocab())):
        if token in model.eos_ids or model.tokenizer.convert_ids_to_tokens(token) is None:
            continue
        if token >= 151643:  # special tokens never appear inside JSON
            continue
        vocab.setdefault(text.bytes(token), []).append(token)
    try:
        start = time.perf_counter()
        regex = build_regex_from_schema(json.dumps(schema))
        index = outlines_core.Index(regex, outlines_core.Vocabulary(model.eos_ids[0], vocab))
        out["outlines_core_compile_s"] = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - its refusal is the finding
        out["outlines_core_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return out
    state = index.get_initial_state()
    start = time.perf_counter()
    steps = 0
    for t in reply_tokens:
        index.get_allowed_tokens(state)
        state = index.get_next_state(state, t)
        steps += 1
        if state is None:
            break
    out["outlines_core_mask_s"] = (time.perf_counter() - start) / max(1, steps)
    return out


def main() -> None:
    ap = parser(__doc__, "constrained.json", "q4-f32")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    (folder,) = converted(a.shape, a.recipes).values()
    as_instruct(folder)  # answers like Instruct-2507: the grammar applies from the start
    model = load(folder)
    start = time.perf_counter()
    model.grammars.tokenizer
    tokenizer_s = time.perf_counter() - start
    nested = Constraint.schema(NESTED)
    for c in (None, nested):  # warm up both paths
        decode_rate(model, c, 16)
    free, constrained = [], []
    for rep in range(a.reps):
        for c, into in ((None, free), (nested, constrained))[:: 1 if rep % 2 == 0 else -1]:
            rate, made = decode_rate(model, c, a.tokens)
            into.append({"tok_s": rate, "tokens": made})
    batch_free, batch_constrained = [], []
    for c in (None, nested):
        batch_rate(model, c, a.batch, 8)
    for rep in range(a.reps):
        for c, into in ((None, batch_free), (nested, batch_constrained))[
                :: 1 if rep % 2 == 0 else -1]:
            into.append(batch_rate(model, c, a.batch, a.tokens))
    compile_times = {}
    for name, schema in SCHEMAS.items():
        model.grammars._compiled.clear()
        start = time.perf_counter()
        model.grammars.compile(Constraint.schema(schema))
        first = time.perf_counter() - start
        start = time.perf_counter()
        model.grammars.compile(Constraint.schema(schema))
        compile_times[name] = {"first_s": first, "cached_s": time.perf_counter() - start}
    comparison = {}
    for name, schema in SCHEMAS.items():
        reply = model.generate(MESSAGES, constraint=Constraint.schema(schema), temperature=0,
                               max_tokens=a.tokens)
        comparison[name] = {"reply_tokens": len(reply.tokens),
                            **mask_times(model, schema, reply.tokens)}
    summary = {
        "free_tok_s": statistics.median(r["tok_s"] for r in free),
        "constrained_tok_s": statistics.median(r["tok_s"] for r in constrained),
        "llguidance_tokenizer_s": tokenizer_s}
    summary["constrained_over_free"] = summary["constrained_tok_s"] / summary["free_tok_s"]
    summary["batch_free_tok_s"] = statistics.median(batch_free)
    summary["batch_constrained_tok_s"] = statistics.median(batch_constrained)
    summary["batch_constrained_over_free"] = \
        summary["batch_constrained_tok_s"] / summary["batch_free_tok_s"]
    record = {**header("bench/constrained.py", f"greedy, {a.tokens} tokens, the nested schema's "
                       f"mask against none, {a.reps} alternated repetitions after a warm-up, "
                       f"medians, alone and {a.batch} sequences in one batch; compile and "
                       f"mask times single runs"),
              "checkpoint": {"shape": a.shape, "recipe": a.recipes}, "summary": summary,
              "decode": {"free": free, "constrained": constrained},
              "batch": {"sequences": a.batch, "free_tok_s": batch_free,
                        "constrained_tok_s": batch_constrained},
              "compile": compile_times, "comparison": comparison}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"summary": summary, "compile": compile_times,
                      "comparison": comparison}, indent=2))


if __name__ == "__main__":
    main()
