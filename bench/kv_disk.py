"""The disk tier for prompt caches: first token from disk against a cold prefill, and serving
throughput with the tier on against off.

    python bench/kv_disk.py [--shape small] [--recipes q4-f32] [--head 15900] [--document 32000]
                            [--reps 3] [--clients 8] [--only server,generate,clients]

Every run is a real process, as a user runs it (`qwen-mlx serve`, `qwen-mlx generate`), on
one random checkpoint; each tier folder is made for the run (QWEN_MLX_KV_DISK).

* server: a prompt of --head shared tokens and a new ~100-token tail, sent (streamed, one
  token) to a freshly started server: cold (an empty tier) and warm (a tier written by an
  earlier server's clean shutdown after a request with the same head and another tail),
  alternating which goes first. Figure: median warm / cold time to first token (goal <= 0.1).
* generate: `generate --file DOC -p Q --json` with a --document-token document, a first
  question in one process, then a second question in a new process on the same tier folder.
  Figure: median second / first time to first token, from the --json records (goal <= 0.1).
* clients: --clients concurrent clients, each sending 3 distinct ~1,100-token prompts (long
  enough to be written) for 32 tokens, against a server with --cache-slots 2 (so caches leave
  the pool, and are written, all the time), the tier on against --no-kv-disk, alternating.
  Figure: median on / off aggregate generated tokens/s (goal >= 0.97).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

WORDS = ("river stone light garden window paper music morning silver forest road ocean "
         "memory letter bridge winter candle story harbor mountain").split()


def text_of(tokens: int, seed: int) -> str:
    """About ``tokens`` tokens of words (one token each, with their space)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path, tier: Path | None, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **({"QWEN_MLX_KV_DISK": str(tier)} if tier else {})}
    cmd = [sys.executable, "-m", "qwen_mlx", "serve", str(folder), "--port", str(port),
           *(() if tier else ("--no-kv-disk",)), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(proc.stderr.read())
        time.sleep(0.25)
    raise SystemExit("the server did not start")


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C: a clean shutdown (the kept caches are written)."""
    proc.send_signal(signal.SIGINT)
    if proc.wait(600) != 0:
        raise SystemExit(proc.stderr.read()[-2000:])


def first_token(url: str, model: str, prompt: str) -> tuple[float, dict]:
    """Time to the first streamed token of a raw completion, and the request's usage."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start, first, usage = time.perf_counter(), None, {}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=3600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and event.get("choices") and event["choices"][0].get("text"):
                first = time.perf_counter() - start
            usage = event.get("usage") or usage
    return (first if first is not None else time.perf_counter() - start), usage


def server_runs(folder: Path, a, work: Path) -> dict:
    head = text_of(a.head, seed=1)
    tail = lambda n: " " + text_of(100, seed=100 + n)  # noqa: E731
    context = ["--context", str(a.head + 1024)]
    warm_tier = work / "warm"
    proc, url = serve(folder, warm_tier, *context)  # the earlier server that writes the head
    first_token(url, folder.name, head + tail(0))
    stop(proc)
    rows = []
    for rep in range(a.reps):
        order = ("cold", "warm") if rep % 2 == 0 else ("warm", "cold")
        row = {}
        for kind in order:
            tier = warm_tier if kind == "warm" else work / f"cold-{rep}"
            proc, url = serve(folder, tier, *context)
            seconds, usage = first_token(url, folder.name, head + tail(rep + 1))
            stop(proc)
            row[kind] = {"ttft_s": round(seconds, 3), "prompt_tokens": usage.get(
                "prompt_tokens"), "details": usage.get("prompt_tokens_details")}
        row["warm_over_cold"] = round(row["warm"]["ttft_s"] / row["cold"]["ttft_s"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"head_words": a.head, "runs": rows,
            "warm_over_cold": statistics.median(r["warm_over_cold"] for r in rows)}


def generate_runs(folder: Path, a, work: Path) -> dict:
    doc = work / "document.txt"
    doc.write_text(text_of(a.document, seed=2) + "\n")
    questions = ["What is the first word?", "Which word comes most often?"]
    rows = []
    earlier = json.loads(a.out.read_text())["generate"]["runs"] if a.second_again else None
    for rep in range(a.reps):
        tier = (a.second_again if earlier else work) / f"generate-{rep}"
        env = {**os.environ, "QWEN_MLX_KV_DISK": str(tier)}
        records = [earlier[rep]["first"]] if earlier else []
        for question in questions[len(records):]:
            out = subprocess.run([sys.executable, "-m", "qwen_mlx", "generate", str(folder),
                                  "--file", str(doc), "-p", question, "--json", "--max-tokens",
                                  "1", "--temp", "0", "--context", str(a.document + 1024)],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            record = json.loads(out.stdout.strip().splitlines()[-1])
            records.append({k: record[k] for k in ("prompt_tokens", "cached_tokens",
                                                   "disk_tokens", "prefill_tokens",
                                                   "time_to_first_token")})
        row = {"first": records[0], "second": records[1],
               "second_over_first": round(records[1]["time_to_first_token"] /
                                          records[0]["time_to_first_token"], 4)}
        if earlier:
            row["second_before"] = earlier[rep]["second"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"document_words": a.document, "runs": rows,
           "second_over_first": statistics.median(r["second_over_first"] for r in rows)}
    if earlier:
        out["second_again"] = (f"second questions measured again on {a.second_again}'s tier "
                               f"folders; first questions and second_before from the earlier "
                               f"run in {a.out.name}")
    return out


def client_runs(folder: Path, a, work: Path) -> dict:
    rows = []
    for rep in range(a.reps):
        order = ("on", "off") if rep % 2 == 0 else ("off", "on")
        row = {}
        for kind in order:
            tier = work / f"clients-{rep}" if kind == "on" else None
            proc, url = serve(folder, tier, "--cache-slots", "2", "--parallel",
                              str(a.clients))
            made = [0] * a.clients

            def client(i: int) -> None:
                for n in range(3):
                    body = {"model": folder.name, "max_tokens": 32, "temperature": 0,
                            "prompt": text_of(1100, seed=1000 * rep + 10 * i + n)}
                    r = httpx.post(f"{url}/v1/completions", json=body, timeout=3600)
                    made[i] += r.json()["usage"]["completion_tokens"]

            threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - start
            stop(proc)
            files = len(list(tier.glob("*/*.kv"))) if tier else 0
            row[kind] = {"tokens": sum(made), "seconds": round(seconds, 3),
                         "tokens_per_s": round(sum(made) / seconds, 3), "block_files": files}
        row["on_over_off"] = round(row["on"]["tokens_per_s"] / row["off"]["tokens_per_s"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"clients": a.clients, "runs": rows,
            "on_over_off": statistics.median(r["on_over_off"] for r in rows)}


def main() -> None:
    ap = parser(__doc__, "kv_disk.json", "q4-f32")
    ap.add_argument("--head", type=int, default=15900, help="shared words (tokens) of the "
                    "server's prompt")
    ap.add_argument("--document", type=int, default=32000, help="words of generate's document")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--only", default="server,generate,clients")
    ap.add_argument("--model", type=Path, help="an MLX folder instead of a random checkpoint")
    ap.add_argument("--second-again", type=Path, metavar="WORK", help="generate: measure the "
                    "second questions again on an earlier run's tier folders (WORK, with "
                    "--model its checkpoint), its first questions kept from --out")
    a = ap.parse_args()
    if a.second_again and not a.model:
        ap.error("--second-again needs --model: the checkpoint the earlier run wrote for")
    (folder,) = (a.model,) if a.model else converted(a.shape, a.recipes).values()
    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-kv-disk-"))
    out = {**header("bench/kv_disk.py", "real `qwen-mlx serve` and `qwen-mlx generate` "
                    "processes; each figure the median over --reps of a ratio measured in one "
                    "repetition (server and clients alternate which kind goes first)"),
           "shape": a.shape, "recipe": a.recipes}
    parts = {"server": server_runs, "generate": generate_runs, "clients": client_runs}
    if a.out.exists():  # parts not run now stay as an earlier run of this script left them
        earlier = json.loads(a.out.read_text())
        out.update({k: v for k, v in earlier.items() if k in parts})
    for name in a.only.split(","):
        out[name] = {**parts[name](folder, a, work),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2) + "\n")  # each part kept as it ends
    print(json.dumps({k: out[k] for k in parts if k in out}, indent=2))


if __name__ == "__main__":
    main()
