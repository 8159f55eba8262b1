"""Long-context memory and prefill speed: full-precision KV against 8-bit and 4-bit.

    python bench/long_context.py [--shape small] [--recipes q4-f32] [--contexts 1024,4096,16384]
                                 [--prefill-step 512]

For each KV setting and context length: load the model (its memory plan picks prefill
chunks), prefill a prompt of that many tokens, generate 8 tokens, and record prefill tok/s,
the KV cache's bytes, and MLX's peak memory for the run (reset after loading, so it counts
cache, activations and attention scores; weights are reported apart). Each setting runs in a
fresh process so peaks do not leak between them. Goal: peak at 16k with 4-bit KV <= 0.4x
the full-precision peak; reported both as the whole peak and as the peak above the resident
weights (what the context itself costs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

SETTINGS = {"full": {}, "kv8": {"kv_bits": 8, "kv_group_size": 32},
            "kv4": {"kv_bits": 4, "kv_group_size": 32}}


def measure(folder: str, setting: str, context: int, step: int) -> dict:
    """One measurement, run in this process (the child side)."""
    import random

    import mlx.core as mx

    from qwen_mlx import load
    from qwen_mlx.models.loader import param_bytes

    model = load(folder, prefill_step=step, **SETTINGS[setting])
    rng = random.Random(0)
    tokens = [rng.randrange(1000, 100_000) for _ in range(context)]
    cache = model.new_cache()
    mx.synchronize()
    mx.reset_peak_memory()
    start = time.perf_counter()
    out = model.generate(tokens, cache=cache, temperature=0, max_tokens=8)
    seconds = time.perf_counter() - start
    kv_bytes = sum(layer.nbytes for layer in cache.layers)
    return {"setting": setting, "context": context, "prefill_step": step,
            "prefill_tps": round(out.stats.prompt_tps, 1),
            "decode_tps": round(out.stats.generation_tps, 1), "seconds": round(seconds, 2),
            "kv_bytes": kv_bytes, "peak_bytes": mx.get_peak_memory(),
            "weights_bytes": param_bytes(model.net)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, folder, setting, context, step = sys.argv
        print(json.dumps(measure(folder, setting, int(context), int(step))))
        return
    ap = parser(__doc__, "long_context.json", "q4-f32")
    ap.add_argument("--contexts", default="1024,4096,16384")
    ap.add_argument("--prefill-step", type=int, default=512)
    a = ap.parse_args()
    folder = next(iter(converted(a.shape, a.recipes).values()))
    rows = []
    for context in map(int, a.contexts.split(",")):
        for setting in SETTINGS:
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), setting,
                                  str(context), str(a.prefill_step)], capture_output=True,
                                 text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{context:>6} {setting:>5}: prefill {row['prefill_tps']:8.1f} tok/s, "
                  f"KV {row['kv_bytes'] / 2**20:7.1f} MiB, peak {row['peak_bytes'] / 2**20:7.1f}"
                  f" MiB (weights {row['weights_bytes'] / 2**20:.1f} MiB)", flush=True)
    at = {r["setting"]: r for r in rows if r["context"] == max(x["context"] for x in rows)}
    ratios = {s: round(at[s]["peak_bytes"] / at["full"]["peak_bytes"], 3) for s in SETTINGS}
    # what the context costs: the peak above the resident weights (KV, activations, scores)
    above = {s: round((at[s]["peak_bytes"] - at[s]["weights_bytes"]) /
                      (at["full"]["peak_bytes"] - at["full"]["weights_bytes"]), 3)
             for s in SETTINGS}
    print(f"at {at['full']['context']} tokens, vs full precision: peak {ratios}, "
          f"peak above weights {above}")
    a.out.write_text(json.dumps({**header("bench/long_context.py", "one run per setting and "
                                          "context, each in a fresh process"),
                                 "shape": a.shape, "recipe": a.recipes, "rows": rows,
                                 "peak_ratio_at_longest": ratios,
                                 "peak_above_weights_ratio_at_longest": above}, indent=1) + "\n")


if __name__ == "__main__":
    main()
