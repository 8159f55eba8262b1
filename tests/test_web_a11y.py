"""The chat page for keyboard and screen-reader users: axe-core (the script shipped in the
axe-playwright-python package, run in our Chromium) finds no critical or serious violation
in the light or the dark theme, on a conversation with Markdown, code, thinking and a tool
call and the settings open; the composer's controls are reachable by keyboard and named."""

from __future__ import annotations

import importlib.resources
import json

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from .webpage import done, find, fresh, js, needs_chromium, replies, type_message, wait

pytestmark = needs_chromium

REPLY = ["<think>\nA plan.\n</think>\n\n", "Some **bold** text and `code`.\n\n",
         "```python\ndef f(x):\n    return x + 1  # one more\n```\n\n",
         "| a | b |\n|---|---|\n| 1 | 2 |\n\n> a quote\n"]


def violations(browser, scheme: str) -> list[dict]:
    """axe-core's critical and serious violations on the page as it is, in ``scheme``."""
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": scheme}]})
    source = (importlib.resources.files("axe_playwright_python") / "axe.min.js").read_text()
    js(browser, source + "\nwindow.axe = axe;")
    found = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then((r) => done(JSON.stringify(r.violations)));")
    return [{"id": v["id"], "impact": v["impact"],
             "nodes": [n["target"] for n in v["nodes"]][:3]}
            for v in json.loads(found) if v["impact"] in ("critical", "serious")]


def test_no_critical_or_serious_violation_in_either_theme(browser, scripted):
    fresh(browser, scripted.url)
    scripted.server.calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    scripted.server.replies = [REPLY]
    type_message(browser, "Show me everything")
    wait(browser, lambda: done(browser) and replies(browser))
    find(browser, "#settings-toggle").click()
    for scheme in ("light", "dark"):
        assert violations(browser, scheme) == [], scheme


def test_the_composer_is_reachable_and_named(browser, scripted):
    fresh(browser, scripted.url)
    # the message box has the focus at load, and after New chat
    assert js(browser, "return document.activeElement.id") == "input"
    find(browser, "#new-chat").click()
    assert js(browser, "return document.activeElement.id") == "input"
    # Attach is a button a keyboard reaches (a label around a hidden input was not)
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert js(browser, "return document.activeElement.id") == "attach"
    # icon buttons say what they do
    scripted.server.replies = [["ok"]]
    type_message(browser, "Hi")
    wait(browser, lambda: done(browser) and replies(browser))
    names = [b.get_attribute("aria-label") for b in
             browser.find_elements(By.CSS_SELECTOR, "#conversations li button:not(.title)")]
    assert names == ["Rename Hi", "Delete Hi"]
    # Esc closes the settings
    find(browser, "#settings-toggle").click()
    assert find(browser, "#settings").is_displayed()
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert not find(browser, "#settings").is_displayed()
