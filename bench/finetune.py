"""qwen-mlx finetune against mlx-lm's LoRA trainer (its Python API): training tokens/s and
peak memory on the same checkpoint, data and settings.

    python bench/finetune.py [--shape small] [--recipes q4-f32] [--iters 10] [--batch-size 4]
                             [--out bench/results/finetune.json]

Builds a random-weight checkpoint (qwen_mlx.testing, needs the dev extra) and a synthetic
chat dataset (two user/assistant exchanges per conversation, seeded), then trains each
engine in a fresh process, so one's memory never counts in the other's peak:

* qwen-mlx, through ``qwen_mlx.finetune.prepare`` / ``Run.train``;
* mlx-lm, through ``mlx_lm.tuner``: ``linear_to_lora_layers``, ``ChatDataset``,
  ``trainer.train``, with the same rank, scale, layers, keys, optimizer (Adam), learning
  rate, batch size, iterations and maximum length.

Two pairings: every token trained (mlx-lm's default; ours with --train-on-all), and only the
replies (ours: every assistant turn; mlx-lm's --mask-prompt masks all but the last turn,
so it trains fewer tokens than ours there). Speed is input tokens (padding excluded) per
second of training wall time, first step included; memory is MLX's peak and the process's
peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder

WORDS = ("the model reads a long file and writes short notes about every part of it while "
         "keeping track of names dates places numbers and small details that matter later "
         "when someone asks a question about what happened first or why a change was made "
         "in the code the tests the build or the plan for next week").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_dataset(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            messages = []
            for _turn in range(2):
                messages.append({"role": "user", "content": sentence(rng, rng.randint(10, 30))})
                messages.append({"role": "assistant",
                                 "content": sentence(rng, rng.randint(15, 45))})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker_ours(model: str, data: Path, iters: int, batch: int, all_tokens: bool) -> dict:
    import mlx.core as mx

    from qwen_mlx.finetune import prepare
    from qwen_mlx.finetune.trainer import StepReport

    out = Path(tempfile.mkdtemp()) / "adapter"
    run = prepare({"model": model, "data": str(data), "output": str(out), "iters": iters,
                   "batch_size": batch, "lr": 1e-4, "valid_split": 0.0,
                   "train_on_all": all_tokens, "save_every": 10 ** 9})
    mx.reset_peak_memory()
    tokens = targets = 0
    losses = []
    start = time.perf_counter()
    for report in run.train():
        if isinstance(report, StepReport):
            tokens += report.tokens
            targets += report.targets
            losses.append(report.loss)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "trained_tokens": targets,
            "losses": losses, "mlx_peak": mx.get_peak_memory(), "peak_rss": peak_rss()}


def worker_mlx_lm(model: str, data: Path, iters: int, batch: int, all_tokens: bool) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, iterate_batches, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    net, tokenizer = load(model)
    net.freeze()
    mx.random.seed(0)
    linear_to_lora_layers(net, len(net.layers), {"rank": 8, "scale": 2.0, "dropout": 0.0})
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = CacheDataset(ChatDataset(rows, tokenizer, mask_prompt=not all_tokens))
    counted = {"tokens": 0}

    def counting(*args, **kwargs):
        for batch_ids, lengths in iterate_batches(*args, **kwargs):
            counted["tokens"] += int(lengths[:, 1].sum().item()) - len(lengths)
            yield batch_ids, lengths

    class Losses(TrainingCallback):
        def __init__(self):
            self.values, self.trained = [], 0

        def on_train_loss_report(self, info):
            self.values.append(info["train_loss"])
            self.trained = info["trained_tokens"]

    losses = Losses()
    args = TrainingArgs(batch_size=batch, iters=iters, steps_per_report=1,
                        steps_per_eval=10 ** 9, steps_per_save=10 ** 9, max_seq_length=2048,
                        adapter_file=str(Path(tempfile.mkdtemp()) / "adapters.safetensors"))
    mx.reset_peak_memory()
    start = time.perf_counter()
    train(net, optim.Adam(learning_rate=1e-4), dataset, None, args=args,
          iterate_batches=counting, training_callback=losses)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": counted["tokens"], "trained_tokens": losses.trained,
            "losses": losses.values, "mlx_peak": mx.get_peak_memory(), "peak_rss": peak_rss()}


def run_worker(engine: str, model: Path, data: Path, iters: int, batch: int,
               all_tokens: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--model", str(model), "--data",
           str(data), "--iters", str(iters), "--batch-size", str(batch)]
    cmd += ["--all-tokens"] if all_tokens else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = parser(__doc__, "finetune.json", "q4-f32")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--worker", choices=["ours", "mlx-lm"], help=argparse.SUPPRESS)
    ap.add_argument("--model")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--all-tokens", action="store_true")
    args = ap.parse_args()
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_mlx_lm
        print(json.dumps(fn(args.model, args.data, args.iters, args.batch_size,
                            args.all_tokens)))
        return

    import mlx.core as mx
    import mlx_lm

    import qwen_mlx

    results = {"machine": platform.platform(), "mlx": mx.__version__,
               "mlx_lm": mlx_lm.__version__, "qwen_mlx": qwen_mlx.__version__,
               "shape": args.shape, "iters": args.iters, "batch_size": args.batch_size,
               "examples": args.examples, "runs": []}
    for recipe, folder in converted(args.shape, args.recipes).items():
        data = write_dataset(folder.parent / "train.jsonl", args.examples)
        for all_tokens in (True, False):
            pair = {}
            for engine in ("ours", "mlx-lm"):
                pair[engine] = run_worker(engine, folder, data, args.iters, args.batch_size,
                                          all_tokens)
                r = pair[engine]
                print(f"{recipe} {'all tokens' if all_tokens else 'replies only'} {engine}: "
                      f"{r['tokens'] / r['seconds']:.1f} tok/s, {r['seconds']:.1f} s, "
                      f"MLX peak {r['mlx_peak'] / 1e6:.0f} MB, RSS {r['peak_rss'] / 1e6:.0f} "
                      f"MB, trained tokens {r['trained_tokens']}", flush=True)
            ours, theirs = pair["ours"], pair["mlx-lm"]
            pair["speed_ratio"] = (ours["tokens"] / ours["seconds"]) / \
                (theirs["tokens"] / theirs["seconds"])
            pair["mlx_peak_ratio"] = ours["mlx_peak"] / theirs["mlx_peak"]
            pair["rss_ratio"] = ours["peak_rss"] / theirs["peak_rss"]
            results["runs"].append({"recipe": recipe, "all_tokens": all_tokens, **pair})
            print(f"  speed x{pair['speed_ratio']:.2f}, MLX peak x{pair['mlx_peak_ratio']:.2f},"
                  f" RSS x{pair['rss_ratio']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
