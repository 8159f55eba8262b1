"""Peak memory of `qwen-mlx eval` on Qwen3-4B's real widths (hidden 2560, 151,936-token
vocabulary), with only --layers decoder layers so it runs on a small machine.

    python bench/eval_memory.py [--layers 2] [--chunk 512] [--tokens 512]

Builds the random 4B-shaped checkpoint cut to --layers layers (bf16), converts it to q4, and
runs the evaluation of the q4 model against the bf16 source on the built-in held-out text,
recording MLX's peak memory of the joint pass (reference and model read lazily, layer by
layer: quality.joint_pass) against the weights of each model. The figures and the formula
for the full model go to bench/README.md.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from checkpoints import RESULTS  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

from qwen_mlx import quality
from qwen_mlx.loader import load_weights
from qwen_mlx.quantize import convert
from qwen_mlx.recipes import Recipe
from qwen_mlx.testing import make_checkpoint


def weight_bytes(net) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(net.parameters()))


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--out", type=Path, default=RESULTS / "eval_memory.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-eval-mem-"))
    source = make_checkpoint(work / "hf", "4b", config_overrides={"num_hidden_layers": a.layers})
    convert(source, work / "q4", Recipe())
    parts = quality.prepare(work / "q4", source, quality.built_in_text(), chunk=a.chunk,
                            limit=a.tokens)
    passes = {}
    for name, folder in (("reference", source), ("model", work / "q4")):
        net, _ = load_weights(folder)
        passes[name] = {"weights_bytes": weight_bytes(net)}
        del net
    mx.clear_cache()
    mx.reset_peak_memory()
    start = time.perf_counter()
    (result,) = quality.joint_pass(source, [work / "q4"], parts)
    passes["joint"] = {"peak_bytes": mx.get_peak_memory(),
                       "seconds": time.perf_counter() - start}
    record = {**header("bench/eval_memory.py", f"one run per pass; {a.layers} layers of "
                       f"Qwen3-4B's widths, chunk {a.chunk}, {a.tokens} tokens, MLX peak "
                       f"memory reset before the joint pass"),
              "layers": a.layers, "chunk": a.chunk, "rows": quality.ROWS,
              "passes": passes, "quality": result.to_dict()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(passes, indent=2))


if __name__ == "__main__":
    main()
