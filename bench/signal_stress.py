"""How `qwen-mlx serve` ends on a signal, many times over: its exit code and what the
streaming client got, per phase (idle, right after a stream's first event, mid-stream) and
signal (SIGINT, SIGTERM). The suite runs each phase 5 times; this runs as many as asked.

    python bench/signal_stress.py [--runs 20] [--out bench/results/signal_stress.json]

A run: a fresh server on the small random checkpoint (q4, float32 scales; slow enough per
step that a signal lands while the engine computes), ``--shutdown-timeout 1``. Recorded per
run: the exit code, and for the streaming phases how the stream ended (``grace``: the last
event before ``[DONE]`` says ``shutting_down``, after the grace; ``done``: it ended on its
own; ``cut``: no ``[DONE]``) and the content events after the signal (0 means it was cut at
once instead of given the grace).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from provenance import header

PHASES = ["idle", "first event", "mid-stream"]
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(folder: Path) -> Path:
    from qwen_mlx.models.recipes import Recipe
    from qwen_mlx.quant.convert import convert
    from qwen_mlx.testing import make_checkpoint

    hf = make_checkpoint(folder / "hf", "small")
    convert(hf, folder / "model", Recipe(dtype="float32"))
    return folder / "model"


def start(model: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "qwen_mlx", "serve", str(model), "--port",
                             str(port), "--context", "2048", "--shutdown-timeout", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(proc.stderr.read())


def one_run(model: Path, phase: str, sig: int) -> dict:
    port = free_port()
    proc = start(model, port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": model.name, "messages": [{"role": "user", "content": "Go on"}],
            "max_tokens": 1900, "temperature": 0, "stream": True}
    out: dict = {}
    try:
        if phase == "idle":
            httpx.post(url, json={**body, "max_tokens": 4, "stream": False}, timeout=120)
            proc.send_signal(sig)
        else:
            with httpx.stream("POST", url, json=body, timeout=120) as r:
                lines = (line for line in r.iter_lines() if line)
                seen = 0
                for line in lines:
                    if '"content"' in line:
                        seen += 1
                    if (phase == "first event") or seen >= 8:
                        break
                proc.send_signal(sig)
                rest = list(lines)
            after = sum('"content"' in line for line in rest)
            if not rest or rest[-1] != "data: [DONE]":
                ending = "cut"
            elif len(rest) > 1 and '"shutting_down"' in rest[-2]:
                ending = "grace"
            else:
                ending = "done"
            out.update(ending=ending, content_events_after_signal=after)
        out["rc"] = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out["rc"] = "hung (killed after 60 s)"
    err = proc.stderr.read()
    if out["rc"] != 0:
        out["stderr_tail"] = err[-300:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/signal_stress.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp))
        runs = {f"{phase} / {name}": [] for phase in PHASES for name in SIGNALS}
        for i in range(args.runs):  # phases and signals alternated within each round
            for phase in PHASES:
                for name, sig in SIGNALS.items():
                    runs[f"{phase} / {name}"].append(one_run(model, phase, sig))
            print(f"round {i + 1}/{args.runs} done", file=sys.stderr)
    summary = {key: {"exit codes": dict(Counter(str(r["rc"]) for r in rs)),
                     **({"endings": dict(Counter(r["ending"] for r in rs)),
                         "cut at once (0 content events after the signal)":
                         sum(r["content_events_after_signal"] == 0 for r in rs)}
                        if rs and "ending" in rs[0] else {})}
               for key, rs in runs.items()}
    record = {**header("bench/signal_stress.py",
                       f"{args.runs} runs of each phase and signal, a fresh server each, "
                       "rounds alternating phases and signals; counts, not rates"),
              "summary": summary, "runs": runs}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
