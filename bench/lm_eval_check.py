"""lm-evaluation-harness scores log-likelihoods through `qwen-mlx serve`, and they are ours.

    python bench/lm_eval_check.py [--shape tiny] [--recipe q4-f32] [--venv .venv-lm-eval]
                                  [--batch-size 2] [--out bench/results/lm_eval_check.json]

lm-eval is heavy and pins its own dependencies, so it runs in a virtual environment of its
own (``--venv``, made with ``lm_eval[api]`` and transformers when it is missing; torch is
not needed for an API model). A random checkpoint is converted, served by `qwen-mlx serve`
(its own process), and lm-eval's ``local-completions`` model runs a small multiple-choice task
from a local JSONL file written here (nothing is downloaded): it sends ``echo: true,
logprobs: 1, max_tokens: 1`` with token-id prompts, ``--batch-size`` prompts per request.
Each log-likelihood lm-eval records is then computed again here, independently of the
server: ``mlx_lm.load`` of the same folder, one full forward over the token ids lm-eval
made (its own ``_encode_pair``), a log-softmax, the continuation's entries summed. The
result records both, the largest difference, and whether lm-eval's greedy flags agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from checkpoints import RESULTS, converted, parser  # noqa: E402 - bench/ is a script folder
from provenance import header  # noqa: E402
from serve_batching import start  # noqa: E402

LM_EVAL = "lm_eval[api]==0.4.13"
QUESTIONS = [
    ("The capital of France is", [" Paris", " London", " Rome"], 0),
    ("Water freezes at zero degrees", [" Celsius", " Fahrenheit", " Kelvin"], 0),
    ("The opposite of hot is", [" cold", " warm", " loud"], 0),
    ("A cat says", [" meow", " woof", " moo"], 0),
    ("Two plus two equals", [" four", " five", " three"], 0),
    ("The sun rises in the", [" east", " west", " north"], 0),
    ("Bees make", [" honey", " milk", " silk"], 0),
    ("The color of grass is", [" green", " blue", " red"], 0),
]

# Run with the lm-eval venv's python: the model and the task as a user sets them up, then
# each logged sample with the token ids lm-eval sent for it.
DRIVER = r"""
import json, sys
from lm_eval import simple_evaluate
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

args = json.load(sys.stdin)
lm = get_model("local-completions")(
    model=args["model"], base_url=args["base_url"], tokenizer=args["tokenizer"],
    tokenizer_backend="huggingface", tokenized_requests=True,
    batch_size=args["batch_size"], num_concurrent=1, max_retries=1)
out = simple_evaluate(model=lm, tasks=["qwen_mlx_check"], log_samples=True,
                      task_manager=TaskManager(include_path=args["tasks"]))
rows = []
for sample in out["samples"]["qwen_mlx_check"]:
    for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
        ctx, cont = lm._encode_pair(context, continuation)
        ll, greedy = resp[0]
        rows.append({"context": ctx, "continuation": cont, "loglikelihood": ll,
                     "is_greedy": greedy})
print(json.dumps({"acc": out["results"]["qwen_mlx_check"]["acc,none"], "rows": rows}))
"""


def lm_eval_python(venv: Path) -> Path:
    """The venv's python, made with lm-eval when it is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        LM_EVAL, "transformers"], check=True)
    return python


def task_folder(where: Path) -> Path:
    data = where / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in QUESTIONS))
    (where / "qwen_mlx_check.yaml").write_text(f"""task: qwen_mlx_check
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    return where


def independent(folder: Path, rows: list[dict]) -> list[dict]:
    """Each row's log-likelihood and greedy flag from mlx-lm, with no server in between."""
    import mlx.core as mx
    from mlx_lm import load

    net, _ = load(str(folder))
    out = []
    for row in rows:
        ids = row["context"] + row["continuation"]
        logits = net(mx.array(ids)[None])[0].astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        at = range(len(row["context"]), len(ids))
        picked = [logp[i - 1, ids[i]].item() for i in at]
        greedy = all(mx.argmax(logp[i - 1]).item() == ids[i] for i in at)
        out.append({"loglikelihood": sum(picked), "is_greedy": greedy})
    return out


def main() -> None:
    ap = parser(__doc__, "lm_eval_check.json", "q4-f32")
    ap.set_defaults(shape="tiny")
    ap.add_argument("--venv", type=Path, default=RESULTS.parents[1] / ".venv-lm-eval")
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    python = lm_eval_python(args.venv)
    version = subprocess.run([str(python), "-c", "import lm_eval; print(lm_eval.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    folder = converted(args.shape, args.recipes.split(",")[0])[args.recipes.split(",")[0]]
    proc, url = start("qwen-mlx", folder)
    try:
        name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            done = subprocess.run(
                [str(python), "-c", DRIVER], capture_output=True, text=True,
                input=json.dumps({"model": name, "base_url": f"{url}/v1/completions",
                                  "tokenizer": str(folder), "batch_size": args.batch_size,
                                  "tasks": str(task_folder(Path(tmp)))}),
                env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
            seconds = time.perf_counter() - began
    finally:
        proc.terminate()
        proc.wait(60)
    if done.returncode != 0:
        raise SystemExit(f"lm-eval failed:\n{done.stderr[-3000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = independent(folder, theirs["rows"])
    diffs = [abs(t["loglikelihood"] - o["loglikelihood"]) for t, o in zip(theirs["rows"], ours)]
    record = {
        **header("bench/lm_eval_check.py",
                 f"lm-eval {version} local-completions (tokenized requests, batch size "
                 f"{args.batch_size}) against qwen-mlx serve on a random {args.shape} "
                 f"checkpoint ({args.recipes}); each log-likelihood recomputed with "
                 "mlx_lm.load (one full forward, log-softmax, continuation summed)"),
        "lm_eval": version, "requests": len(diffs), "seconds": round(seconds, 1),
        "acc": theirs["acc"], "max_abs_difference": max(diffs),
        "equal_within_1e-4": max(diffs) <= 1e-4,
        "greedy_flags_agree": all(t["is_greedy"] == o["is_greedy"]
                                  for t, o in zip(theirs["rows"], ours)),
        "rows": [{"tokens": len(t["context"]) + len(t["continuation"]),
                  "continuation_tokens": len(t["continuation"]),
                  "lm_eval": t["loglikelihood"], "ours": o["loglikelihood"]}
                 for t, o in zip(theirs["rows"], ours)],
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['requests']} log-likelihoods from lm-eval {version}: largest difference "
          f"from mlx-lm {record['max_abs_difference']:.2e}, greedy flags agree: "
          f"{record['greedy_flags_agree']} -> {args.out}")
    sys.exit(0 if record["equal_within_1e-4"] and record["greedy_flags_agree"] else 1)


if __name__ == "__main__":
    main()
