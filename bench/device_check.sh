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
# model's load from the cache < 2 s, embedding batched >= 1.0x one input at a time
# (256 x 128 and 16 x 4,096 tokens), the KV disk tier's first token <= 0.1x a cold prefill
# (a 16k prompt to a restarted server; a 32k document's second question in a new process)
# and 8 clients with it >= 0.97x without, and quantized KV batched: 8-bit >= 0.9x full
# precision's throughput, at <= 0.55x the bytes per token (4-bit <= 0.3x); exit 1 otherwise.
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
    kvdisk="--head 1100 --document 1100 --reps 1 --clients 2"
    # the tiny shape's head size (16) takes no KV group: the small shape's (32) does
    kvbatch="--clients 2 --tokens 4 --reps 1" kvsource="--shape small"
else
    shape=4b lengths=512,2048 depths=0,2048 gen=128 reps=3 turns=10 tokens=200 served=64
    parity="--clients 8 --tokens 64 --reps 3 --prompts 64 --prompt-tokens 256"
    embeds=256x128,16x4096
    kvdisk="--head 15900 --document 32000 --reps 3 --clients 8"
    kvbatch="--clients 8 --tokens 64 --reps 3" kvsource=""
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/qwen-mlx-device.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
kvsource=${kvsource:-"--model $work/q4"}
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
"$python" bench/kv_disk.py --model "$work/q4" $kvdisk --out "$out/kv_disk.json" >/dev/null
"$python" bench/kv_batch.py $kvsource $kvbatch --out "$out/kv_batch.json" >/dev/null
echo "wrote $out/bench.json, $out/chat_turns.json, $out/serve_batching.json," \
    "$out/api_parity.json, $out/speculative_draft.json, $out/speculative_lookup.json," \
    "$out/embed.json, $out/kv_disk.json and $out/kv_batch.json" >&2
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
disk = json.load(open(f"{out}/kv_disk.json"))
print(f"KV on disk: a 16k prompt's first token at {disk['server']['warm_over_cold']:.3f}x a "
      f"cold prefill, a 32k document's second question at "
      f"{disk['generate']['second_over_first']:.3f}x the first (goals 0.1x); 8 clients at "
      f"{disk['clients']['on_over_off']:.2f}x with the tier off (goal 0.97x)", file=sys.stderr)
kvb = json.load(open(f"{out}/kv_batch.json"))
per = {k: v["over_full"] for k, v in kvb["bytes_per_token"].items()}
print(f"quantized KV batched: 8-bit at {kvb['over_full']['8-bit']:.2f}x full precision's "
      f"throughput (goal 0.9x); bytes per token 8-bit {per['8-bit']:.2f}x, 4-bit "
      f"{per['4-bit']:.2f}x (goals 0.55x, 0.3x); 8-bit with --kv-start "
      f"{kvb['kv_start']} at {kvb['over_full']['8-bit start']:.2f}x (no goal)",
      file=sys.stderr)
sys.exit(0 if ratio >= 2.5 and lookup["speedup"] >= 1.5 and load < 2.0 and
         min(parity["responses_over_chat"], parity["messages_over_chat"]) >= 0.97 and
         parity["echo_over_prefill"] >= 0.9 and min(embed) >= 1.0 and
         disk["server"]["warm_over_cold"] <= 0.1 and
         disk["generate"]["second_over_first"] <= 0.1 and
         disk["clients"]["on_over_off"] >= 0.97 and kvb["over_full"]["8-bit"] >= 0.9 and
         per["8-bit"] <= 0.55 and per["4-bit"] <= 0.3 else 1)
EOF
fi
