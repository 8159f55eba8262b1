"""qwen-mlx against mlx-lm's stream_generate, same model, same prompt, one process.

    python bench/side_by_side.py [--shape small] [--reps 5] [--prompt-tokens 512]
                                 [--gen-tokens 128] [--out bench/results/side_by_side.json]

Builds a random-weight checkpoint (qwen_mlx.testing, needs the dev extra), converts it with
each recipe, then for each recipe and each sampling mode alternates the two engines
rep by rep (so drift in machine load hits both) and reports medians:

* prefill: seconds from the call to the first token, for a prompt of --prompt-tokens;
* decode: tokens per second after the first token, for --gen-tokens tokens.

Both sides get the same token ids and the same sampler settings. Run it on a quiet machine.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import mlx.core as mx
import mlx_lm
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import load as mlx_lm_load

import qwen_mlx
from qwen_mlx import load

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder

MODES = {"greedy": dict(temperature=0.0, top_p=1.0, top_k=0),
         "default sampling": dict(temperature=0.7, top_p=0.8, top_k=20)}


def time_stream(pieces) -> tuple[float, float, int]:
    """(seconds to first item, decode tok/s after it, items) for any token stream."""
    start = time.perf_counter()
    first, n = None, 0
    for _ in pieces:
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (n - 1) / (end - first), n


def run_mlx_lm(model, tokenizer, prompt, n, mode):
    s = MODES[mode]
    sampler = make_sampler(temp=s["temperature"], top_p=s["top_p"], top_k=s["top_k"])
    return time_stream(stream_generate(model, tokenizer, prompt, max_tokens=n, sampler=sampler))


def run_ours(model, prompt, n, mode):
    # Count tokens (not pieces): the last piece holds only stats.
    pieces = model.stream(prompt, max_tokens=n, seed=0, **MODES[mode])
    return time_stream(t for p in pieces for t in p.tokens)


def main() -> None:
    ap = parser(__doc__, "side_by_side.json", "q4-f32,q4")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    a = ap.parse_args()
    results = []
    for recipe_name, folder in converted(a.shape, a.recipes).items():
        ours = load(folder)
        theirs, tokenizer = mlx_lm_load(str(folder))
        words = "The quick brown fox jumps over the lazy dog while it rains. "
        prompt = ours.encode(words * (a.prompt_tokens // 10), raw=True)[:a.prompt_tokens]
        for mode in MODES:
            run_mlx_lm(theirs, tokenizer, prompt, 8, mode)  # warm-up both
            run_ours(ours, prompt, 8, mode)
            samples = {"mlx-lm": [], "qwen-mlx": []}
            for _ in range(a.reps):
                samples["mlx-lm"].append(run_mlx_lm(theirs, tokenizer, prompt, a.gen_tokens,
                                                    mode))
                samples["qwen-mlx"].append(run_ours(ours, prompt, a.gen_tokens, mode))
            row = {"recipe": recipe_name, "mode": mode}
            for side, runs in samples.items():
                row[side] = {"prefill_s": statistics.median(r[0] for r in runs),
                             "decode_tps": statistics.median(r[1] for r in runs),
                             "tokens": runs[0][2], "samples": runs}
            row["decode_ratio"] = row["qwen-mlx"]["decode_tps"] / row["mlx-lm"]["decode_tps"]
            row["prefill_time_ratio"] = row["qwen-mlx"]["prefill_s"] / row["mlx-lm"]["prefill_s"]
            results.append(row)
            print(f"{recipe_name:8s} {mode:17s} decode {row['qwen-mlx']['decode_tps']:7.1f} vs "
                  f"{row['mlx-lm']['decode_tps']:7.1f} tok/s (x{row['decode_ratio']:.2f})   "
                  f"prefill {row['qwen-mlx']['prefill_s'] * 1000:7.1f} vs "
                  f"{row['mlx-lm']['prefill_s'] * 1000:7.1f} ms "
                  f"(x{row['prefill_time_ratio']:.2f})", flush=True)
    record = {"machine": {"platform": platform.platform(), "processor": platform.machine(),
                          "device": str(mx.default_device())},
              "versions": {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
                           "qwen_mlx": qwen_mlx.__version__},
              "settings": vars(a) | {"out": str(a.out)}, "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
