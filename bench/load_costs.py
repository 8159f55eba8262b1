"""Two costs the suite and the product pay on every run, measured here.

    python bench/load_costs.py [--reps 3] [--out bench/results/load_costs.json]

* Loading a tokenizer: mlx-lm's loader (Python parses the 11 MB tokenizer.json, then
  transformers builds it) against ``qwen_mlx.models.loader.load_tokenizer`` for a folder
  whose tokenizer files equal one already loaded (it is shared by content), and building
  the random checkpoints' tokenizer.json from the rank file (``qwen_mlx.testing``), uncached.
* ``finetune --local-ranks 2`` on the tiny checkpoint (24 steps): CPU seconds of the
  mlx.launch process and the run's wall time, with MLX's launcher as it is (its relay
  threads select on an always-writable pipe) and as ``qwen_mlx.finetune.launch`` runs it.

Medians of ``--reps`` runs; the pairs compared are run alternately, rep by rep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from provenance import header

ROWS = [(f"Code word {i}?", f"Word {i} is {w}.") for i, w in
        enumerate(["apple", "river", "stone", "cloud", "green", "sand", "rain", "moon"])]


def tokenizer_costs(folder: Path, reps: int) -> dict:
    from mlx_lm.utils import load_tokenizer as mlx_lm_tokenizer

    from qwen_mlx.models.loader import load_tokenizer
    from qwen_mlx.testing import tokenizer as fixture

    times = {"mlx_lm": [], "shared_by_content": [], "tokenizer_json_build": []}
    held = load_tokenizer(folder, [151645])  # the one a later load shares
    for _ in range(reps):
        start = time.perf_counter()
        mlx_lm_tokenizer(folder, eos_token_ids=[151645])
        times["mlx_lm"].append(time.perf_counter() - start)
        start = time.perf_counter()
        assert load_tokenizer(folder, [151645]) is held
        times["shared_by_content"].append(time.perf_counter() - start)
        start = time.perf_counter()
        fixture.tokenizer_json.__wrapped__()
        times["tokenizer_json_build"].append(time.perf_counter() - start)
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


def launcher_run(folder: Path, data: Path, calm: bool) -> tuple[float, float]:
    """(CPU seconds of the mlx.launch process, wall seconds) of one two-rank run."""
    from qwen_mlx.finetune import launch

    with tempfile.TemporaryDirectory() as out:
        cmd, _ = launch.command([str(folder), "--data", str(data), "-o", f"{out}/a",
                                 "--iters", "24", "--batch-size", "4", "--valid-split", "0"],
                                hostfile=None, local=2)
        if not calm:
            cmd[2] = cmd[2].split("import sys; from ", 1)[1]
            cmd[2] = "import sys; from " + cmd[2].replace(
                "\ncalm(sys.modules[", "\n_ = (sys.modules[")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        me, used = psutil.Process(proc.pid), 0.0
        while proc.poll() is None:
            try:
                t = me.cpu_times()
                used = t.user + t.system
            except psutil.Error:
                pass
            time.sleep(0.1)
        wall = time.perf_counter() - start
        proc.stdin.close()
        if proc.returncode != 0:
            raise SystemExit(f"the two-rank run failed ({proc.returncode})")
    return used, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "load_costs.json")
    a = ap.parse_args()
    from qwen_mlx.models.recipes import Recipe
    from qwen_mlx.quant.convert import convert
    from qwen_mlx.testing import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "f32"
        convert(make_checkpoint(Path(tmp) / "hf", "tiny"), folder,
                Recipe(bits=None, dtype="float32"))
        data = Path(tmp) / "d.jsonl"
        data.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": q}, {"role": "assistant", "content": r}]}) + "\n"
            for q, r in ROWS))
        tokens = tokenizer_costs(folder, a.reps)
        runs = {"mlx.launch as it is": [], "calmed (qwen-mlx)": []}
        for rep in range(a.reps):
            order = [False, True] if rep % 2 == 0 else [True, False]
            for calm in order:
                runs["calmed (qwen-mlx)" if calm else "mlx.launch as it is"].append(
                    launcher_run(folder, data, calm))
    record = {**header("bench/load_costs.py", f"median of {a.reps} runs; launcher runs "
                                              "alternated"),
              "tokenizer_seconds": tokens,
              "two_rank_finetune": {
                  how: {"launcher_cpu_seconds": round(statistics.median(r[0] for r in v), 2),
                        "wall_seconds": round(statistics.median(r[1] for r in v), 2)}
                  for how, v in runs.items()}}
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
