"""The chat page on a server of several models, in a real Chromium: a picker lists them
(● loaded), picking one loads it and the next message goes to it, and a conversation
remembers its model when it is opened again."""

from __future__ import annotations

from selenium.webdriver.support.select import Select

from .serving import MODEL
from .webpage import (done, errors, find, js, needs_chromium, replies, set_setting, stored,
                      type_message, wait)

pytestmark = needs_chromium


def options(driver) -> list[str]:
    return [o.text for o in Select(find(driver, "#model-picker")).options]


def test_the_picker_switches_models_and_a_conversation_keeps_its_own(browser, two):
    browser.get(two.url + "/")
    js(browser, "localStorage.clear()")
    browser.get_log("browser")
    browser.get(two.url + "/")
    wait(browser, lambda: find(browser, "#model-picker").is_displayed())
    assert not find(browser, "#model-name").is_displayed()
    assert options(browser) == [f"{MODEL} ●", "other"]  # "other" is not loaded yet
    set_setting(browser, "max_tokens", 8)  # short replies (the page keeps its settings)
    type_message(browser, "Hello")
    wait(browser, lambda: len(replies(browser)) == 1 and done(browser))
    assert stored(browser)["model"] == MODEL
    assert two.server.fleet.loads == 0
    # a new chat with the other model: picking it loads it, the message goes to it
    find(browser, "#new-chat").click()
    Select(find(browser, "#model-picker")).select_by_value("other")
    wait(browser, lambda: two.server.fleet.loads == 1)
    wait(browser, lambda: options(browser) == [f"{MODEL} ●", "other ●"])
    type_message(browser, "Hi there")
    wait(browser, lambda: len(replies(browser)) == 1 and done(browser))
    assert stored(browser)["model"] == "other"
    assert [e.name for e in two.server.fleet.loaded] == [MODEL, "other"]
    # the first conversation, opened again, talks to its own model
    first = [li for li in browser.find_elements("css selector", "#conversations li")
             if "Hello" in li.text][0]
    first.click()
    wait(browser, lambda: Select(find(browser, "#model-picker"))
         .first_selected_option.get_attribute("value") == MODEL)
    assert errors(browser) == []
