"""qwen-mlx finetune on 1 rank against 2 ranks on this machine (ring backend over
loopback): training tokens/s, each rank's peak memory, and the time in collectives.

    python bench/finetune_ranks.py [--shape small] [--recipes f32] [--iters 12]
                                   [--batch-size 8] [--repeats 3]

Both runs train the same checkpoint on the same synthetic chat data (bench/finetune.py's)
with the same global batch, through the CLI (`qwen-mlx finetune`, and `--local-ranks 2` for
two ranks), alternating which goes first, ``--repeats`` times; medians. Speed is input
tokens (padding excluded) per second of training time as rank 0 logs it (metrics.jsonl,
first step included); the collective time is rank 0's, waiting for the other rank
included. On a 2-core machine two ranks share the cores one rank's BLAS already uses, so
this measures the overhead of the split, not the speed-up of a second Mac.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from finetune import write_dataset  # noqa: E402
from provenance import header  # noqa: E402


def train(model: Path, data: Path, iters: int, batch: int, ranks: int) -> dict:
    out = Path(tempfile.mkdtemp()) / "adapter"
    cmd = [sys.executable, "-m", "qwen_mlx", "finetune", str(model), "--data", str(data),
           "-o", str(out), "--iters", str(iters), "--batch-size", str(batch),
           "--valid-split", "0", "--lr", "1e-4", "--save-every", str(10 ** 6)]
    if ranks > 1:
        cmd += ["--local-ranks", str(ranks)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    last = steps[-1]
    return {"tokens_per_second": last["tokens_per_second"], "seconds": last["seconds"],
            "rank_peaks": last.get("rank_peaks", [last["peak_memory"]]),
            "comm_seconds_per_step": last.get("comm_seconds", 0.0) / len(steps),
            "step_seconds": last["seconds"] / len(steps),
            "losses": [s["loss"] for s in steps]}


LINKS = {  # usable bytes/s assumed: 90% of 10 GbE, 60% of Thunderbolt (its IP bridge)
    "10 GbE": 10e9 / 8 * 0.9, "Thunderbolt 4 (40 Gb/s)": 40e9 / 8 * 0.6,
    "Thunderbolt 5 (80 Gb/s)": 80e9 / 8 * 0.6}
STEP_SECONDS = (0.5, 2.0, 8.0)  # one Mac's step on Qwen3-4B (QLoRA; batch and length decide)


def on_paper() -> dict:
    """Expected speed-up for 2-4 Macs: a ring all_sum moves 2(N-1)/N of the gradient per
    rank, the gradient being the LoRA adapter's in float32 (Qwen3-4B, default settings);
    speed-up = N * t_step / (t_step + t_comm)."""
    from qwen_mlx.finetune.config import TrainConfig
    from qwen_mlx.finetune.run import lora_parameter_count
    from qwen_mlx.models.shapes import Shape
    from qwen_mlx.models.shapes import config_for

    grad = lora_parameter_count(Shape.of(config_for("4b")), TrainConfig()) * 4
    table = {}
    for link, rate in LINKS.items():
        for n in (2, 3, 4):
            comm = 2 * (n - 1) / n * grad / rate
            table[f"{link}, {n} Macs"] = {
                "comm_seconds": round(comm, 4),
                **{f"speedup at {t:g} s/step": round(n * t / (t + comm), 2)
                   for t in STEP_SECONDS}}
    return {"gradient_bytes": grad, "links_bytes_per_second": LINKS, "table": table}


def main() -> None:
    ap = parser(__doc__, "finetune_ranks.json", "f32")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    model = next(iter(converted(a.shape, a.recipes).values()))
    data = write_dataset(Path(tempfile.mkdtemp()) / "train.jsonl", a.examples)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for rep in range(a.repeats):
        for ranks in ((1, 2) if rep % 2 == 0 else (2, 1)):
            runs[ranks].append(train(model, data, a.iters, a.batch_size, ranks))
            print(ranks, json.dumps({k: v for k, v in runs[ranks][-1].items()
                                     if k != "losses"}), flush=True)

    def median(ranks: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[ranks])

    summary = {
        str(n): {"tokens_per_second": median(n, "tokens_per_second"),
                 "step_seconds": median(n, "step_seconds"),
                 "comm_seconds_per_step": median(n, "comm_seconds_per_step"),
                 "rank_peak_bytes": [statistics.median(r["rank_peaks"][i] for r in runs[n])
                                     for i in range(n)]}
        for n in runs}
    summary["two_over_one_tokens_per_second"] = (summary["2"]["tokens_per_second"]
                                                 / summary["1"]["tokens_per_second"])
    summary["largest_loss_difference"] = max(
        abs(x - y) / abs(y) for r1, r2 in zip(runs[1], runs[2])
        for x, y in zip(r2["losses"], r1["losses"]))
    record = {**header("bench/finetune_ranks.py",
                       f"{a.repeats} repetitions alternating which goes first, medians; "
                       f"{a.shape} checkpoint ({a.recipes}), {a.examples} synthetic chats, "
                       f"global batch {a.batch_size}, {a.iters} steps; 2 ranks over loopback "
                       f"(ring backend) via --local-ranks 2"),
              "shape": a.shape, "summary": summary, "on_paper": on_paper(), "runs": {str(k): v for k, v in runs.items()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
