"""Speculative decoding on this machine: acceptance, tokens per model forward, and decode
tok/s against plain decoding, for a draft model and for prompt lookup.

    python bench/speculative.py [--shape small] [--tokens 128] [--runs 3]

On the CPU backend a k-row forward costs about k one-row forwards, so wall-clock gains do
not show here (bench/device_check.sh measures them on a Mac or a GPU); what this records is
what carries over: the share of proposals kept and the tokens each forward of the model
yields. Cases, all greedy on one random checkpoint (float32, q4):

* ``draft = model``: the model drafts for itself; every proposal must be kept, and each
  forward must yield N+1 tokens (a check of the machinery, not a use);
* ``draft = other weights``: a random checkpoint of the same shape and tokenizer (seed 1):
  it agrees with the model about as often as chance, the worst case;
* ``lookup``: prompt lookup on a code-edit prompt whose answer repeats its input.

Each case is run ``--runs`` times alternated with plain decoding; medians are recorded,
and every speculative text is checked to be the plain one token for token.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints import RESULTS, parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

PROMPT = ("Rename `total` to `subtotal` in this function and return it unchanged otherwise:\n"
          "def price(items):\n    total = 0\n    for item in items:\n"
          "        total += item.price * item.quantity\n    return total\n") * 2


def main() -> None:
    ap = parser(__doc__, "speculative.json", "q4")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--draft-tokens", type=int, default=4)
    a = ap.parse_args()
    from qwen_mlx import load
    from qwen_mlx.models.recipes import Recipe
    from qwen_mlx.quant.convert import convert
    from qwen_mlx.testing import make_checkpoint

    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-spec-"))
    for seed in (0, 1):
        convert(make_checkpoint(work / f"hf{seed}", a.shape, seed=seed), work / f"q4-{seed}",
                Recipe(dtype="float32"))
    model, other = load(work / "q4-0"), load(work / "q4-1")
    cases = {"draft = model": dict(draft=model, draft_tokens=a.draft_tokens),
             "draft = other weights": dict(draft=other, draft_tokens=a.draft_tokens),
             "lookup": dict(lookup=a.draft_tokens)}
    prompt = model.encode(PROMPT)
    model.generate(prompt, temperature=0, max_tokens=8)  # warm up
    results = {}
    for name, speculate in cases.items():
        runs = []
        for _ in range(a.runs):  # alternated: plain, speculative, plain, ...
            plain = model.generate(prompt, temperature=0, max_tokens=a.tokens)
            fast = model.generate(prompt, temperature=0, max_tokens=a.tokens, **speculate)
            assert fast.tokens == plain.tokens, f"{name}: the text differs from plain decoding"
            s = fast.stats
            runs.append({"acceptance_rate": s.acceptance_rate,
                         "tokens_per_forward": s.tokens_per_forward,
                         "decode_tps": s.generation_tps,
                         "plain_decode_tps": plain.stats.generation_tps})
        results[name] = {key: round(statistics.median(r[key] for r in runs), 3)
                         for key in runs[0]}
        results[name]["speedup"] = round(results[name]["decode_tps"]
                                         / results[name]["plain_decode_tps"], 3)
        print(name, results[name], flush=True)
    record = {**header("bench/speculative.py", f"greedy, {a.tokens} tokens after a "
                       f"{len(prompt)}-token code-edit prompt, {a.draft_tokens} proposals per "
                       f"step, random {a.shape} checkpoints (float32, q4); medians of "
                       f"{a.runs} runs alternated with plain decoding; every text checked "
                       f"equal to plain decoding's"),
              "shape": a.shape, "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
