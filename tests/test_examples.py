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
