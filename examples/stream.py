"""Stream a reply with the Python API.

    python examples/stream.py                      # the default model (downloads once)
    python examples/stream.py path/to/model "Hi"   # any folder, repo id or alias
"""

import sys

from qwen_mlx import load

model = load(sys.argv[1] if len(sys.argv) > 1 else None)
prompt = sys.argv[2] if len(sys.argv) > 2 else "Explain unified memory in two sentences."
messages = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": prompt}]

for piece in model.stream(messages, max_tokens=200):
    print(piece.text, end="", flush=True)
    if piece.stats:  # the last piece carries the statistics
        s = piece.stats
        print(f"\n[{s.generated_tokens} tokens, {s.generation_tps:.1f} tok/s, "
              f"first token after {s.time_to_first_token * 1000:.0f} ms]")
