"""The other APIs cost nothing per token: 8 concurrent streams over /v1/responses and
/v1/messages against the same 8 over /v1/chat/completions, and echo scoring against a
prefill of the same tokens.

    python bench/api_parity.py [--shape small] [--recipes q4-f32] [--clients 8]
                               [--tokens 64] [--reps 3] [--prompts 64] [--prompt-tokens 256]

One `qwen-mlx serve` (its own process) on a random checkpoint. Each repetition runs the three
APIs in an order that rotates between repetitions: --clients streamed requests at once
(different prompts, greedy, --tokens new tokens each: the random model never ends early),
aggregate tokens/s = the tokens each API reports made / the wall time. Then scoring: one
/v1/completions request with --prompts prompts of --prompt-tokens token ids each, ``echo``,
``logprobs: 1``, ``max_tokens: 0``, against the same prompts sent as --prompts concurrent
requests of ``max_tokens: 1`` (a prefill each, batched, and one token); tokens/s = prompt
tokens / wall, alternated. Figures are medians over repetitions; ratios are over medians.

On the CPU backend scoring is far slower than a prefill: a prefill never computes the
output layer for the prompt's rows (only the KV cache is evaluated), scoring must, and MLX's
CPU matmul for (rows x hidden) @ (hidden x 151,936) runs at about 1 GFLOPS here (256 rows at
hidden 256: 8 s; numbers from a one-off timing, not this script). The ratio that matters is
Metal's.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from pathlib import Path

import httpx

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402
from serve_batching import TOPICS, start  # noqa: E402


def stream(url: str, model: str, api: str, prompt: str, tokens: int) -> int:
    """One streamed request over ``api``: the tokens it says it made."""
    messages = [{"role": "user", "content": prompt}]
    path, body = {
        "chat": ("/v1/chat/completions", {"messages": messages, "max_tokens": tokens,
                                          "stream_options": {"include_usage": True}}),
        "responses": ("/v1/responses", {"input": prompt, "max_output_tokens": tokens}),
        "messages": ("/v1/messages", {"messages": messages, "max_tokens": tokens}),
    }[api]
    made = None
    with httpx.stream("POST", f"{url}{path}", json={"model": model, "temperature": 0,
                                                    "stream": True, **body},
                      timeout=600) as r:
        if r.status_code != 200:
            raise SystemExit(f"{api}: {r.status_code} {r.read().decode()[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if api == "chat" and data.get("usage"):
                made = data["usage"]["completion_tokens"]
            elif api == "responses" and data.get("type") in ("response.completed",
                                                             "response.incomplete"):
                made = data["response"]["usage"]["output_tokens"]
            elif api == "messages" and data.get("type") == "message_delta":
                made = data["usage"]["output_tokens"]
    return made or 0


def at_once(work) -> float:
    """Run the callables in ``work`` at once -> wall seconds."""
    threads = [threading.Thread(target=w) for w in work]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - begin


def streams(url: str, model: str, api: str, prompts: list[str], tokens: int) -> float:
    made = [0] * len(prompts)

    def go(i: int):
        return lambda: made.__setitem__(i, stream(url, model, api, prompts[i], tokens))

    wall = at_once([go(i) for i in range(len(prompts))])
    return sum(made) / wall


def scoring(url: str, model: str, prompts: list[list[int]]) -> dict:
    """Echo scoring in one request, and the same tokens prefilled (max_tokens 1 each)."""
    total = sum(len(p) for p in prompts)
    begin = time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": prompts, "echo": True,
                                                  "logprobs": 1, "max_tokens": 0},
                   timeout=1200)
    echo = time.perf_counter() - begin
    assert r.status_code == 200, r.text[:300]

    def go(p):
        return lambda: httpx.post(f"{url}/v1/completions", json={
            "model": model, "prompt": p, "max_tokens": 1, "temperature": 0}, timeout=1200)

    prefill = at_once([go(p) for p in prompts])
    return {"echo_tokens_per_s": total / echo, "prefill_tokens_per_s": total / prefill}


def main() -> None:
    ap = parser(__doc__, "api_parity.json", "q4-f32")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=256)  # on the CPU: 8 x 64 (above)
    ap.add_argument("--model", type=Path, help="a converted folder instead of a random one "
                                               "(bench/device_check.sh passes its 4B q4)")
    args = ap.parse_args()
    folder = args.model or next(iter(converted(args.shape, args.recipes).values()))
    proc, url = start("qwen-mlx", folder)
    try:
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]  # every request's
        prompts = [f"Write about {TOPICS[i % len(TOPICS)]}, part {i}." for i in
                   range(args.clients)]
        rng = random.Random(0)
        ids = [[rng.randrange(1000, 100_000) for _ in range(args.prompt_tokens)]
               for _ in range(args.prompts)]
        apis = ["chat", "responses", "messages"]
        rates = {api: [] for api in apis}
        scores = []
        for rep in range(args.reps):
            order = apis[rep % 3:] + apis[:rep % 3]
            for api in order:
                rates[api].append(streams(url, model, api, prompts, args.tokens))
            scores.append(scoring(url, model, ids))
            print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                f"{a} {rates[a][-1]:.1f} tok/s" for a in apis) +
                f"; echo {scores[-1]['echo_tokens_per_s']:.0f}, prefill "
                f"{scores[-1]['prefill_tokens_per_s']:.0f} tok/s", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    med = {api: statistics.median(v) for api, v in rates.items()}
    echo = statistics.median(s["echo_tokens_per_s"] for s in scores)
    prefill = statistics.median(s["prefill_tokens_per_s"] for s in scores)
    record = {**header("bench/api_parity.py", f"{args.reps} repetitions, API order rotated "
                       f"each repetition; {args.clients} concurrent streams of {args.tokens} "
                       f"tokens per API; scoring {args.prompts} prompts x {args.prompt_tokens} "
                       f"tokens, echo then prefill; medians"),
              "shape": args.shape, "recipe": args.recipes, "model": model,
              "streams_tokens_per_s": rates, "median_tokens_per_s": med,
              "responses_over_chat": med["responses"] / med["chat"],
              "messages_over_chat": med["messages"] / med["chat"],
              "scoring": scores, "echo_over_prefill": echo / prefill}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("median_tokens_per_s", "responses_over_chat",
                                             "messages_over_chat", "echo_over_prefill")},
                     indent=1))


if __name__ == "__main__":
    main()
