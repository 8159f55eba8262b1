"""The instrument's sanity check: KL against the source must rise as bits fall.

    python bench/quant_quality.py [--shape small] [--bits 8,6,5,4,3] [--tokens 1024]

Builds the small random checkpoint three times: plain, with an embedding of std 0.2
(``make_checkpoint(embed_std=0.2)``: logits of std about 3, as a trained model's, instead of
saturated ones) and with planted outlier input channels in its first layers
(``make_checkpoint(outliers=4)``: real LLMs have such channels, and they are what hurts
group-wise quantization); converts each with every --bits (groups of 64,
float32 scales: the CPU's arithmetic), and measures each conversion against its source
with `qwen-mlx eval`'s code on the built-in held-out text (--tokens tokens, 512-token
chunks). One run each: KL and top-1 are functions of the weights and the text, not of
machine load. KL is exact, over the whole vocabulary (quality.joint_pass). Goal: KL strictly ordered
q8 < q6 < q5 < q4 < q3 on every checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from checkpoints import parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

from qwen_mlx.evaluate import quality
from qwen_mlx.quant.convert import convert
from qwen_mlx.models.recipes import Recipe
from qwen_mlx.testing import make_checkpoint


def main() -> None:
    ap = parser(__doc__, "quant_quality.json", "")
    ap.add_argument("--bits", default="8,6,5,4,3")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--outliers", type=int, default=4)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-quant-quality-"))
    bits = [int(b) for b in a.bits.split(",")]
    results: dict[str, dict] = {}
    for label, kw in (("plain", {}), ("embedding std 0.2", {"embed_std": 0.2}),
                      (f"{a.outliers} outlier channels", {"outliers": a.outliers})):
        source = make_checkpoint(work / label.replace(" ", "-"), a.shape, **kw)
        parts = quality.prepare(source, source, quality.built_in_text(), limit=a.tokens)
        folders = []
        for b in bits:
            folders.append(work / f"{label.replace(' ', '-')}-q{b}")
            convert(source, folders[-1], Recipe(bits=b, dtype="float32"))
        rows = {}
        for b, q in zip(bits, quality.joint_pass(source, folders, parts)):
            rows[f"q{b}"] = q.to_dict()
            print(label, f"q{b}", q.line(), flush=True)
        kls = [rows[f"q{b}"]["kl_mean"] for b in sorted(bits, reverse=True)]
        results[label] = {"recipes": rows, "ordered": all(x < y for x, y in zip(kls, kls[1:]))}
    record = {**header("bench/quant_quality.py", f"one run per recipe; groups of 64, float32 "
                       f"scales; {a.tokens} tokens of the held-out set in 512-token chunks; "
                       "exact KL over the whole vocabulary (quality.joint_pass)"),
              "shape": a.shape, "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v["ordered"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
