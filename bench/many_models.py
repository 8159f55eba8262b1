"""One server, several models: switching between loaded models, loading one by name, and the
memory an unload gives back.

    python bench/many_models.py [--shape small] [--recipes q4-f32] [--reps 5] [--tokens 8]
                                [--out bench/results/many_models.json]

Two random checkpoints of ``--shape`` (seeds 0 and 1), converted with the recipe, are served
by one in-process server (the first as `qwen-mlx serve` starts with it, the second from its
catalog, as a cached model is). Each repetition streams, with prompts never sent before (no
prompt-cache help): a request to A then one to B (B's first token right after a switch),
and a request to B then another to B (B's own warm first token); the two orders alternate
between repetitions. Figures are medians; the ratio is switch / own. Then B is unloaded
(``keep_alive: 0``) and loaded again by name, three times: the load's time (from the
request to its first token, minus B's warm first token) and MLX's active memory before the
load, with B loaded, and after the unload (the process's own allocator, read in process).
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import httpx
import mlx.core as mx
import uvicorn

from checkpoints import converted, parser  # noqa: E402 - bench/ is a script folder
from provenance import header  # noqa: E402
from serve_batching import free_port, one  # noqa: E402

from qwen_mlx import load
from qwen_mlx.serve import Server
from qwen_mlx.serve.connections import uvicorn_config
from qwen_mlx.serve.fleet import Catalog, Fleet
from qwen_mlx.testing import make_checkpoint


def serving(first: Server) -> tuple[uvicorn.Server, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn_config(first, "127.0.0.1", port))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = parser(__doc__, "many_models.json", "q4-f32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=8)
    args = ap.parse_args()
    recipe = args.recipes.split(",")[0]
    a = converted(args.shape, recipe)[recipe]
    b_source = make_checkpoint(a.parent / "hf-b", args.shape, seed=1)
    from qwen_mlx.models.recipes import parse_recipe
    from qwen_mlx.quant.convert import convert

    b = a.parent / "b"
    convert(b_source, b, parse_recipe(recipe))
    first = Server(load(a), "A")
    first.fleet = Fleet(first, Catalog({"B": b}), lambda n, f: Server(load(f), n),
                        budget=1 << 62)
    uv, url = serving(first)
    count = iter(range(10**6))
    prompt = lambda: f"Request {next(count)}: tell me about the sea and its tides."  # noqa: E731
    ttft = lambda model: one(url, model, prompt(), args.tokens)["ttft"]  # noqa: E731
    try:
        ttft("A"), ttft("B"), ttft("B")  # both loaded and warm
        switch, own = [], []
        for rep in range(args.reps):
            pairs = [("A", switch), ("B", own)] if rep % 2 == 0 else [("B", own), ("A", switch)]
            for before, into in pairs:
                ttft(before)
                into.append(ttft("B"))
        loads = []
        for _ in range(3):
            httpx.post(f"{url}/api/generate", json={"model": "B", "keep_alive": 0}, timeout=60)
            while len(first.fleet.loaded) > 1:
                time.sleep(0.02)
            unloaded = mx.get_active_memory()
            started = time.perf_counter()
            httpx.post(f"{url}/api/generate", json={"model": "B"}, timeout=600)  # a load
            seconds = time.perf_counter() - started
            loaded = mx.get_active_memory()
            httpx.post(f"{url}/api/generate", json={"model": "B", "keep_alive": 0}, timeout=60)
            while len(first.fleet.loaded) > 1:
                time.sleep(0.02)
            loads.append({"load_seconds": seconds, "active_before": unloaded,
                          "active_loaded": loaded, "active_after": mx.get_active_memory()})
    finally:
        first.fleet.close()
        uv.should_exit = True
        first.worker.close()
    median_switch, median_own = statistics.median(switch), statistics.median(own)
    record = {
        **header("bench/many_models.py",
                 f"{args.reps} repetitions, orders alternated; first token of B after a "
                 f"request to A against after a request to B, new prompts each, medians; "
                 f"3 unload/load cycles of B with MLX active memory read in process"),
        "shape": args.shape, "recipe": recipe, "tokens": args.tokens,
        "switch_ttft": switch, "own_ttft": own,
        "median_switch_ttft": median_switch, "median_own_ttft": median_own,
        "switch_over_own": median_switch / median_own,
        "loads": loads,
        "after_over_before": max(r["active_after"] / r["active_before"] for r in loads),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"first token after a switch: {median_switch * 1e3:.1f} ms against "
          f"{median_own * 1e3:.1f} ms warm ({record['switch_over_own']:.2f}x); a load by "
          f"name {statistics.median(r['load_seconds'] for r in loads):.2f} s; active memory "
          f"after an unload at most {record['after_over_before']:.3f}x before -> {args.out}")


if __name__ == "__main__":
    main()
