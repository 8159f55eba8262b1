"""The chat page drawing a long streamed reply, in headless Chromium: frame gaps and long
tasks while 20,000 pieces (about 20,000 tokens, 80,000 characters of Markdown) arrive.

    python bench/chat_page.py [--pieces 20000] [--old REV]

A stand-in server (tests/webpage.py's Scripted: the page's real server with fixed replies)
streams the pieces 10 ms apart; the page records every animation frame's time and every long
task (PerformanceObserver, > 50 ms). With --old REV the same run is made first with the
page's files as they were at REV (the server serves them from a copy), alternating old and
new --runs times. Issue 29's targets: no frame gap over 100 ms, and the last quarter's mean
frame gap within 2x the first quarter's (redraw time growing linearly with the reply).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test harness: the stand-in server and the browser

from checkpoints import RESULTS  # noqa: E402 - bench/ is run as a script folder
from provenance import header  # noqa: E402

BLOCKS = [
    "Here is a paragraph with **bold**, `code` and a [link](https://example.com). ",
    "It goes on for a while, as long answers do, with words and more words.\n\n",
    "- a point in a list\n- another point, a little longer than the first\n\n",
    "```python\ndef f(x):\n    return x * 2  # doubled\n```\n\n",
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n",
    "A formula $e^{i\\pi} + 1 = 0$ inline, then more text.\n\n",
]

RECORDER = """
window.frames_ = []; window.longTasks_ = [];
const tick = (t) => { window.frames_.push(t); requestAnimationFrame(tick); };
requestAnimationFrame(tick);
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.longTasks_.push(e.duration);
}).observe({ type: "longtask", buffered: false });
"""


def pieces(n: int) -> list[str]:
    """``n`` pieces of about 4 characters, cut from the repeated Markdown blocks."""
    text = ""
    while len(text) < 4 * n:
        text += "".join(BLOCKS)
    return [text[i:i + 4] for i in range(0, 4 * n, 4)]


def measure(model, web: Path, n: int) -> dict:
    from qwen_mlx.serve import page
    from tests.serving import MODEL, Running
    from tests.webpage import Scripted, done, fresh, js, start_browser, type_message, wait

    page.WEB = web
    server = Running(Scripted(model, MODEL))
    browser = start_browser(Path(tempfile.mkdtemp()))
    try:
        fresh(browser, server.url)
        server.server.replies = [pieces(n)]
        js(browser, RECORDER)
        type_message(browser, "Write at length")
        wait(browser, lambda: not done(browser), timeout=30)
        wait(browser, lambda: done(browser), timeout=3600)
        frames = js(browser, "return window.frames_")
        tasks = js(browser, "return window.longTasks_")
    finally:
        browser.quit()
        server.stop()
    gaps = [b - a for a, b in zip(frames, frames[1:])]
    quarter = len(gaps) // 4
    first, last = statistics.mean(gaps[:quarter]), statistics.mean(gaps[-quarter:])
    return {"frames": len(frames), "max_gap_ms": round(max(gaps), 1),
            "first_quarter_mean_gap_ms": round(first, 2),
            "last_quarter_mean_gap_ms": round(last, 2),
            "growth": round(last / first, 2),
            "long_tasks": len(tasks), "longest_task_ms": round(max(tasks, default=0), 1),
            "long_task_ms_total": round(sum(tasks), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces", type=int, default=20000)
    ap.add_argument("--old", help="a git revision whose page files to measure too")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "chat_page.json")
    a = ap.parse_args()
    from qwen_mlx import load
    from qwen_mlx.quant.convert import convert
    from qwen_mlx.models.recipes import Recipe
    from qwen_mlx.testing import make_checkpoint

    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-page-"))
    source = make_checkpoint(work / "hf", "tiny")
    convert(source, work / "q4", Recipe(dtype="float32"))
    model = load(work / "q4", context=1024)
    webs = {"new": ROOT / "qwen_mlx" / "serve" / "web"}
    if a.old:
        old = work / "web-old"
        old.mkdir()
        tar = subprocess.run(["git", "archive", a.old, "qwen_mlx/serve/web"], cwd=ROOT,
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "--strip-components=3", "-C", str(old)], input=tar,
                       check=True)
        webs = {"old": old, **webs}
    results: dict[str, list[dict]] = {name: [] for name in webs}
    for _ in range(a.runs):
        for name, web in webs.items():  # alternated: old, new, old, new...
            results[name].append(measure(model, web, a.pieces))
            print(name, results[name][-1], flush=True)
    record = {**header("bench/chat_page.py", f"headless Chromium, {a.pieces} pieces of about "
                       f"4 characters 10 ms apart from a stand-in server; animation frames "
                       f"and long tasks recorded by the page; {a.runs} run(s) of each, "
                       f"alternated" + (f"; old = the page at {a.old}" if a.old else "")),
              "pieces": a.pieces, "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
