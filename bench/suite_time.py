"""How long the test suite and its installs take here: what the suite's speed figures quote.

    python bench/suite_time.py suite [--clone | --cpu] [--out bench/results/suite_time.json]
    python bench/suite_time.py install [--reps 3] [--out bench/results/install_time.json]

``suite`` runs the README's test command's pytest (``python -m pytest -p no:random_order
--durations=0``) with this interpreter, or with ``--clone`` the whole of ``.ci/run`` in a
fresh ``git clone`` of this checkout's last commit (its venv and install included, and
``../shared`` beside it when there is one, as CI runs it), and
records the wall time, pytest's own time, the count of tests and the 20 slowest tests.
With ``--cpu`` (in this checkout) the plugin ``bench/suite_cpu.py`` also records every
test's CPU seconds (its worker's and the processes it waited for) beside its wall seconds:
the totals say how far the suite is bound by the machine's two cores.
``install`` times what `install.sh` and `bench/device_check.sh` do, a fresh virtual
environment and a pip install of the package from this checkout (from pip's cache), with
pip's byte-compiling of every installed file and with ``--no-compile``, alternated, and
records the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import header

ROOT = Path(__file__).resolve().parents[1]
DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+)")
SUMMARY = re.compile(r"(\d+) passed(?:, (\d+) skipped)?.* in ([\d.]+)s")


def suite(clone: bool, cpu: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if clone:
            repo = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
            if (ROOT.parent / "shared").is_dir():  # beside the clone, as CI has it
                os.symlink(ROOT.parent / "shared", Path(tmp) / "shared")
            cmd = ["bash", ".ci/run"]
            cwd, env = repo, {**os.environ, "CI": "true"}
        else:
            cmd = [sys.executable, "-m", "pytest", "-p", "no:random_order"]
            cwd, env = ROOT, dict(os.environ)
            if cpu:
                cmd += ["-p", "suite_cpu"]
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"),
                                                                  env.get("PYTHONPATH")]))
                env["SUITE_CPU_OUT"] = f"{tmp}/cpu"
        cmd = cmd if clone else cmd + ["--durations=0"]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        rows = [row for f in sorted(Path(f"{tmp}/cpu").glob("*.json"))
                for row in json.loads(f.read_text())] if cpu else []
    out = done.stdout.splitlines()
    found = [SUMMARY.search(line) for line in out]
    summary = next((m for m in reversed(found) if m), None)
    slowest = sorted(((float(m[1]), f"{m[3]} ({m[2]})") for m in map(DURATION.match, out)
                      if m), reverse=True)
    times = {"tests": len(rows), "wall_seconds": round(sum(r["wall"] for r in rows), 1),
             "cpu_seconds": round(sum(r["cpu"] for r in rows), 1),
             "most_cpu": sorted(rows, key=lambda r: -r["cpu"])[:20],
             "most_waiting": sorted(rows, key=lambda r: r["cpu"] - r["wall"])[:10]} \
        if cpu else None
    return {"command": " ".join(cmd), "cwd": "fresh git clone" if clone else str(ROOT),
            "exit_code": done.returncode, "wall_seconds": round(wall, 1),
            "pytest_seconds": float(summary[3]) if summary else None,
            "passed": int(summary[1]) if summary else None,
            "skipped": int(summary[2] or 0) if summary else None,
            "slowest": [{"seconds": s, "test": t} for s, t in slowest[:20]],
            **({"per_test_cpu": times} if times else {}), "tail": out[-3:]}


def install(reps: int) -> dict:
    extra = "[cpu]" if platform.system() == "Linux" else ""
    ways = {"pip default (byte-compiles)": [], "--no-compile": []}
    for rep in range(reps):
        order = list(ways) if rep % 2 == 0 else list(reversed(ways))
        for way in order:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "venv", f"{tmp}/venv"], check=True)
                flags = ["--no-compile"] if way == "--no-compile" else []
                subprocess.run([f"{tmp}/venv/bin/python", "-m", "pip", "install", "-q",
                                "--disable-pip-version-check", *flags, f"{ROOT}{extra}"],
                               check=True, capture_output=True)
                ways[way].append(time.perf_counter() - start)
    return {"package": f"qwen-mlx{extra} from this checkout (a built wheel, as install.sh)",
            "seconds": {w: [round(s, 1) for s in t] for w, t in ways.items()},
            "median_seconds": {w: round(statistics.median(t), 1) for w, t in ways.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["suite", "install"])
    ap.add_argument("--clone", action="store_true", help="suite: .ci/run in a fresh clone")
    ap.add_argument("--cpu", action="store_true",
                    help="suite: every test's CPU seconds beside its wall seconds")
    ap.add_argument("--reps", type=int, default=3, help="install: runs of each way")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.what == "suite":
        if a.clone and a.cpu:
            ap.error("--cpu runs in this checkout: not with --clone")
        how = ("one run of .ci/run (fresh venv, pip install -e '.[dev]', python -m pytest) "
               "in a fresh git clone, CI=true" if a.clone else
               "one run of python -m pytest -p no:random_order --durations=0 in this checkout"
               + (", with bench/suite_cpu.py's per-test CPU seconds" if a.cpu else ""))
        record = {**header("bench/suite_time.py", how), **suite(a.clone, a.cpu)}
        out = a.out or ROOT / "bench/results" / ("suite_time_clone.json" if a.clone else
                                                  "suite_cpu.json" if a.cpu else
                                                  "suite_time.json")
    else:
        record = {**header("bench/suite_time.py", f"median of {a.reps} alternated runs of "
                                                  "each way, pip's cache warm"),
                  **install(a.reps)}
        out = a.out or ROOT / "bench/results/install_time.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("slowest",)}, indent=2))


if __name__ == "__main__":
    main()
