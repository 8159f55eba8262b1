"""The examples run as documented."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_stream_example_runs(tiny_q4_f32):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "stream.py"), str(tiny_q4_f32), "Hi"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.rstrip("\n").split("\n")[-1]
    assert re.fullmatch(r"\[\d+ tokens, [\d.]+ tok/s, first token after \d+ ms\]", last), last


def test_finetune_example_runs(tmp_path, tiny_f32):
    import json

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}", "completion": w}) + "\n"
                            for w in ("red", "green", "blue")))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "finetune.py"), str(tiny_f32),
                           str(data), str(tmp_path / "out"), "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("2 training examples; memory: ")
    assert re.fullmatch(r"validation loss [\d.]+", lines[1])
    assert re.fullmatch(r"step 1/2  loss [\d.]+  \d+ tok/s  eta \d+ s", lines[2])
    assert (tmp_path / "out" / "adapters.safetensors").is_file()
