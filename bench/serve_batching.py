"""Serving many clients: 8 concurrent streams against the same 8 requests one after another,
for `qwen-mlx serve` and for mlx_lm.server, side by side.

    python bench/serve_batching.py [--shape small] [--recipes q4-f32] [--clients 8]
                                   [--tokens 64] [--reps 3] [--model FOLDER]

Both servers run (as their own processes) on the same converted checkpoint; only one is
measured at a time, and the order alternates between repetitions. Each repetition sends the
--clients requests (different prompts, greedy, --tokens new tokens each, streamed) first one
after another, then all at once, and records per request the time to first token and to
the end, the text, and the tokens made (from the usage the servers report). Figures are
medians over repetitions:

* ttft_over_lone: median time to first token under concurrency / the time one lone request
  takes to finish (goal <= 0.5: nobody waits for someone else's whole reply);
* concurrent_over_sequential: aggregate tokens/s, all at once / one after another (>= 1.0);
* texts_match: every concurrent text equals the same request's text served alone;
* logprobs_over_plain (qwen-mlx): aggregate tokens/s of the concurrent run with
  ``logprobs: true, top_logprobs: 5`` on every request / without (goal >= 0.9).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

TOPICS = ("rivers", "bridges", "winter", "music", "harbors", "gardens", "letters", "stone",
          "candles", "forests", "roads", "paper", "silver", "windows", "mountains", "clocks")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if name == "qwen-mlx":
        cmd = [sys.executable, "-m", "qwen_mlx", "serve", str(folder), "--port", str(port)]
    else:  # mlx-lm's server with its defaults (it batches up to 32 streams)
        cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(folder),
               "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/v1/models", timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{name} did not start")


LOGPROBS = {"logprobs": True, "top_logprobs": 5}


def one(url: str, model: str, prompt: str, tokens: int, extra: dict | None = None) -> dict:
    """One streamed request: time to first text, time to the end, text, tokens made."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **(extra or {})}
    start = time.perf_counter()
    first, parts, made = None, [], None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise SystemExit(f"{url}: {r.status_code} {r.read().decode()[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                made = data["usage"]["completion_tokens"]
            for choice in data.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    first = first or time.perf_counter() - start
                    parts.append(text)
    return {"ttft": first, "seconds": time.perf_counter() - start, "text": "".join(parts),
            "tokens": made}


def sequential(url: str, model: str, prompts: list[str], tokens: int) -> dict:
    start = time.perf_counter()
    runs = [one(url, model, p, tokens) for p in prompts]
    return {"wall": time.perf_counter() - start, "runs": runs}


def concurrent(url: str, model: str, prompts: list[str], tokens: int,
               extra: dict | None = None) -> dict:
    runs: list[dict | None] = [None] * len(prompts)

    def go(i: int) -> None:
        runs[i] = one(url, model, prompts[i], tokens, extra)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - start, "runs": runs}


def rate(r: dict) -> float:
    return sum(run["tokens"] or 0 for run in r["runs"]) / r["wall"]


def figures(seq: dict, conc: dict, with_logprobs: dict | None = None) -> dict:
    lone = statistics.median(run["seconds"] for run in seq["runs"])
    extra = {} if with_logprobs is None else {
        "concurrent_logprobs_tokens_per_s": rate(with_logprobs),
        "logprobs_texts_match": [a["text"] for a in conc["runs"]] ==
        [b["text"] for b in with_logprobs["runs"]]}
    return {**extra, "lone_request_seconds": lone,
            "concurrent_ttft_median": statistics.median(run["ttft"] for run in conc["runs"]),
            "concurrent_ttft_max": max(run["ttft"] for run in conc["runs"]),
            "sequential_tokens_per_s": rate(seq), "concurrent_tokens_per_s": rate(conc),
            "tokens": [run["tokens"] for run in conc["runs"]],
            "texts_match": [a["text"] for a in seq["runs"]] == [b["text"] for b in conc["runs"]]}


def main() -> None:
    ap = parser(__doc__, "serve_batching.json", "q4-f32")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--servers", default="qwen-mlx,mlx-lm")
    ap.add_argument("--model", type=Path, help="an MLX folder instead of a random checkpoint "
                    "(bench/device_check.sh passes its 4B conversion)")
    a = ap.parse_args()
    (folder,) = (a.model,) if a.model else converted(a.shape, a.recipes).values()
    prompts = [f"Write about {TOPICS[i % len(TOPICS)]}, part {i}." for i in range(a.clients)]
    names = a.servers.split(",")
    servers = {name: start(name, folder) for name in names}
    # the model as each server names it: ours by the folder's name, mlx-lm's by its path
    ids = {name: folder.name if name == "qwen-mlx" else str(folder) for name in names}
    samples: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for name, (_, url) in servers.items():  # warm up: compile, allocate
            concurrent(url, ids[name], prompts[:2], 8)
        for rep in range(a.reps):
            order = names if rep % 2 == 0 else names[::-1]
            for name in order:
                url = servers[name][1]
                seq = sequential(url, ids[name], prompts, a.tokens)
                if name == "qwen-mlx" and rep % 2:  # alternate which concurrent run is first
                    lp = concurrent(url, ids[name], prompts, a.tokens, LOGPROBS)
                    conc = concurrent(url, ids[name], prompts, a.tokens)
                else:
                    conc = concurrent(url, ids[name], prompts, a.tokens)
                    lp = concurrent(url, ids[name], prompts, a.tokens, LOGPROBS) \
                        if name == "qwen-mlx" else None
                samples[name].append(figures(seq, conc, lp))
                print(name, rep, {k: v for k, v in samples[name][-1].items() if k != "tokens"},
                      flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)

    def med(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    summary = {}
    for name in names:
        summary[name] = {
            "ttft_over_lone": med(name, "concurrent_ttft_median") /
            med(name, "lone_request_seconds"),
            "concurrent_over_sequential": med(name, "concurrent_tokens_per_s") /
            med(name, "sequential_tokens_per_s"),
            "concurrent_tokens_per_s": med(name, "concurrent_tokens_per_s"),
            "sequential_tokens_per_s": med(name, "sequential_tokens_per_s"),
            "lone_request_seconds": med(name, "lone_request_seconds"),
            "concurrent_ttft_median": med(name, "concurrent_ttft_median"),
            "texts_match": all(s["texts_match"] for s in samples[name])}
        if name == "qwen-mlx":
            summary[name]["logprobs_over_plain"] = \
                med(name, "concurrent_logprobs_tokens_per_s") / \
                med(name, "concurrent_tokens_per_s")
            summary[name]["logprobs_texts_match"] = all(s["logprobs_texts_match"]
                                                        for s in samples[name])
    if "qwen-mlx" in summary and "mlx-lm" in summary:
        summary["concurrent_qwen_mlx_over_mlx_lm"] = \
            summary["qwen-mlx"]["concurrent_tokens_per_s"] / \
            summary["mlx-lm"]["concurrent_tokens_per_s"]
    record = {**header("bench/serve_batching.py", f"{a.clients} streaming clients x "
                       f"{a.tokens} greedy tokens, all at once vs one after another on the "
                       f"same server process; {a.reps} repetitions alternating the server "
                       f"order; medians"),
              "checkpoint": {"shape": a.shape if not a.model else str(a.model),
                             "recipe": a.recipes}, "clients": a.clients, "tokens": a.tokens,
              "summary": summary, "samples": samples}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
