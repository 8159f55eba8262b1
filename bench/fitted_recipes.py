"""Fitted recipes against uniform ones: mixed bits under a size budget, and distillation.

    python bench/fitted_recipes.py [--shape small] [--tokens 1024] [--fit-tokens 1024]

For the small random checkpoint, plain and with planted outlier input channels
(``make_checkpoint(outliers=4)``), all with float32 scales (the CPU's arithmetic), groups
of 64: uniform q3 and q4; the mixed recipe at exactly uniform q4's size (``--max-size`` of
q4's bytes); the mixed recipe at "1.8 GB": the budget that sits where 1.8 GB sits between
Qwen3-4B's uniform q3 (1.760 GB) and q4 (2.263 GB), 8% of the way up from q3 (the small
checkpoint's float32 scales and huge embedding make bits per weight not comparable); and
the distilled recipe on q4 (``--dwq``, the same size as q4), and the error-corrected
(GPTQ) rounding it starts from (``--dwq`` with no epoch of training). The
sensitivities are measured once per checkpoint on the fit set (qwen_mlx/evaluate/text/fit/,
--fit-tokens of it) and spent on both budgets. Every model is scored against its source on
the held-out set (--tokens tokens, 512-token chunks; one reference pass). One run each: KL
is a function of the weights and the text, not of machine load.

Goals: mixed at q4's size <= 0.85x q4's KL; distilled <= 0.85x q4's KL and not above the
rounding it starts from; the "1.8 GB" mix ranked between q3 and q4 (or better).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from checkpoints import parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

from qwen_mlx.quant import distill

from qwen_mlx.quant import fitted

from qwen_mlx.quant import allocate as mixed_bits

from qwen_mlx.evaluate import quality
from qwen_mlx.models.checkpoint import Checkpoint
from qwen_mlx.quant.fitted import Fit
from qwen_mlx.models.sizes import planned_bytes, write_order
from qwen_mlx.quant.convert import convert
from qwen_mlx.models.recipes import Recipe
from qwen_mlx.testing import make_checkpoint



def budget_like_1_8gb(tensors: list) -> int:
    """Where 1.8 GB sits between Qwen3-4B's uniform q3 and q4, on these tensors."""
    from types import SimpleNamespace

    from qwen_mlx.models.shapes import expected_shapes
    from qwen_mlx.models.shapes import config_for

    real = [SimpleNamespace(name=n, shape=s)
            for n, s in sorted(expected_shapes(config_for("4b")).items())]
    q3, q4 = (planned_bytes(real, Recipe(bits=b)) for b in (3, 4))
    at = (1.8e9 - q3) / (q4 - q3)
    mine = [planned_bytes(tensors, Recipe(bits=b, dtype="float32")) for b in (3, 4)]
    return int(mine[0] + at * (mine[1] - mine[0]))


def main() -> None:
    ap = parser(__doc__, "fitted_recipes.json", "")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--fit-tokens", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=distill.EPOCHS)
    ap.add_argument("--outliers", type=int, default=4)
    ap.add_argument("--only", default="", help="plain or outliers: one checkpoint")
    ap.add_argument("--embed-std", type=float, default=1.0,
                    help="the checkpoints' embedding standard deviation (1: unit variance)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-fitted-"))
    base = Recipe(dtype="float32")
    fit = Fit(chunk=a.chunk, fit_tokens=a.fit_tokens, epochs=a.epochs)
    results: dict[str, dict] = {}
    embed = "" if a.embed_std == 1 else f", embedding std {a.embed_std:g}"
    for kind, outliers in (("plain", 0), (f"{a.outliers} outlier channels", a.outliers)):
        if a.only and not kind.startswith(a.only) and not (a.only == "outliers" and outliers):
            continue
        label = kind + embed
        tag = label.replace(" ", "-").replace(",", "")
        source = make_checkpoint(work / tag, a.shape, outliers=outliers,
                                 embed_std=a.embed_std)
        tensors = write_order(Checkpoint.open(source))
        t0 = time.perf_counter()
        costs = fitted.layer_costs(source, base, fit)
        sens_s = time.perf_counter() - t0
        recipes = {"q3": Recipe(bits=3, dtype="float32"), "q4": base}
        q4_bytes = planned_bytes(tensors, base)
        recipes["mix at q4 size"] = mixed_bits.allocate(
            tensors, base, costs, mixed_bits.Budget(f"{q4_bytes}b", max_bytes=q4_bytes))
        like = budget_like_1_8gb(tensors)
        recipes["mix like 1.8 GB"] = mixed_bits.allocate(
            tensors, base, costs, mixed_bits.Budget(f"{like}b", max_bytes=like))
        folders = {}
        for name, recipe in recipes.items():
            folders[name] = work / f"{tag}-{name.replace(' ', '-')}"
            convert(source, folders[name], recipe)
        t0 = time.perf_counter()
        fitted.fitted_convert(source, work / f"{tag}-dwq", base, replace(fit, distil=True))
        dwq_s = time.perf_counter() - t0
        folders["dwq q4"] = work / f"{tag}-dwq"
        # the error-corrected rounding the distillation starts from: no epoch of training
        fitted.fitted_convert(source, work / f"{tag}-gptq", base,
                              replace(fit, distil=True, epochs=0))
        folders["gptq q4"] = work / f"{tag}-gptq"
        parts = quality.prepare(source, source, quality.built_in_text(), limit=a.tokens)
        rows = {}
        scored = quality.joint_pass(source, list(folders.values()), parts)
        for (name, folder), q in zip(folders.items(), scored):
            disk = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
            rows[name] = {"bytes": disk, **q.to_dict()}
            if name.startswith("mix"):
                rows[name]["bits"] = mixed_bits.summary(recipes[name], tensors)
            print(label, name, disk, q.line(), flush=True)
        kl = {k: v["kl_mean"] for k, v in rows.items()}
        results[label] = {
            "recipes": rows, "sensitivity_seconds": round(sens_s, 1),
            "dwq_seconds": round(dwq_s, 1),
            "mix_vs_q4": kl["mix at q4 size"] / kl["q4"],
            "mix_not_larger": rows["mix at q4 size"]["bytes"] <= rows["q4"]["bytes"],
            "dwq_vs_q4": kl["dwq q4"] / kl["q4"],
            "dwq_vs_gptq": kl["dwq q4"] / kl["gptq q4"],
            "like_1_8gb_rank": ("between q3 and q4" if kl["q4"] < kl["mix like 1.8 GB"] < kl["q3"]
                                else "below q4" if kl["mix like 1.8 GB"] <= kl["q4"]
                                else "above q3")}
        print(json.dumps({k: v for k, v in results[label].items() if k != "recipes"}),
              flush=True)
    record = {**header("bench/fitted_recipes.py", f"one run per recipe; groups of 64, "
                       f"float32 scales; fit on {a.fit_tokens} tokens of the fit set in "
                       f"{a.chunk}-token chunks, dwq {a.epochs} epochs; scored on {a.tokens} "
                       f"tokens of the held-out set in 512-token chunks; exact KL over the "
                       f"whole vocabulary (quality.joint_pass)"),
              "shape": a.shape, "results": results}
    if a.out.is_file():  # one checkpoint at a time: keep the others' rows
        earlier = json.loads(a.out.read_text())
        kept = sorted(set(earlier["results"]) - set(results))
        results = {**earlier["results"], **results}
        record["results"] = results
        if kept:
            record["method"] += (f"; the rows of {', '.join(kept)} are kept from the file "
                                 f"of {earlier['created']} ({earlier['method']})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
