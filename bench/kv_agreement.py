"""How often greedy decoding with a quantized KV cache picks the same tokens as full precision.

    python bench/kv_agreement.py [--shape small] [--recipes q4-f32] [--tokens 64]
                                 [--prompts 1024,4096]

For each prompt length: greedy-decode --tokens tokens with full-precision KV, then with 8-bit
and 4-bit KV (group 32, and 4-bit with the first 256 tokens kept exact), and report the
share of positions that agree and the position of the first disagreement.
"""

from __future__ import annotations

import json
import random

from qwen_mlx import load

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

SETTINGS = {"kv8": dict(kv_bits=8, kv_group_size=32), "kv4": dict(kv_bits=4, kv_group_size=32),
            "kv4-start256": dict(kv_bits=4, kv_group_size=32, kv_start=256)}
WORDS = ("river stone light garden window paper music morning silver forest road ocean "
         "memory letter bridge winter candle story harbor mountain").split()


def main() -> None:
    ap = parser(__doc__, "kv_agreement.json", "q4-f32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompts", default="1024,4096")
    a = ap.parse_args()
    folder = next(iter(converted(a.shape, a.recipes).values()))
    rng = random.Random(0)
    rows = []
    for length in map(int, a.prompts.split(",")):
        base = load(folder)
        text = " ".join(rng.choice(WORDS) for _ in range(length))
        prompt = base.encode(text, raw=True)[:length]
        reference = base.generate(prompt, temperature=0, max_tokens=a.tokens).tokens
        for name, kv in SETTINGS.items():
            got = load(folder, **kv).generate(prompt, temperature=0, max_tokens=a.tokens).tokens
            same = [x == y for x, y in zip(got, reference)]
            first = same.index(False) if False in same else None
            rows.append({"prompt_tokens": length, "kv": name,
                         "agreement": round(sum(same) / len(reference), 3),
                         "first_difference": first})
            print(f"{length:>6} {name:>13}: {rows[-1]['agreement']:.3f} agree, first "
                  f"difference at {first}", flush=True)
    a.out.write_text(json.dumps({**header("bench/kv_agreement.py", "greedy tokens, one run "
                                          "per setting (deterministic)"),
                                 "shape": a.shape, "recipe": a.recipes, "tokens": a.tokens,
                                 "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
