"""Peak memory of `qwen-mlx convert` against mlx-lm's convert, on a 4B-shaped checkpoint.

    python bench/convert_memory.py [--src DIR] [--work DIR] [--out bench/results/convert_memory.json]

Builds (once, ~8 GB, several minutes; never in CI) a random-weight checkpoint with the real
Qwen3-4B shape, sharded like Qwen's release, then converts it to q4 g64 twice, each in its
own process: `python -m qwen_mlx convert` and mlx-lm's `convert()` Python API. Peak RSS of
each process comes from /usr/bin/time (GNU time's %M). The two outputs are compared tensor
by tensor: they must be bit-identical.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import header


def measure(cmd: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1])
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_kb // 1024}


def same_weights(a: Path, b: Path) -> bool:
    import mlx.core as mx

    def table(folder):
        out = {}
        for f in sorted(folder.glob("model*.safetensors")):
            out.update(mx.load(str(f)))
        return out

    ta, tb = table(a), table(b)
    return ta.keys() == tb.keys() and all(mx.array_equal(ta[k], tb[k]).item() for k in ta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, help="an existing 4b-shape checkpoint")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qwen-mlx-4b")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "convert_memory.json")
    a = ap.parse_args()
    src = a.src or a.work / "hf"
    if not (src / "config.json").is_file():
        print(f"building the 4b-shape checkpoint in {src} ...", flush=True)
        subprocess.run([sys.executable, "-m", "qwen_mlx.testing", str(src), "--shape", "4b",
                        "--shard-gb", "3.7"], check=True)  # Qwen ships 3 shards
    ours_out, theirs_out = a.work / "q4-qwen-mlx", a.work / "q4-mlx-lm"
    for d in (ours_out, theirs_out):
        shutil.rmtree(d, ignore_errors=True)
    ours = measure([sys.executable, "-m", "qwen_mlx", "convert", str(src), "-o", str(ours_out)])
    print("qwen-mlx", ours, flush=True)
    theirs = measure([sys.executable, "-c", "import sys; from mlx_lm import convert; "
                      "convert(sys.argv[1], sys.argv[2], quantize=True, q_group_size=64, "
                      "q_bits=4)", str(src), str(theirs_out)])
    print("mlx-lm  ", theirs, flush=True)
    record = {**header("bench/convert_memory.py", "one run of each converter, each in its "
                                                "own process; peak RSS from GNU time"),
              "source_gb": round(sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e9,
                                 2),
              "qwen_mlx": ours, "mlx_lm": theirs,
              "peak_rss_ratio": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3),
              "bit_identical_weights": same_weights(ours_out, theirs_out)}
    print(json.dumps(record, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
