"""bench/device_check.sh, the one command a GPU machine runs, at its --quick size on the CPU:
it builds, converts, benchmarks against mlx-lm, times chat turns and serves 8 concurrent
streams beside mlx_lm.server, compares the APIs, runs speculative decoding (a draft,
prompt lookup) against plain and measures embedding, writing seven JSONs. Run as a user
runs it: without --python, so it makes its own virtual environment (.venv-device) with the
[bench] extra (a fresh checkout's once lacked the serving benchmark's httpx)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_quick_writes_every_result(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QWEN_MLX_HOME"}
    result = subprocess.run(["bash", "bench/device_check.sh", "--quick", "--out",
                             str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    # (pip may warn before it, about this machine's package index settings)
    assert f"device check: cpu, tiny shape, results in {tmp_path}" in \
        result.stderr.splitlines()
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [r["engine"] for r in bench["results"]] == ["qwen-mlx", "mlx-lm"]
    assert [d["depth"] for d in bench["results"][0]["decode"]] == [0, 64]
    assert set(bench["comparisons"][0]["decode"]) == {"0", "64"}
    turns = json.loads((tmp_path / "chat_turns.json").read_text())
    assert turns["script"] == "bench/chat_turns.py" and len(turns["turns"]) == 3
    assert turns["versions"]["mlx"] and turns["machine"]["cores"] >= 1
    served = json.loads((tmp_path / "serve_batching.json").read_text())
    assert served["clients"] == 8 and served["tokens"] == 16
    assert set(served["summary"]) == {"qwen-mlx", "mlx-lm", "concurrent_qwen_mlx_over_mlx_lm"}
    assert served["summary"]["qwen-mlx"]["texts_match"]
    parity = json.loads((tmp_path / "api_parity.json").read_text())
    assert parity["script"] == "bench/api_parity.py" and parity["echo_over_prefill"] > 0
    assert set(parity["median_tokens_per_s"]) == {"chat", "responses", "messages"}
    embedded = json.loads((tmp_path / "embed.json").read_text())
    sets = embedded["results"][0]["sets"]
    assert [(s["inputs"], s["tokens"]) for s in sets] == [(8, 32), (2, 256)]
    assert all(s["memory"]["peak"] > 0 and s["memory"]["estimate"] for s in sets)
    for how in ("draft", "lookup"):
        spec = json.loads((tmp_path / f"speculative_{how}.json").read_text())
        run = spec["results"][0]["speculative"]
        assert run["method"] == how and run["identical"] and run["generated"] == 9
        assert run["tokens_per_forward"] >= 1.0 and 0 <= run["acceptance_rate"] <= 1
    disk = json.loads((tmp_path / "kv_disk.json").read_text())
    assert disk["script"] == "bench/kv_disk.py"
    warm = disk["server"]["runs"][0]["warm"]
    # the warm server read every whole block of the shared head from disk
    assert warm["details"]["disk_cached_tokens"] == warm["details"]["cached_tokens"] >= 1024
    second = disk["generate"]["runs"][0]["second"]
    assert second["disk_tokens"] == second["cached_tokens"] >= 1024
    assert disk["clients"]["runs"][0]["on"]["block_files"] > 0
    assert disk["clients"]["runs"][0]["off"]["block_files"] == 0
    batch = json.loads((tmp_path / "kv_batch.json").read_text())
    assert [batch["runs"][0][k]["parallel"] for k in ("full", "8-bit", "4-bit", "8-bit start")] \
        == [2, 2, 2, 2]  # every setting batched, --kv-start's too
    assert 0 < batch["bytes_per_token"]["4-bit"]["over_full"] < \
        batch["bytes_per_token"]["8-bit"]["over_full"] < \
        batch["bytes_per_token"]["8-bit start"]["over_full"] < 1
