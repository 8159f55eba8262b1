"""Peak memory of `qwen-mlx convert` with its default quality pass against `--no-eval`, on
Qwen3-4B's real widths (hidden 2560, MLP 9728, 151,936-token vocabulary), with only
--layers decoder layers so the pass finishes on a small CPU machine.

    python bench/eval_memory.py [--layers 2] [--tokens 512]

Builds the random 4B-shaped checkpoint cut to --layers layers (bf16) and converts it to q4
twice, each run in its own process with its peak RSS from GNU time (%M): once with
--no-eval, once with the quality pass forced (--force-eval: on the CPU the probe would skip
it). The pass reads both models layer by layer and the vocabulary-sized tensors in slices
(quality.joint_pass, vocab_rows.py), so its peak does not grow with the depth: the figures
hold for the 36-layer model. Issue 27's target: the peak with the pass <= the peak without
it + 0.3 GB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkpoints import RESULTS  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

from qwen_mlx.testing import make_checkpoint


def peak_rss(cmd: list[str]) -> dict:
    """Seconds and peak RSS (bytes) of one process; its output's last line kept."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    lines = proc.stderr.strip().splitlines()
    return {"seconds": round(time.perf_counter() - start, 1),
            "peak_rss_bytes": int(lines[-1]) * 1024,
            "quality_line": next((line for line in proc.stdout.splitlines() + lines
                                  if line.lstrip().startswith(("quality", "KL"))), None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--out", type=Path, default=RESULTS / "eval_memory.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-eval-mem-"))
    try:
        source = make_checkpoint(work / "hf", "4b",
                                 config_overrides={"num_hidden_layers": a.layers})
        convert = [sys.executable, "-m", "qwen_mlx", "convert", str(source), "--q4"]
        runs = {"no_eval": peak_rss(convert + ["-o", str(work / "a"), "--no-eval"])}
        print("no eval", runs["no_eval"], flush=True)
        runs["eval"] = peak_rss(convert + ["-o", str(work / "b"), "--force-eval", "--chunk",
                                           str(a.tokens), "--eval-tokens", str(a.tokens)])
        print("eval   ", runs["eval"], flush=True)
        quality = json.loads((work / "b" / "quality.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    extra = runs["eval"]["peak_rss_bytes"] - runs["no_eval"]["peak_rss_bytes"]
    record = {**header("bench/eval_memory.py", f"one run of each, each `qwen-mlx convert "
                       f"--q4` in its own process, peak RSS from GNU time; {a.layers} layers "
                       f"of Qwen3-4B's widths, the pass on {a.tokens} tokens in one chunk"),
              "layers": a.layers, "tokens": a.tokens, "runs": runs,
              "extra_peak_bytes": extra, "target_extra_bytes": 300_000_000,
              "meets_target": extra <= 300_000_000, "quality": quality}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("runs", "extra_peak_bytes", "meets_target")},
                     indent=2))


if __name__ == "__main__":
    main()
