"""Quantized KV in the continuous batch: throughput of `--kv-bits 8|4` against full-precision
KV with many clients, and the KV bytes each cached token takes.

    python bench/kv_batch.py [--shape small] [--recipes q4-f32] [--clients 8] [--tokens 64]
                             [--reps 3] [--kv-start 32]

Throughput: `qwen-mlx serve --parallel N` processes, one KV setting at a time, --clients
concurrent streaming clients (different prompts, greedy, --tokens each); the settings'
order rotates between repetitions. Figure: median over repetitions of each quantized
setting's aggregate generated tokens/s over full precision's in the same repetition (goal
>= 0.9 for 8-bit). "8-bit start" is 8-bit with `--kv-start` (default 32: the clients' prompts
of about 15 tokens cross it while decoding, so every row's full-precision head and quantized
tail are both read). Every text is also compared with full precision's (they may differ:
quantized keys and values change the numbers) and the server's /health says every request
ran batched (``parallel``).

Bytes per token: a 1,024-token prompt prefilled into a cache of each setting in this
process (1,024 is a whole number of mlx-lm's 256-position growth steps, so capacity equals
use); the cache's measured nbytes / 1,024, and its ratio to full precision's (goals <= 0.55
for 8-bit, <= 0.3 for 4-bit). Checked against the arithmetic: layers x 2 x kv heads x head
size x (bits/8 + 2 x dtype bytes / group), and for "8-bit start" the start's tokens at full
precision and the rest at 8 bits, over 1,024.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import httpx

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from kv_disk import serve, stop  # noqa: E402
from provenance import header  # noqa: E402

SETTINGS = {"full": (), "8-bit": ("--kv-bits", "8"), "4-bit": ("--kv-bits", "4"),
            "8-bit start": ("--kv-bits", "8", "--kv-start")}  # its start: --kv-start


def group_for(folder: Path) -> int:
    """The product's default KV group (64), or 32 where the head size is smaller (the small
    random shape's is 32)."""
    config = json.loads((folder / "config.json").read_text())
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 64 if head % 64 == 0 else 32
TOPICS = ("rivers", "bridges", "winter", "music", "harbors", "gardens", "letters", "stone",
          "candles", "forests", "roads", "paper", "silver", "windows", "mountains", "clocks")


def clients(url: str, model: str, n: int, tokens: int) -> tuple[float, list[str], int]:
    texts, made = [""] * n, [0] * n

    def one(i: int) -> None:
        body = {"model": model, "max_tokens": tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Write about {TOPICS[i % 16]}."}]}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=3600) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if event.get("choices"):
                        texts[i] += event["choices"][0]["delta"].get("content") or ""
                    if event.get("usage"):
                        made[i] = event["usage"]["completion_tokens"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, texts, sum(made)


def bytes_per_token(folder: Path, group: int, start: int) -> dict:
    from qwen_mlx import load
    from qwen_mlx.models.shapes import Shape

    out = {}
    for name, bits, first in (("full", None, 0), ("8-bit", 8, 0), ("4-bit", 4, 0),
                              ("8-bit start", 8, start)):
        model = load(folder, kv_bits=bits, kv_group_size=group, kv_start=first, kv_disk=None)
        cache = model.new_cache()
        for _ in model.stream(list(range(1000, 2024)), cache=cache, max_tokens=1):
            pass
        cache.trim(1024)
        shape, kv = Shape.of(model.config), model.kv
        dtype = 4 if model.compute_dtype == "float32" else 2
        per = kv.bits / 8 + 2 * dtype / kv.group_size if kv.bits else dtype
        per = (first * dtype + (1024 - first) * per) / 1024
        out[name] = {"measured": cache.nbytes / 1024, "arithmetic": shape.layers * 2 *
                     shape.kv_heads * shape.head_dim * per, "offset": cache.offset}
    for row in out.values():
        row["over_full"] = round(row["measured"] / out["full"]["measured"], 4)
    return out


def main() -> None:
    ap = parser(__doc__, "kv_batch.json", "q4-f32")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kv-start", type=int, default=32)
    ap.add_argument("--model", type=Path, help="an MLX folder instead of a random checkpoint")
    a = ap.parse_args()
    (folder,) = (a.model,) if a.model else converted(a.shape, a.recipes).values()
    names = list(SETTINGS)
    group = group_for(folder)
    rows = []
    for rep in range(a.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        row = {}
        for name in order:
            quantized = ("--kv-group-size", str(group)) if SETTINGS[name] else ()
            start = (str(a.kv_start),) if name.endswith("start") else ()
            proc, url = serve(folder, None, "--parallel", str(a.clients), *SETTINGS[name],
                              *start, *quantized)
            health = httpx.get(f"{url}/health").json()
            clients(url, folder.name, 2, 4)  # warm up: compile, allocate
            seconds, texts, made = clients(url, folder.name, a.clients, a.tokens)
            stop(proc)
            row[name] = {"seconds": round(seconds, 3), "tokens": made,
                         "tokens_per_s": round(made / seconds, 3),
                         "parallel": health["parallel"], "texts": texts}
        for name in names[1:]:
            row[name]["over_full"] = round(row[name]["tokens_per_s"] /
                                           row["full"]["tokens_per_s"], 4)
            row[name]["texts_equal_full"] = sum(
                a == b for a, b in zip(row[name]["texts"], row["full"]["texts"]))
        rows.append(row)
        print(json.dumps({k: {m: v for m, v in r.items() if m != "texts"}
                          for k, r in row.items()}), flush=True)
    out = {**header("bench/kv_batch.py", "real `qwen-mlx serve --parallel N` processes, one "
                    "KV setting at a time in rotating order, N concurrent streaming clients; "
                    "medians over repetitions of ratios within one repetition; bytes per "
                    "token from a 1,024-token cache in this process"),
           "shape": a.shape, "recipe": a.recipes, "clients": a.clients, "tokens": a.tokens,
           "kv_group_size": group, "kv_start": a.kv_start, "runs": rows,
           "over_full": {name: statistics.median(r[name]["over_full"] for r in rows)
                         for name in names[1:]},
           "bytes_per_token": bytes_per_token(folder, group, a.kv_start)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"over_full": out["over_full"], "bytes_per_token":
                      out["bytes_per_token"]}, indent=2))


if __name__ == "__main__":
    main()
