"""Chat turn latency as the history grows: cache reuse against re-prefilling everything.

    python bench/chat_turns.py [--shape small] [--recipes q4-f32] [--turns 10] [--tokens 200] [--reply-tokens 32]
                               [--reps 3]

Runs a conversation of --turns user messages of 200 tokens each through a ChatSession
(the KV cache is reused across turns) --reps times, then replays the very same prompts with an
empty cache each time (the naive baseline). Reports the median time to first token per turn
and the ratio turn N / turn 2 for both; the goal for the session is <= 1.2.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import mlx.core as mx

from qwen_mlx import load
from qwen_mlx.chat import ChatSession

from checkpoints import converted, parser  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

WORDS = ("river stone light garden window paper music morning silver forest road "
         "ocean memory letter bridge winter candle story harbor mountain").split()


def message(rng: random.Random, model, tokens: int) -> str:
    """Random words cut to exactly ``tokens`` tokens, so every turn adds the same amount."""
    text = " ".join(rng.choice(WORDS) for _ in range(tokens))
    return model.decode(model.encode(text, raw=True)[:tokens])


def ttft(pieces) -> float:
    start = time.perf_counter()
    for piece in pieces:
        if piece.tokens:
            return time.perf_counter() - start
    return time.perf_counter() - start


def main() -> None:
    ap = parser(__doc__, "chat_turns.json", "q4-f32")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=200, help="tokens per user message")
    ap.add_argument("--reply-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", type=Path, help="an MLX folder to use instead of a random "
                    "checkpoint built now (bench/device_check.sh passes its 4B conversion)")
    a = ap.parse_args()
    (folder,) = (a.model,) if a.model else converted(a.shape, a.recipes).values()
    model = load(folder)
    # compile and allocate before measuring (a reply's length: a random model never ends one,
    # and the default 2,048 tokens took most of this script's time)
    reply = ChatSession(model, max_tokens=a.reply_tokens).send("warm up")
    for _ in reply:
        pass
    rows: list[dict] = []
    prompts: list[list[int]] = []
    for rep in range(a.reps):
        rng = random.Random(0)  # the same messages every repetition
        session = ChatSession(model, system="You are a helpful assistant.", temperature=0.0,
                              max_tokens=a.reply_tokens)
        for turn in range(a.turns):
            pieces = session.send(message(rng, model, a.tokens))
            t = ttft(pieces)
            for _ in pieces:  # finish the reply so the transcript holds it
                pass
            st = session.last_stats
            if rep == 0:
                prompts.append(session.model.encode(session.conversation()[:-1]))
                rows.append({"turn": turn + 1, "prompt_tokens": st.prompt_tokens,
                             "prefilled": st.prefill_tokens, "session_samples": []})
            rows[turn]["session_samples"].append(t)
    for row, prompt in zip(rows, prompts):
        row["naive_samples"] = [ttft(model.stream(prompt, temperature=0.0, max_tokens=1))
                                for _ in range(a.reps)]
        mx.clear_cache()
        row["session_ttft_s"] = statistics.median(row["session_samples"])
        row["naive_ttft_s"] = statistics.median(row["naive_samples"])
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
    record = {**header("bench/chat_turns.py", f"medians of {a.reps} runs of the conversation; "
                                              "the naive re-prefill after them"),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
              "turns": rows, "session_ratio": ratio, "naive_ratio": naive}
    a.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
