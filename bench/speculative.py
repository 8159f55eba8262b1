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

``batched`` records the server's speculative batch: four code-edit requests (different
names to rename) decoded together, for lookup, for the model drafting for itself, and for
two drafting for themselves beside two drafted for by other weights (rows that keep very
different numbers of proposals). Greedy counts are exact, so one run each: the model's
shared forwards against the forwards the four replies counted on their own (what four
separate generations, or the former one-lane-per-request server, would run), and the rows
those shared forwards computed per token made; the draft's forwards, all rows at once,
against the proposals it made (alone, each one a forward of its own: a lower bound of what
four separate drafts would run); and the four replies' aggregate tok/s (prefill included)
against the plain continuous batch's, medians of ``--runs`` alternated runs (on this CPU
backend rows cost what they compute, so only a Mac or a GPU can show a gain).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints import parser  # noqa: E402 - bench/ is run as a script folder
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
    results["batched"] = batched(model, other, a.tokens, a.draft_tokens, a.runs)
    record = {**header("bench/speculative.py", f"greedy, {a.tokens} tokens after a "
                       f"{len(prompt)}-token code-edit prompt, {a.draft_tokens} proposals per "
                       f"step, random {a.shape} checkpoints (float32, q4); medians of "
                       f"{a.runs} runs alternated with plain decoding; every text checked "
                       f"equal to plain decoding's; batched: four such requests (different "
                       f"names to rename) at once through the speculative batch, forward "
                       f"counts exact (greedy), wall clock against the plain continuous "
                       f"batch as medians of {a.runs} alternated runs"),
              "shape": a.shape, "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")


def batched(model, other, tokens: int, n: int, runs: int) -> dict:
    """The speculative batch's forwards for four requests at once (see the module's text),
    and its wall clock against the plain batch's (medians of alternated runs)."""
    import time

    from qwen_mlx.engine.batch import Batch
    from qwen_mlx.engine.speculative_batch import SpeculativeBatch

    names = ("subtotal", "amount", "cost", "value")
    prompts = [model.encode(PROMPT.replace("subtotal", name)) for name in names]
    plain = [model.generate(p, temperature=0, max_tokens=tokens).tokens for p in prompts]
    cases = {"lookup": [dict(lookup=n)] * 4,
             "draft = model": [dict(draft=model, draft_tokens=n)] * 4,
             "2 x draft = model, 2 x other weights": [dict(draft=model, draft_tokens=n)] * 2
             + [dict(draft=other, draft_tokens=n)] * 2}

    def run(batch, asks) -> tuple[float, dict, dict]:
        """Wall seconds, each request's tokens and last stats, by request."""
        start = time.perf_counter()
        uids = [batch.add(model.request(p, temperature=0, max_tokens=tokens, **ask),
                          model.new_cache()) for p, ask in zip(prompts, asks)]
        made, stats = {u: [] for u in uids}, {}
        while len(batch):
            for event in batch.step():
                made[event.uid] += event.piece.tokens
                if event.last:
                    stats[event.uid] = event.piece.stats
        seconds = time.perf_counter() - start
        return seconds, [made[u] for u in uids], [stats[u] for u in uids]

    out = {}
    for name, asks in cases.items():
        times = {"plain": [], "speculative": []}
        for _ in range(runs):  # alternated: the plain batch, the speculative batch, ...
            plain_batch = Batch(model, parallel=4)
            seconds, texts, _ = run(plain_batch, [{}] * 4)
            plain_batch.close()
            assert texts == plain, "the plain batch's text differs from plain decoding"
            times["plain"].append(seconds)
            batch = SpeculativeBatch(model)
            seconds, texts, stats = run(batch, asks)
            assert texts == plain, f"batched {name}: a text differs from plain decoding"
            times["speculative"].append(seconds)
        total = sum(len(t) for t in plain)
        # alone, a draft makes each proposal with a forward of its own (and catches up
        # with one more when it is behind): its proposals are a lower bound of its forwards
        proposals = sum(st.draft_tokens for st, ask in zip(stats, asks) if "draft" in ask)
        out[name] = {"tokens": total, "shared_forwards": batch.forwards,
                     "own_forwards": sum(st.target_forwards for st in stats),
                     "draft_forwards": sum(d.forwards for d in batch.drafts.values()),
                     "draft_proposals": proposals,
                     "tokens_per_shared_forward": round(total / batch.forwards, 3),
                     "rows_per_token": round(batch.positions / total, 3),
                     "tps": round(total / statistics.median(times["speculative"]), 3),
                     "plain_batch_tps": round(total / statistics.median(times["plain"]), 3)}
        out[name]["speedup"] = round(out[name]["tps"] / out[name]["plain_batch_tps"], 3)
        print("batched", name, out[name], flush=True)
    return out


if __name__ == "__main__":
    main()
