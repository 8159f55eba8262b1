"""The chat page at a phone's size (390 x 844): the sidebar comes from a menu button, the
header keeps one line, the open settings do not widen the page, every visible control is a
44 px tap target and the message box's text is 16 px (iOS zooms into smaller inputs)."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.keys import Keys

from .webpage import (SHOWCASE, done, errors, find, find_all, fresh, js, needs_chromium, replies,
                      screenshot, start_browser, type_message, wait)

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A touch screen: no hover, so Edit is shown as a phone shows it."""
    driver = start_browser(tmp_path_factory.mktemp("downloads"), mouse=False)
    yield driver
    driver.quit()

SMALL_CONTROLS = """
return [...document.querySelectorAll('button, input, textarea, select, .attach')]
  .filter((e) => e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden')
  .map((e) => [e.id || e.className || e.tagName, e.getBoundingClientRect().height])
  .filter(([, h]) => h < 44);
"""


def test_the_page_fits_a_phone(browser, scripted):
    browser.set_window_size(390, 844)
    try:
        fresh(browser, scripted.url)
        width = js(browser, "return window.innerWidth")
        assert width <= 400
        assert not find(browser, "#new-chat").is_displayed()
        scripted.server.replies = [["ok"]]
        type_message(browser, "First chat")
        wait(browser, lambda: done(browser) and replies(browser))
        # the menu slides the sidebar in; a choice closes it
        find(browser, "#menu").click()
        wait(browser, lambda: find(browser, "#new-chat").is_displayed())
        assert find(browser, "#menu").get_attribute("aria-expanded") == "true"
        find(browser, "#new-chat").click()
        wait(browser, lambda: not find(browser, "#new-chat").is_displayed())
        assert find_all(browser, ".message") == []
        find(browser, "#menu").click()
        wait(browser, lambda: find(browser, "#conversations .title").is_displayed())
        next(t for t in find_all(browser, "#conversations .title")
             if t.text == "First chat").click()
        wait(browser, lambda: replies(browser))
        assert not find(browser, "#new-chat").is_displayed()
        # Esc closes the sidebar too
        find(browser, "#menu").click()
        wait(browser, lambda: find(browser, "#new-chat").is_displayed())
        browser.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait(browser, lambda: not find(browser, "#new-chat").is_displayed())
        # one header line; the exports fold under "⋯"
        assert js(browser, "return document.getElementById('top').offsetHeight") < 64
        assert not find(browser, "#export-json").is_displayed()
        find(browser, "#more").click()
        assert find(browser, "#export-json").is_displayed()
        find(browser, "#more").click()
        # the settings reflow instead of widening the page
        find(browser, "#settings-toggle").click()
        assert js(browser, "return document.documentElement.scrollWidth") <= width
        assert js(browser, "return [...document.querySelectorAll('main, #settings')]"
                           ".every((e) => e.scrollWidth <= e.clientWidth + 1)")
        assert js(browser, SMALL_CONTROLS) == []
        assert js(browser, "return getComputedStyle(document.getElementById('input'))"
                           ".fontSize") == "16px"
    finally:
        browser.set_window_size(1280, 800)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_phone_screenshots(browser, scripted, tmp_path, scheme):
    """The README's phone screenshots (QWEN_MLX_SCREENSHOTS=folder keeps them)."""
    browser.set_window_size(390, 844)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": scheme}]})
    try:
        fresh(browser, scripted.url)
        scripted.server.replies = [[SHOWCASE[i:i + 4] for i in range(0, len(SHOWCASE), 4)]]
        type_message(browser, "Compare the recipes, with an example")
        wait(browser, lambda: done(browser) and find_all(browser, ".message.assistant .stats"))
        path = screenshot(browser, tmp_path, f"chat-phone-{scheme}.png")
        assert path.stat().st_size > 10_000
        assert errors(browser) == []
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        browser.set_window_size(1280, 800)
