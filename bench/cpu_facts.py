"""Facts about MLX's CPU backend that the READMEs quote, measured here.

    python bench/cpu_facts.py [--reps 7] [--out bench/results/cpu_facts.json]

* bfloat16 against float32: one q4 (group 64) matrix-vector product of a Qwen3-4B-shaped
  MLP projection (9,728 x 2,560), scales and input in each type. Why the loader computes in
  float32 on the CPU backend.
* MLX's float32 matrix product (512 x 2,560 x 2,560) in GFLOP/s, against numpy's on the
  same shapes. Why absolute CPU numbers say little about a Mac.
* one attention layer of the small shape (8 heads of 32) for 211 new tokens over 461 and
  2,411 cached positions: why a chat turn's cost grows with the history on this backend.

Each figure is the median of ``--reps`` timed runs after one warm-up; the pairs compared
(bf16/f32, mlx/numpy, shallow/deep) are run alternately, rep by rep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from provenance import header


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(reps: int, **cases) -> dict[str, float]:
    """Median seconds of each case, run one after another within each rep."""
    for fn in cases.values():
        fn()  # warm-up
    samples = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            samples[name].append(timed(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def q4_matvec(dtype) -> callable:
    w = mx.random.normal((9728, 2560)).astype(dtype)
    wq, scales, biases = mx.quantize(w, group_size=64, bits=4)
    x = mx.random.normal((1, 2560)).astype(dtype)
    mx.eval(wq, scales, biases, x)
    return lambda: mx.eval(mx.quantized_matmul(x, wq, scales, biases, transpose=True,
                                               group_size=64, bits=4))


def matmul_pair() -> dict:
    a, b = np.random.rand(512, 2560).astype(np.float32), np.random.rand(2560, 2560).astype(
        np.float32)
    ma, mb = mx.array(a), mx.array(b)
    mx.eval(ma, mb)
    return {"mlx": lambda: mx.eval(ma @ mb), "numpy": lambda: a @ b}


def attention(depth: int, new: int = 211, heads: int = 8, kv_heads: int = 2, dim: int = 32):
    q = mx.random.normal((1, heads, new, dim))
    k = mx.random.normal((1, kv_heads, depth, dim))
    v = mx.random.normal((1, kv_heads, depth, dim))
    mx.eval(q, k, v)
    return lambda: mx.eval(mx.fast.scaled_dot_product_attention(q, k, v, scale=dim ** -0.5,
                                                                mask="causal"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "cpu_facts.json")
    a = ap.parse_args()
    mx.random.seed(0)
    dtypes = alternate(a.reps, bfloat16=q4_matvec(mx.bfloat16), float32=q4_matvec(mx.float32))
    products = alternate(a.reps, **matmul_pair())
    flops = 2 * 512 * 2560 * 2560
    depths = alternate(a.reps, **{"461": attention(461), "2411": attention(2411)})
    record = {**header("bench/cpu_facts.py", f"median of {a.reps} alternated runs after one "
                                            "warm-up each"),
              "q4_matvec_seconds": dtypes,
              "bf16_over_f32": round(dtypes["bfloat16"] / dtypes["float32"], 2),
              "matmul_512x2560x2560_gflops": {k: round(flops / v / 1e9, 2)
                                              for k, v in products.items()},
              "numpy_over_mlx": round(products["mlx"] / products["numpy"], 1),
              "attention_211_new_seconds": {"depth_461": depths["461"],
                                            "depth_2411": depths["2411"]}}
    print(json.dumps(record, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
