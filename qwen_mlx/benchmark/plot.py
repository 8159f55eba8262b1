"""`qwen-mlx bench --plot`: decode tok/s against cache depth, and peak-memory bars. Optional:
matplotlib comes with the `plot` extra (pip install 'qwen-mlx[plot]')."""

from __future__ import annotations

import io


def plot(record: dict) -> bytes:
    """A PNG of a bench record (the --json document)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    results = record["results"]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        depths = [d["depth"] for d in r["decode"]]
        rates = [d["tokens_per_second"]["mean"] for d in r["decode"]]
        errors = [d["tokens_per_second"]["std"] for d in r["decode"]]
        speed.errorbar(depths, rates, yerr=errors, marker="o", capsize=3, label=r["name"])
    speed.set(xlabel="KV cache depth (tokens)", ylabel="decode tok/s",
              title=f"Decode speed, {record['machine']['chip']}")
    speed.set_ylim(bottom=0)
    speed.legend(fontsize=8)
    names = [r["name"] for r in results]
    bottom = [0.0] * len(results)
    for part in ("weights", "kv_cache", "other"):
        values = [r["memory"][part] / 1e9 for r in results]
        memory.barh(names, values, left=bottom, label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    memory.set(xlabel="peak memory (GB)", title="Peak memory")
    memory.legend(fontsize=8)
    memory.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()
