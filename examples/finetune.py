"""Train LoRA adapters with the Python API, then chat with them.

    python examples/finetune.py MODEL DATA.jsonl OUT_DIR [ITERS]

The run is the same as `qwen-mlx finetune MODEL --data DATA.jsonl -o OUT_DIR --iters ITERS`:
``prepare`` checks the data, the output folder and memory, ``Run.train`` yields a report per
step and per validation (and writes checkpoints and metrics.jsonl as it goes).
"""

import sys

from qwen_mlx import load
from qwen_mlx.finetune import prepare
from qwen_mlx.finetune.trainer import StepReport, ValReport

model, data, out = sys.argv[1:4]
iters = int(sys.argv[4]) if len(sys.argv) > 4 else 100

run = prepare({"model": model, "data": data, "output": out, "iters": iters, "rank": 8})
print(f"{run.data.train} training examples; memory: {run.memory.describe()}")
for report in run.train():
    if isinstance(report, StepReport):
        print(f"step {report.step}/{report.steps}  loss {report.loss:.3f}  "
              f"{report.tokens_per_second:.0f} tok/s  eta {report.eta:.0f} s")
    elif isinstance(report, ValReport):
        print(f"validation loss {report.loss:.3f}")

tuned = load(model, adapter=out)
print(tuned.generate("Hello!", max_tokens=20, temperature=0.0).text)
