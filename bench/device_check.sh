#!/usr/bin/env bash
# One command on whatever accelerator this machine has (Metal, an NVIDIA GPU via MLX's CUDA
# backend, or the CPU): build the random Qwen3-4B-shaped checkpoint, convert it to q4, run
# `qwen-mlx bench --compare mlx-lm` (prefill and decode at depths 0 and 2048), the
# chat-turn benchmark and the serving benchmark (8 concurrent streams against the same 8 one
# after another, beside mlx_lm.server), the APIs against each other (8 streams over
# /v1/responses and /v1/messages against /v1/chat/completions; echo scoring of 64 x 256
# tokens against their prefill), speculative decoding against plain (a draft: a random tiny
# Qwen3 of the same vocabulary; prompt lookup on a code edit that copies its input), and
# write results JSON. About 20 minutes on a GPU, where the check also requires 8 concurrent
# streams to reach >= 2.5x the sequential throughput, prompt lookup >= 1.5x plain decode,
# the other APIs >= 0.97x chat completions, echo scoring >= 0.9x a prefill, the q4
# model's load from the cache < 2 s and embedding batched >= 1.0x one input at a time
# (256 x 128 and 16 x 4,096 tokens; exit 1 otherwise).
#
#   bash bench/device_check.sh [--quick] [--out DIR] [--python PY]
#
# --quick   the tiny shape and short runs (minutes on a CPU; what the test suite runs)
# --out     where the JSON goes (default bench/results/device-<backend>)
# --python  an interpreter that already has qwen-mlx and its [bench] extra; without it a
#           virtual environment .venv-device is made with the right MLX backend and the
#           [bench] extra (the fixtures' tokenizer and the serving benchmark's httpx)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0 out="" python=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --out) out=$2; shift ;;
        --python) python=$2; shift ;;
        *) echo "usage: bash bench/device_check.sh [--quick] [--out DIR] [--python PY]" >&2
           exit 2 ;;
    esac
    shift
done

if [ "$(uname -s)" = Darwin ]; then
    backend=metal extra="bench"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    backend=cuda extra="cuda,bench"
else
    backend=cpu extra="cpu,bench"
fi
out=${out:-bench/results/device-$backend}
if [ -z "$python" ]; then
    python3 -m venv .venv-device
    .venv-device/bin/python -m pip install -q --no-compile --disable-pip-version-check -e ".[$extra]"
    python=.venv-device/bin/python
fi

if [ "$quick" = 1 ]; then
    shape=tiny lengths=64 depths=0,64 gen=8 reps=1 turns=3 tokens=32 served=16
    parity="--clients 2 --tokens 4 --reps 1 --prompts 2 --prompt-tokens 16" embeds=8x32,2x256
else
    shape=4b lengths=512,2048 depths=0,2048 gen=128 reps=3 turns=10 tokens=200 served=64
    parity="--clients 8 --tokens 64 --reps 3 --prompts 64 --prompt-tokens 256"
    embeds=256x128,16x4096
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/qwen-mlx-device.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
export QWEN_MLX_HOME="$work/home" HF_HUB_OFFLINE=1

echo "device check: $backend, $shape shape, results in $out" >&2
"$python" -m qwen_mlx.testing "$work/hf" --shape "$shape" >/dev/null
"$python" -m qwen_mlx convert "$work/hf" -o "$work/q4"
"$python" -m qwen_mlx.testing "$work/draft-hf" --shape tiny --seed 1 >/dev/null
"$python" -m qwen_mlx convert "$work/draft-hf" -o "$work/draft"
"$python" -m qwen_mlx bench "$work/q4" --compare mlx-lm --prompt-lengths "$lengths" \
    --depths "$depths" --gen-tokens "$gen" -n "$reps" --warmup 1 --json "$out/bench.json"
"$python" bench/chat_turns.py --model "$work/q4" --turns "$turns" --tokens "$tokens" \
    --reply-tokens 8 --reps "$reps" --out "$out/chat_turns.json"
"$python" bench/serve_batching.py --model "$work/q4" --clients 8 --tokens "$served" \
    --reps "$reps" --out "$out/serve_batching.json" >/dev/null
"$python" bench/api_parity.py --model "$work/q4" $parity --out "$out/api_parity.json" \
    >/dev/null
for how in "draft $work/draft" "lookup 4"; do
    set -- $how
    "$python" -m qwen_mlx bench "$work/q4" --prompt-lengths 16 --depths 0 --gen-tokens "$gen" \
        -n "$reps" --warmup 1 "--$1" "$2" --json "$out/speculative_$1.json"
done
"$python" -m qwen_mlx bench "$work/q4" --embed --embed-sets "$embeds" -n "$reps" \
    --json "$out/embed.json"
echo "wrote $out/bench.json, $out/chat_turns.json, $out/serve_batching.json," \
    "$out/api_parity.json, $out/speculative_draft.json, $out/speculative_lookup.json" \
    "and $out/embed.json" >&2
if [ "$backend" != cpu ]; then  # decode is bandwidth-bound on a GPU: batching must pay
    "$python" - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
ratio = json.load(open(f"{out}/serve_batching.json"))["summary"]["qwen-mlx"][
    "concurrent_over_sequential"]
print(f"serving: 8 concurrent streams at {ratio:.2f}x the sequential throughput (goal 2.5x)",
      file=sys.stderr)
lookup = json.load(open(f"{out}/speculative_lookup.json"))["results"][0]["speculative"]
print(f"prompt lookup: decode at {lookup['speedup']:.2f}x plain, "
      f"{lookup['acceptance_rate']:.0%} of proposals kept (goal 1.5x)", file=sys.stderr)
load = json.load(open(f"{out}/bench.json"))["results"][0]["load_seconds"]
print(f"loading the q4 model from the cache: {load:.2f} s (goal 2 s)", file=sys.stderr)
parity = json.load(open(f"{out}/api_parity.json"))
print(f"APIs: /v1/responses at {parity['responses_over_chat']:.2f}x and /v1/messages at "
      f"{parity['messages_over_chat']:.2f}x chat completions (goal 0.97x); echo scoring at "
      f"{parity['echo_over_prefill']:.2f}x a prefill (goal 0.9x)", file=sys.stderr)
embed = [s["batched_over_one_at_a_time"]
         for s in json.load(open(f"{out}/embed.json"))["results"][0]["sets"]]
print("embedding: batched at " + ", ".join(f"{r:.2f}x" for r in embed) +
      " one input at a time (goal 1.0x)", file=sys.stderr)
sys.exit(0 if ratio >= 2.5 and lookup["speedup"] >= 1.5 and load < 2.0 and
         min(parity["responses_over_chat"], parity["messages_over_chat"]) >= 0.97 and
         parity["echo_over_prefill"] >= 0.9 and min(embed) >= 1.0 else 1)
EOF
fi
