"""The chat page when things go wrong: an unreachable or restarted server, a stream cut
halfway, the server's refusals, a huge paste (tests/webpage.py is the harness)."""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.common.by import By

from qwen_mlx.serve.worker import ShuttingDown

from .serving import MODEL, Running
from .webpage import (Scripted, done, find, find_all, fresh, js, needs_chromium, replies,
                      set_setting, stored, type_message, wait)

pytestmark = needs_chromium


def test_unreachable_server_shows_a_banner_and_keeps_the_message(browser, model):
    r = Running(Scripted(model, MODEL))
    fresh(browser, r.url)
    r.stop()
    type_message(browser, "Are you there?")
    wait(browser, lambda: find(browser, "#banner").is_displayed())
    assert find(browser, "#banner-text").text.startswith("Cannot reach the server at ")
    assert find(browser, "#input").get_attribute("value") == "Are you there?"
    assert replies(browser) == [] and find_all(browser, ".message.user") == []
    back = Running(Scripted(model, MODEL), port=r.port)  # the server is started again
    try:
        find(browser, "#banner-retry").click()  # sends what went back into the composer
        wait(browser, lambda: done(browser) and replies(browser))
        assert find(browser, ".message.assistant .markdown").text == "ok"
        assert not find(browser, "#banner").is_displayed()
        assert find(browser, "#input").get_attribute("value") == ""
    finally:
        back.stop()


@pytest.mark.parametrize("cut, says", [
    (RuntimeError("the process died"), ("the connection to the server was lost in the middle "
                                        "of the reply", "the server closed the connection "
                                        "before the reply ended")),
    (ShuttingDown("the server is shutting down"), ("the server is shutting down",))])
def test_a_stream_cut_midway_keeps_what_arrived(browser, scripted, cut, says):
    """A dropped connection (a crash) and the error event of a server stopping (a restart)."""
    fresh(browser, scripted.url)
    scripted.server.replies = [["Half of ", "the answer", cut], ["The whole ", "answer"]]
    type_message(browser, "Tell me")
    wait(browser, lambda: find(browser, "#banner").is_displayed() and done(browser))
    assert find(browser, "#banner-text").text in [
        f"{s[0].upper()}{s[1:]}. What arrived is kept." for s in says]
    assert find(browser, ".message.assistant .markdown").text == "Half of the answer"
    mark = find(browser, ".message.assistant .end-mark.interrupted")
    assert mark.text.startswith("⚠ Interrupted: the reply ended before the model finished")
    assert stored(browser)["messages"][-1]["interrupted"] is True
    mark.find_element(By.CSS_SELECTOR, ".retry").click()  # asks again, in place
    wait(browser, lambda: done(browser) and find(browser, ".message.assistant .markdown")
         .text == "The whole answer")
    assert [m["role"] for m in stored(browser)["messages"]] == ["user", "assistant"]
    assert find_all(browser, ".end-mark") == []


def test_refusals_show_the_servers_text_and_a_huge_paste_is_kept(browser, running):
    fresh(browser, running.url)
    set_setting(browser, "temperature", 5)
    type_message(browser, "Hi")
    wait(browser, lambda: find(browser, "#banner").is_displayed())
    assert find(browser, "#banner-text").text == "'temperature' is out of range"
    assert find(browser, "#input").get_attribute("value") == "Hi"
    set_setting(browser, "temperature", 0.7)
    huge = "All work and no play. " * 50_000  # 1.1 MB, far past the 1,024-token context
    type_message(browser, huge)
    wait(browser, lambda: find(browser, "#banner").is_displayed() and
         "context" in find(browser, "#banner-text").text)
    refusal = httpx.post(running.url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "temperature": 0.7, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": huge}]}).json()["error"]["message"]
    assert find(browser, "#banner-text").text == refusal[0].upper() + refusal[1:]
    assert js(browser, "return document.getElementById('input').value.length") == len(huge)
    find(browser, "#input").send_keys("!")  # still typing into it
    assert js(browser, "return document.getElementById('input').value.endsWith('!')")
