"""The chat page (`qwen-mlx serve`'s `/`) in a real Chromium: what it shows and sends.

Two servers: the tiny model (real streaming, Stop, two tabs at once) and a scripted one
whose replies are fixed text (exact Markdown, a script that must not run, thinking, tool
calls). The harness is tests/webpage.py; bad input is tests/test_web_failures.py.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from .serving import MODEL, Running
from .webpage import (SHOWCASE, Scripted, connected, done, errors, find, find_all, fresh, js,
                      needs_chromium, replies, screenshot, set_setting, stored, type_message,
                      wait)

pytestmark = needs_chromium


def test_page_loads_offline_without_console_errors(browser, running):
    fresh(browser, running.url)
    assert find(browser, "#model-name").text == MODEL
    assert errors(browser) == []
    # the model's defaults are shown; the tiny model is a hybrid: the thinking switch shows
    find(browser, "#settings-toggle").click()
    assert [find(browser, f"#{n}").get_attribute("placeholder")
            for n in ("temperature", "top_p", "top_k", "max_tokens")] == ["0.7", "0.8", "20",
                                                                           "2048"]
    assert find(browser, "#thinking").is_displayed()
    # nothing from another origin: every resource the page loaded is this server's
    sources = js(browser, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert sources and all(s.startswith(running.url + "/") for s in sources)
    page = httpx.get(running.url + "/", headers={"Accept": "text/html"})
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(running.url + "/").text == "qwen-mlx is running"  # scripts, Ollama's check


def test_a_message_streams_the_models_exact_reply(browser, running, model):
    fresh(browser, running.url)
    box = find(browser, "#input")  # Shift+Enter is a new line, not a send
    box.send_keys("Hello", Keys.SHIFT, Keys.ENTER, Keys.NULL, "there")
    assert box.get_attribute("value") == "Hello\nthere" and find_all(browser, ".message") == []
    box.clear()
    set_setting(browser, "temperature", 0)
    set_setting(browser, "max_tokens", 24)
    type_message(browser, "Hello there")
    wait(browser, lambda: done(browser) and find_all(browser, ".message.assistant .stats"))
    reply = stored(browser)["messages"][-1]
    expected = model.generate([{"role": "user", "content": "Hello there"}], temperature=0,
                              max_tokens=24)
    assert reply["content"] == expected.text
    assert reply["stats"]["completion"] == 24 and reply["finish"] == "length"
    stats = find(browser, ".message.assistant .stats").text
    assert stats.startswith("24 tokens · ") and "tok/s" in stats and "first token" in stats
    assert "cut at the token limit" in stats
    assert errors(browser) == []


def test_stop_and_escape_cancel_the_generation_on_the_server(browser, running):
    fresh(browser, running.url)
    set_setting(browser, "max_tokens", 990)  # what the 1,024-token context leaves
    worker = running.server.worker
    for how in ("button", "escape"):
        before = len(worker.finished)
        if how == "button":
            type_message(browser, "Count to a thousand")
        else:
            find(browser, ".regenerate").click()
        wait(browser, lambda: find(browser, "#stop").is_displayed() and js(
            browser, "return document.querySelector('.message.assistant:last-child')"
                     ".textContent.length > 0"))
        if how == "button":
            find(browser, "#stop").click()
        else:
            find(browser, "body").send_keys(Keys.ESCAPE)
        wait(browser, lambda: done(browser))
        last = replies(browser)[-1]
        assert last.find_element(By.CSS_SELECTOR, ".end-mark.stopped").text == "Stopped"
        wait(browser, lambda: len(worker.finished) > before, timeout=10)
        job = worker.finished[-1]
        assert job["cancelled"] and job["generated"] < 990
        # the tokens that reached the page (vLLM's continuous usage), at most those made
        received = stored(browser)["messages"][-1]["stats"]["completion"]
        assert 1 <= received <= job["generated"]
        assert last.find_element(By.CSS_SELECTOR, ".stats").text.startswith(
            f"{received} token{'s' if received > 1 else ''}")
    assert len(stored(browser)["messages"]) == 2  # the question and the last, stopped reply


MARKDOWN = ("Here is code:\n\n```python\ndef double(x):\n    return x * 2\n```\n\n"
            "| name | value |\n|---|---|\n| alpha | 1 |\n| beta | 2 |\n\n"
            "<script>window.pwned = 1; alert(1)</script>\n\n"
            "<img src=x onerror=\"window.pwned = 2\"> [click](javascript:window.pwned=3)\n\n"
            "Euler: $e^{i\\pi} + 1 = 0$ and \\[\\sum_{k=1}^n k = \\frac{n(n+1)}{2}\\]")


def test_markdown_renders_and_model_html_never_runs(browser, scripted, tmp_path):
    fresh(browser, scripted.url)
    scripted.server.replies = [[MARKDOWN[i:i + 7] for i in range(0, len(MARKDOWN), 7)]]
    type_message(browser, "Show me everything")
    wait(browser, lambda: done(browser) and find_all(browser, ".message.assistant .stats"))
    code = find(browser, ".markdown .code pre code.hljs")
    assert code.text == "def double(x):\n    return x * 2"
    assert find_all(browser, ".markdown .code .hljs-keyword")  # highlighted
    cells = [c.text for c in find_all(browser, ".markdown table td")]
    assert cells == ["alpha", "1", "beta", "2"]
    assert [h.text for h in find_all(browser, ".markdown table th")] == ["name", "value"]
    assert len(find_all(browser, ".markdown .katex")) == 2
    text = find(browser, ".message.assistant .markdown").text
    assert "<script>window.pwned = 1; alert(1)</script>" in text  # shown, as written
    assert find_all(browser, "#messages script, #messages img, #messages [onerror]") == []
    assert find(browser, ".markdown a").get_attribute("href") in (None, "")
    find(browser, ".markdown a").click()
    time.sleep(0.3)
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert js(browser, "return window.pwned") is None
    assert errors(browser) == []
    # the copy button copies the code, not the label
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": scripted.url, "permissions": ["clipboardReadWrite",
                                                "clipboardSanitizedWrite"]})
    find(browser, ".copy-code").click()
    assert js(browser, "return navigator.clipboard.readText()") == \
        "def double(x):\n    return x * 2"


def test_thinking_is_collapsed_and_tool_calls_are_blocks(browser, scripted):
    fresh(browser, scripted.url)
    scripted.server.replies = [["<think>\nPlan the ", "answer.\n</think>\n\n", "Done."]]
    type_message(browser, "Think first")
    wait(browser, lambda: done(browser))
    details = find(browser, ".message.assistant details.thinking")
    assert details.get_attribute("open") is None
    assert details.find_element(By.TAG_NAME, "summary").text == "Thoughts"
    assert js(browser, "return arguments[0].textContent", details) == \
        "ThoughtsPlan the answer.\n"  # the summary, then the thinking as a paragraph
    assert find(browser, ".message.assistant .markdown").text == "Done."
    # the thinking switch turns thinking off in the next request
    find(browser, "#settings-toggle").click()
    find(browser, "#thinking").click()
    scripted.server.calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    scripted.server.replies = [[]]
    type_message(browser, "Weather in Paris?")
    wait(browser, lambda: done(browser) and len(replies(browser)) == 2)
    assert scripted.server.asked[-1]["thinking"] is False
    block = find(browser, ".message.assistant:last-child .tool-call")
    assert block.find_element(By.CSS_SELECTOR, ".tool-name").text == "tool call: get_weather"
    assert json.loads(block.find_element(By.TAG_NAME, "pre").text) == {"city": "Paris"}
    # the next request sends the call back in the history
    type_message(browser, "Thanks")
    wait(browser, lambda: done(browser) and len(replies(browser)) == 3)
    sent = scripted.server.asked[-1]["messages"]
    assert sent[3]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": '{"city": "Paris"}'}


def test_settings_system_prompt_and_attached_file_reach_the_request(browser, scripted,
                                                                     tmp_path):
    fresh(browser, scripted.url)
    set_setting(browser, "temperature", 0.3)
    set_setting(browser, "top_k", 5)
    find(browser, "#system").send_keys("Answer in French.")
    find(browser, "#temperature").click()
    doc = tmp_path / "notes.txt"
    doc.write_text("line one\nline two\n")
    find(browser, "#file").send_keys(str(doc))
    wait(browser, lambda: "notes.txt" in find(browser, "#attachments").text)
    type_message(browser, "Summarize")
    wait(browser, lambda: done(browser) and replies(browser))
    asked = scripted.server.asked[-1]
    assert asked["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "notes.txt:\n\nline one\nline two\n\nSummarize"}]
    assert asked["sampling"] == {"temperature": 0.3, "top_k": 5}
    user = find(browser, ".message.user")
    assert "📎 notes.txt" in user.text and "line one" not in user.text


def test_regenerate_and_edit_the_last_message(browser, scripted):
    fresh(browser, scripted.url)
    scripted.server.replies = [["first"], ["second"], ["third"]]
    type_message(browser, "Question one")
    wait(browser, lambda: done(browser) and replies(browser))
    find(browser, ".regenerate").click()
    wait(browser, lambda: done(browser) and
         find(browser, ".message.assistant .markdown").text == "second")
    assert scripted.server.asked[-1]["messages"] == scripted.server.asked[-2]["messages"]
    find(browser, ".message.user .edit").click()
    box = find(browser, ".message.user .edit-box")
    box.clear()
    box.send_keys("Question two")
    find(browser, ".edit-send").click()
    wait(browser, lambda: done(browser) and
         find(browser, ".message.assistant .markdown").text == "third")
    assert scripted.server.asked[-1]["messages"] == [{"role": "user",
                                                       "content": "Question two"}]
    assert [m["content"] for m in stored(browser)["messages"]] == ["Question two", "third"]


def test_conversations_survive_a_reload_and_can_be_renamed_exported_deleted(browser,
                                                                           scripted):
    fresh(browser, scripted.url)
    scripted.server.replies = [["Paris."], ["Berlin."]]
    type_message(browser, "Capital of France?")
    wait(browser, lambda: done(browser) and replies(browser))
    find(browser, "#new-chat").click()
    type_message(browser, "Capital of Germany?")
    wait(browser, lambda: done(browser) and replies(browser))
    browser.refresh()
    connected(browser)
    titles = [t.text for t in find_all(browser, "#conversations .title")]
    assert titles == ["Capital of Germany?", "Capital of France?"]
    assert find(browser, ".message.assistant .markdown").text == "Berlin."
    find_all(browser, "#conversations .title")[1].click()
    assert find(browser, ".message.assistant .markdown").text == "Paris."
    # rename
    find(browser, "#conversations li.current .rename").click()
    field = find(browser, "#conversations .rename-input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("France" + Keys.ENTER)
    browser.refresh()
    connected(browser)
    assert [t.text for t in find_all(browser, "#conversations .title")][1] == "France"
    # export, as JSON and as Markdown
    find_all(browser, "#conversations .title")[1].click()
    find(browser, "#export-json").click()
    find(browser, "#export-md").click()
    folder = browser.downloads
    wait(browser, lambda: {p.name for p in folder.iterdir()} >= {"France.json", "France.md"})
    exported = json.loads((folder / "France.json").read_text())
    assert [m["content"] for m in exported["messages"]] == ["Capital of France?", "Paris."]
    assert (folder / "France.md").read_text() == (
        "# France\n\n## User\n\nCapital of France?\n\n## Assistant\n\nParis.\n")
    # delete (the browser asks first)
    find(browser, "#conversations li.current .delete").click()
    browser.switch_to.alert.accept()
    browser.refresh()
    connected(browser)
    assert [t.text for t in find_all(browser, "#conversations .title")] == [
        "Capital of Germany?"]


def test_api_key_is_asked_once(browser, model):
    r = Running(Scripted(model, MODEL, api_key="s3cret"))
    try:
        browser.get(r.url + "/")
        js(browser, "localStorage.clear()")
        browser.refresh()
        wait(browser, lambda: find(browser, "#key-dialog").is_displayed())
        find(browser, "#key").send_keys("wrong" + Keys.ENTER)
        wait(browser, lambda: find(browser, "#key-error").is_displayed())
        assert "refused that key" in find(browser, "#key-error").text
        find(browser, "#key").send_keys("s3cret" + Keys.ENTER)
        connected(browser)
        assert find(browser, "#model-name").text == MODEL
        type_message(browser, "Hi")
        wait(browser, lambda: done(browser) and replies(browser))
        assert find(browser, ".message.assistant .markdown").text == "ok"
        browser.refresh()  # kept in this browser: not asked again
        connected(browser)
        assert not find(browser, "#key-dialog").is_displayed()
    finally:
        r.stop()



# -- two tabs at once, and the screenshots ------------------------------------------------

def test_two_tabs_chat_at_once_through_the_batch(browser, running):
    fresh(browser, running.url)
    set_setting(browser, "max_tokens", 200)
    first = browser.current_window_handle
    browser.switch_to.new_window("window")
    second = browser.current_window_handle
    browser.get(running.url + "/")
    connected(browser)
    find(browser, "#new-chat").click()
    peak = []
    watch = threading.Thread(target=lambda: [
        peak.append(len(running.server.worker.running)) or time.sleep(0.01)
        for _ in range(1500)])
    watch.start()
    before = len(running.server.worker.finished)
    browser.switch_to.window(first)
    type_message(browser, "Tab one")
    browser.switch_to.window(second)
    type_message(browser, "Tab two")
    for handle in (second, first):
        browser.switch_to.window(handle)
        wait(browser, lambda: done(browser) and
             find_all(browser, ".message.assistant .stats"), timeout=120)
        assert find(browser, ".message.assistant .stats").text.startswith("200 tokens")
    watch.join()
    assert max(peak) == 2  # decoded together
    assert [j["cancelled"] for j in list(running.server.worker.finished)[before:]] == \
        [False, False]
    browser.switch_to.window(second)
    browser.close()
    browser.switch_to.window(first)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots(browser, scripted, tmp_path, scheme):
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": scheme}]})
    try:
        fresh(browser, scripted.url)
        scripted.server.replies = [["Old question answered."],
                                   [SHOWCASE[i:i + 4] for i in range(0, len(SHOWCASE), 4)]]
        type_message(browser, "Which quantization should I use?")
        wait(browser, lambda: done(browser) and replies(browser))
        find(browser, "#new-chat").click()
        type_message(browser, "Compare the recipes, with an example")
        wait(browser, lambda: done(browser) and find_all(browser, ".message.assistant .stats"))
        dark = js(browser, "return matchMedia('(prefers-color-scheme: dark)').matches")
        assert dark == (scheme == "dark")
        background = js(browser, "return getComputedStyle(document.body).backgroundColor")
        assert background == ("rgb(13, 17, 23)" if dark else "rgb(255, 255, 255)")
        path = screenshot(browser, tmp_path, f"chat-{scheme}.png")
        assert path.stat().st_size > 10_000
        assert errors(browser) == []
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

