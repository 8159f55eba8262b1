"""The chat page's test harness: Chromium through Selenium, a scripted server whose replies
are fixed text, and the page's moves (type, wait, read what it stored).

Chromium and chromedriver are Debian's packages; without them the browser tests skip
(``needs_chromium``) and `.ci/run` installs both so CI always runs them. Screenshots go to
the test's folder, and to $QWEN_MLX_SCREENSHOTS when it is set (how examples/screenshots/
in the README was made; the Chinese line needs Debian's fonts-noto-cjk).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from qwen_mlx.engine import Stats
from qwen_mlx.serve import Server
from qwen_mlx.serve.server import Delta, Outcome


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Chromium and its driver: apt-get install chromium chromium-driver")


# A reply that shows the page's rendering: thinking, math, a table, code, CJK text (the
# README's screenshots).
SHOWCASE = (
    "<think>\nThe user wants a comparison; a table and a short example will do.\n</think>\n\n"
    "**MLX** keeps weights in unified memory, so a 4B model at 4 bits needs about "
    "$2.3\\,\\text{GB}$.\n\n"
    "| recipe | bits/weight | size |\n|---|---:|---:|\n| q8 | 8.5 | 4.3 GB |\n"
    "| q4 | 4.5 | 2.3 GB |\n| mixed | 3.6 | 1.8 GB |\n\n"
    "```python\nfrom qwen_mlx import load\n\nmodel = load()\n"
    "print(model.generate(\"你好\").text)\n```\n\n"
    "通义千问在本机运行，数据不离开你的电脑。")


class Scripted(Server):
    """A server whose replies are fixed: each request takes the next script from
    ``replies`` (text pieces, a ``threading.Event`` to wait for, an exception to cut the
    stream) and records what it was asked (messages, tools, thinking, sampling)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.replies: list[list] = []
        self.calls: list[dict] = []  # tool calls the next reply ends with
        self.asked: list[dict] = []
        self.last_tokens: int | None = None  # keep only the prompt's last N (a long chat)

    def encode_chat(self, messages, tools=None, enable_thinking=None) -> list[int]:
        self.asked.append({"messages": messages, "tools": tools, "thinking": enable_thinking})
        return super().encode_chat(messages, tools, enable_thinking)

    def request(self, tokens, sampling, stop, *args, **kwargs):
        self.asked[-1]["sampling"] = sampling
        if self.last_tokens:
            tokens = tokens[-self.last_tokens:]
        return super().request(tokens, sampling, stop, *args, **kwargs)

    async def reply(self, request, *, tools, logprobs=None):
        script = self.replies.pop(0) if self.replies else ["ok"]
        made = 0
        for piece in script:
            if isinstance(piece, threading.Event):
                while not piece.is_set():
                    await asyncio.sleep(0.02)
            elif isinstance(piece, BaseException):
                raise piece
            else:
                made += 1
                yield Delta(piece, generated=made)
                await asyncio.sleep(0.01)
        calls, self.calls = self.calls, []
        yield Outcome("", calls, Stats(prompt_tokens=len(request.tokens), cached_tokens=3,
                                       generated_tokens=made, finish_reason="stop"))


# headless Chromium reports no hover and no pointer (a touch screen's media queries): these
# make it a desktop with a mouse (ui::HoverType 2 = hover, ui::PointerType 4 = fine)
MOUSE = "--blink-settings=primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4," \
        "availablePointerTypes=4"


WINDOW = (1280, 860)


def start_browser(downloads: Path, mouse: bool = True):
    """Headless Chromium with its console log kept and downloads going to ``downloads``
    (``driver.downloads``); a desktop with a mouse, or (``mouse`` false) a touch screen's
    media queries."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--disable-gpu",
                *([MOUSE] if mouse else [])):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    downloads_to(driver, downloads)
    return driver


def downloads_to(driver, folder: Path) -> None:
    """Downloads go to ``folder`` from now on (``driver.downloads``)."""
    driver.downloads = folder
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(folder)})


def wait(driver, condition, timeout: float = 60):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: condition())


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def fresh(driver, url: str) -> None:
    """The page on ``url`` with nothing stored from earlier tests, connected; the console
    log emptied (it holds earlier tests' lines)."""
    driver.get(url + "/")
    js(driver, "localStorage.clear()")
    driver.get_log("browser")
    driver.get(url + "/")
    connected(driver)


def connected(driver) -> None:
    wait(driver, lambda: driver.find_element(By.ID, "model-name").text not in ("connecting…", ""))


def errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def find(driver, css: str):
    return driver.find_element(By.CSS_SELECTOR, css)


def find_all(driver, css: str):
    return driver.find_elements(By.CSS_SELECTOR, css)


def type_message(driver, text: str) -> None:
    """Put ``text`` in the composer as a paste would (newlines included), then Enter."""
    box = find(driver, "#input")
    js(driver, "arguments[0].value = arguments[1];"
               "arguments[0].dispatchEvent(new Event('input'))", box, text)
    box.send_keys(Keys.ENTER)


def replies(driver) -> list:
    return find_all(driver, ".message.assistant")


def done(driver) -> bool:
    """The reply finished: Send is back."""
    return find(driver, "#send").is_displayed()


def stored(driver) -> dict:
    """The current conversation as the page saved it."""
    index = js(driver, "return JSON.parse(localStorage.getItem('qwen-mlx.conversations'))")
    newest = max(index, key=lambda c: c["updated"])
    return json.loads(js(driver, "return localStorage.getItem(arguments[0])",
                         f"qwen-mlx.conversation.{newest['id']}"))


def set_setting(driver, name: str, value) -> None:
    if not find(driver, "#settings").is_displayed():
        find(driver, "#settings-toggle").click()
    field = find(driver, f"#{name}")
    field.clear()
    field.send_keys(str(value))
    find(driver, "#system").click()  # leaving the field is its change event


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("QWEN_MLX_SCREENSHOTS"):
        out = Path(os.environ["QWEN_MLX_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path

