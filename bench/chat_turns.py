"""Chat turn latency as the history grows: cache reuse against re-prefilling everything.

    python bench/chat_turns.py [--shape small] [--turns 10] [--words 150] [--reply-tokens 32]

Runs one conversation of --turns user messages of about 200 tokens each through a
ChatSession (the KV cache is reused across turns), then replays the very same prompts with an
empty cache each time (the naive baseline). Reports time to first token per turn and the
ratio turn N / turn 2 for both; the goal for the session is <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from qwen_mlx import load
from qwen_mlx.chat import ChatSession
from qwen_mlx.quantize import convert
from qwen_mlx.recipes import parse_recipe
from qwen_mlx.testing import make_checkpoint

WORDS = ("river stone light garden window paper music morning silver forest road "
         "ocean memory letter bridge winter candle story harbor mountain").split()


def message(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "?"


def ttft(pieces) -> float:
    start = time.perf_counter()
    for piece in pieces:
        if piece.tokens:
            return time.perf_counter() - start
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="small")
    ap.add_argument("--recipe", default="q4-f32")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--words", type=int, default=150, help="words per user message "
                    "(150 of these words make about 200 tokens)")
    ap.add_argument("--reply-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                    "chat_turns.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-chat-bench-"))
    folder = work / a.recipe
    convert(make_checkpoint(work / "hf", a.shape), folder, parse_recipe(a.recipe))
    model = load(folder)
    rng = random.Random(0)
    session = ChatSession(model, system="You are a helpful assistant.", temperature=0.0,
                          max_tokens=a.reply_tokens)
    reply = ChatSession(model).send("warm up")  # compile and allocate before measuring
    for _ in reply:
        pass
    rows, prompts = [], []
    for turn in range(1, a.turns + 1):
        text = message(rng, a.words)
        pieces = session.send(text)
        t = ttft(pieces)
        for _ in pieces:  # finish the reply so the transcript holds it
            pass
        st = session.last_stats
        prompts.append(session.model.encode(session.conversation()[:-1]))
        rows.append({"turn": turn, "prompt_tokens": st.prompt_tokens,
                     "prefilled": st.prefill_tokens, "session_ttft_s": t})
    for row, prompt in zip(rows, prompts):
        row["naive_ttft_s"] = ttft(model.stream(prompt, temperature=0.0, max_tokens=1))
        mx.clear_cache()
    for row in rows:
        print(f"turn {row['turn']:2d}: {row['prompt_tokens']:5d} prompt tokens, "
              f"{row['prefilled']:4d} prefilled; first token {row['session_ttft_s'] * 1000:7.1f} ms"
              f" (naive re-prefill {row['naive_ttft_s'] * 1000:7.1f} ms)")
    last = rows[-1]
    ratio = last["session_ttft_s"] / rows[1]["session_ttft_s"]
    naive = last["naive_ttft_s"] / rows[1]["naive_ttft_s"]
    print(f"turn {a.turns} / turn 2 time to first token: session x{ratio:.2f} (goal <= 1.2), "
          f"naive x{naive:.2f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"settings": vars(a) | {"out": str(a.out)}, "turns": rows,
                                 "session_ratio": ratio, "naive_ratio": naive}, indent=2) + "\n")


if __name__ == "__main__":
    main()
