"""The chat page in headless Chromium: drawing a long streamed reply (frame gaps and long
tasks while 20,000 pieces, about 20,000 tokens and 80,000 characters of Markdown, arrive),
and a long conversation (opening one of 500 messages, and how long Send blocks the page).

    python bench/chat_page.py [--pieces 20000] [--messages 500] [--old REV] [--runs N]

A stand-in server (tests/webpage.py's Scripted: the page's real server with fixed replies)
streams the pieces 10 ms apart; the page records every animation frame's time and every long
task (PerformanceObserver, > 50 ms). With --old REV the same run is made first with the
page's files as they were at REV (the server serves them from a copy), alternating old and
new --runs times. Issue 29's targets: no frame gap over 100 ms, and the last quarter's mean
frame gap within 2x the first quarter's (redraw time growing linearly with the reply); a
500-message conversation opens in <= 300 ms and Send blocks the page for <= 100 ms.

The conversation: --messages stored messages (questions, and answers of about 700 characters
of Markdown with a list and a code block), opened by a click on it in the sidebar from an
empty one; "open" is the time from the click to the next frame after the page drew it.
Then a message is sent; "send" is the time from pressing Enter to the next frame, and the
longest task while the reply streams. The stand-in server answers from the prompt's last 64
tokens (the conversation is past the test model's context).
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


ANSWER = ("Here is how to do it, step by step:\n\n- read the **input** file\n- parse each "
          "line and keep the `fields` you need\n- write the result\n\n```python\n"
          "with open(path) as f:\n    rows = [line.split(',') for line in f]\n```\n\n"
          "That is all: the loop is linear in the file's length, and $O(n)$ memory. ") * 2

TIMED = """
const done = arguments[0];
window.longTasks_ = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.longTasks_.push(e.duration);
}).observe({ type: "longtask" });
const t0 = performance.now();
ACTION;
requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0)));
"""


def conversation(n: int) -> list[dict]:
    out = []
    for i in range(n // 2):
        out += [{"role": "user", "content": f"Question {i}: how do I read a CSV file?"},
                {"role": "assistant", "content": f"Answer {i}. {ANSWER}"}]
    return out


def measure_conversation(model, web: Path, n: int) -> dict:
    from qwen_mlx.serve import page
    from tests.serving import MODEL, Running
    from tests.webpage import Scripted, connected, done, find, fresh, js, start_browser, wait

    page.WEB = web
    server = Running(Scripted(model, MODEL))
    server.server.last_tokens = 64
    browser = start_browser(Path(tempfile.mkdtemp()))
    try:
        fresh(browser, server.url)
        conv = {"id": "long", "title": "Long", "system": "", "messages": conversation(n),
                "created": 1, "updated": 1}
        js(browser, "localStorage.setItem('qwen-mlx.conversation.long', arguments[0]);"
                    "localStorage.setItem('qwen-mlx.conversations', arguments[1])",
           json.dumps(conv), json.dumps([{"id": "long", "title": "Long", "updated": 1}]))
        browser.get(server.url + "/")
        connected(browser)
        find(browser, "#new-chat").click()  # an empty conversation, then the long one
        wait(browser, lambda: js(browser, "return document.querySelectorAll('.message')"
                                          ".length") == 0)
        browser.set_script_timeout(120)
        opened = browser.execute_async_script(TIMED.replace(
            "ACTION", "[...document.querySelectorAll('#conversations .title')]"
                   ".find((b) => b.textContent === 'Long').click()"))
        open_tasks = js(browser, "return window.longTasks_")
        server.server.replies = [["Fine.", " Thanks."]]
        sent = browser.execute_async_script(TIMED.replace(
            "ACTION", "const box = document.getElementById('input'); box.value = 'And JSON?';"
                   "document.getElementById('composer').requestSubmit()"))
        wait(browser, lambda: done(browser) and js(
            browser, "return document.querySelector('.message.assistant:last-child')"
                     ".textContent.includes('Thanks')"))
        send_tasks = js(browser, "return window.longTasks_")
        stored = json.loads(js(browser, "return localStorage.getItem("
                                        "'qwen-mlx.conversation.long')"))
        assert len(stored["messages"]) == n + 2, len(stored["messages"])
    finally:
        browser.quit()
        server.stop()
    return {"messages": n, "open_ms": round(opened, 1),
            "open_longest_task_ms": round(max(open_tasks, default=0), 1),
            "send_ms": round(sent, 1),
            "send_longest_task_ms": round(max(send_tasks, default=0), 1)}


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
    ap.add_argument("--messages", type=int, default=500,
                    help="the long conversation's length (0: not measured)")
    ap.add_argument("--no-stream", action="store_true", help="skip the long reply")
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
    if a.old:  # recorded as the commit it names
        a.old = subprocess.run(["git", "rev-parse", "--short", a.old], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
        old = work / "web-old"
        old.mkdir()
        tar = subprocess.run(["git", "archive", a.old, "qwen_mlx/serve/web"], cwd=ROOT,
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "--strip-components=3", "-C", str(old)], input=tar,
                       check=True)
        webs = {"old": old, **webs}
    results: dict[str, list[dict]] = {name: [] for name in webs}
    long: dict[str, list[dict]] = {name: [] for name in webs}
    for _ in range(a.runs):
        for name, web in webs.items():  # alternated: old, new, old, new...
            if not a.no_stream:
                results[name].append(measure(model, web, a.pieces))
                print(name, results[name][-1], flush=True)
            if a.messages:
                long[name].append(measure_conversation(model, web, a.messages))
                print(name, long[name][-1], flush=True)
    medians = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for name, runs in long.items() if runs}
    record = {**header("bench/chat_page.py", f"headless Chromium; a long reply: {a.pieces} "
                       f"pieces of about 4 characters 10 ms apart from a stand-in server, "
                       f"animation frames and long tasks recorded by the page; a long "
                       f"conversation: {a.messages} stored messages opened from the sidebar, "
                       f"then one sent (times to the next frame, longest task); {a.runs} "
                       f"run(s) of each, alternated"
                       + (f"; old = the page at {a.old}" if a.old else "")),
              "pieces": a.pieces, "results": results,
              "conversation": {"runs": long, "medians": medians}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
