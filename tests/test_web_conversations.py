"""The chat page with long and moving conversations: a 500-message conversation draws only
its end (earlier messages when scrolled to), Send appends instead of drawing everything
again, New chat during a stream keeps the stopped reply, Edit shows on hover or focus,
Markdown export has no raw tags, and an exported JSON file imports as a new conversation.
Deterministic: DOM nodes are compared by identity, the stream is held at an event."""

from __future__ import annotations

import json
import threading

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from .webpage import (connected, done, errors, find, find_all, fresh, js, needs_chromium, replies,
                      start_browser, stored, type_message, wait)

pytestmark = needs_chromium


def seed(browser, url: str, messages: list[dict], title: str = "Long") -> str:
    """Store a conversation as the page would, and open the page on it."""
    conv = {"id": "seeded", "title": title, "system": "", "messages": messages,
            "created": 1, "updated": 2}
    js(browser, "localStorage.setItem('qwen-mlx.conversation.seeded', arguments[0]);"
                "localStorage.setItem('qwen-mlx.conversations', arguments[1])",
       json.dumps(conv), json.dumps([{"id": "seeded", "title": title, "updated": 2}]))
    browser.get(url + "/")
    connected(browser)
    return "seeded"


def test_a_long_conversation_draws_its_end_and_send_appends(browser, scripted):
    fresh(browser, scripted.url)
    messages = []
    for n in range(250):
        messages += [{"role": "user", "content": f"Question {n}"},
                     {"role": "assistant", "content": f"Answer **{n}**."}]
    seed(browser, scripted.url, messages)
    wait(browser, lambda: find_all(browser, ".message"))
    shown = find_all(browser, "#messages > .message")
    assert len(shown) == 30 and shown[-1].text.startswith("Answer 249.")
    assert find(browser, ".earlier").text == "Show 30 earlier messages"
    assert len(find_all(browser, ".message .edit")) == 1  # on the last question only
    # the reader scrolls to the top: 30 more are drawn above, the view stays on them
    js(browser, "window.kept = document.querySelector('#messages > .message');"
                "document.getElementById('messages').scrollTop = 0")
    wait(browser, lambda: len(find_all(browser, "#messages > .message")) == 60)
    assert js(browser, "return window.kept.isConnected && "
                       "document.getElementById('messages').scrollTop > 0")
    # Send draws the new question and its reply after the others, which stay as they are
    scripted.server.replies = [["Answer ", "250."]]
    scripted.server.last_tokens = 64  # the whole conversation is past the test's context
    try:
        type_message(browser, "Question 250")
        wait(browser, lambda: done(browser) and
             len(find_all(browser, "#messages > .message")) == 62)
    finally:
        scripted.server.last_tokens = None
    assert js(browser, "return window.kept.isConnected")
    assert replies(browser)[-1].find_element(By.CSS_SELECTOR, ".markdown").text == "Answer 250."
    assert len(find_all(browser, ".message .edit")) == 1
    assert len(find_all(browser, ".message .regenerate")) == 1
    assert len(stored(browser)["messages"]) == 502


def test_new_chat_during_a_stream_stops_and_keeps_the_reply(browser, scripted):
    fresh(browser, scripted.url)
    held = threading.Event()
    scripted.server.replies = [["Part of ", "the reply", held, " never shown"]]
    type_message(browser, "Tell me")
    wait(browser, lambda: "the reply" in js(
        browser, "return document.querySelector('.message.assistant')?.textContent ?? ''"))
    find(browser, "#new-chat").click()
    wait(browser, lambda: done(browser) and find_all(browser, ".message") == [])
    held.set()
    assert js(browser, "return document.activeElement.id") == "input"
    titles = [t.text for t in find_all(browser, "#conversations .title")]
    assert titles == ["New chat", "Tell me"]
    find_all(browser, "#conversations .title")[1].click()
    wait(browser, lambda: replies(browser))
    reply = stored(browser)["messages"][-1]
    assert reply["content"] == "Part of the reply" and reply["stopped"] is True
    assert find(browser, ".message.assistant .end-mark").text == "Stopped"


# the bar holding Edit fades (opacity is not inherited: the button itself stays 1)
OPACITY = "return getComputedStyle(arguments[0].parentElement).opacity"


def test_edit_shows_on_hover_and_focus(browser, scripted, tmp_path):
    fresh(browser, scripted.url)
    type_message(browser, "Hello")
    wait(browser, lambda: done(browser) and replies(browser))
    edit = find(browser, ".message.user .edit")
    find(browser, "#input").click()  # the mouse away from the message
    wait(browser, lambda: js(browser, OPACITY, edit) == "0")
    ActionChains(browser).move_to_element(find(browser, ".message.user .bubble")).perform()
    wait(browser, lambda: js(browser, OPACITY, edit) == "1")
    find(browser, "#input").click()
    wait(browser, lambda: js(browser, OPACITY, edit) == "0")
    js(browser, "arguments[0].focus()", edit)  # reached by Tab
    wait(browser, lambda: js(browser, OPACITY, edit) == "1")
    # a touch screen cannot hover: Edit is always shown there
    touch = start_browser(tmp_path, mouse=False)
    try:
        touch.get(scripted.url + "/")  # its own profile: an empty conversation
        connected(touch)
        type_message(touch, "Hello")
        wait(touch, lambda: done(touch) and replies(touch))
        assert js(touch, OPACITY, find(touch, ".message.user .edit")) == "1"
    finally:
        touch.quit()


def test_markdown_export_has_no_raw_tags_and_json_imports(browser, scripted, tmp_path):
    fresh(browser, scripted.url)
    scripted.server.replies = [["<think>\nFirst, recall.\nThen answer.\n</think>\n\n",
                                "Paris."]]
    type_message(browser, "Capital of France?")
    wait(browser, lambda: done(browser) and replies(browser))
    find(browser, "#export-md").click()
    find(browser, "#export-json").click()
    folder = browser.downloads
    md, exported = folder / "Capital-of-France.md", folder / "Capital-of-France.json"
    wait(browser, lambda: md.exists() and exported.exists())
    assert md.read_text() == (
        "# Capital of France?\n\n## User\n\nCapital of France?\n\n## Assistant\n\n"
        "> **Thinking**\n>\n> First, recall.\n> Then answer.\n\nParis.\n")
    original = stored(browser)
    # import: a new conversation with the same messages, opened
    find(browser, "#import-file").send_keys(str(exported))
    wait(browser, lambda: len(find_all(browser, "#conversations .title")) == 2)
    now = stored(browser)
    assert now["id"] != original["id"] and now["messages"] == original["messages"]
    assert find(browser, ".message.assistant .markdown").text == "Paris."
    # a file that is not a conversation is refused, saying why; nothing is added
    bad = tmp_path / "notes.json"
    bad.write_text(json.dumps({"messages": [{"role": "user"}]}))
    find(browser, "#import-file").send_keys(str(bad))
    wait(browser, lambda: find(browser, "#banner").is_displayed())
    assert find(browser, "#banner-text").text == (
        "Cannot import notes.json: message 1 needs a role (user, assistant or tool) "
        "and a text content.")
    assert len(find_all(browser, "#conversations .title")) == 2


BAD = [{"role": "user", "content": "Hi", "files": 5},
       {"role": "assistant", "content": "Calling", "tool_calls": "notalist"},
       {"role": "assistant", "content": "x", "tool_calls": [None]},
       {"role": "assistant", "content": "Fast", "stats": {"tps": "fast"}},
       None,
       {"role": "user", "content": "Still here"},
       {"role": "assistant", "content": "Fine."}]


def test_wrong_field_types_are_refused_on_import_and_drawn_as_damaged(browser, scripted,
                                                                      tmp_path):
    """Before, drawing threw a TypeError on each of these, and a stored conversation holding
    one showed an empty sidebar on every reload."""
    fresh(browser, scripted.url)
    titles = [e.text for e in find_all(browser, "#conversations .title")]  # the new chat
    for n, message in enumerate(BAD[:5]):
        bad = tmp_path / f"bad{n}.json"
        bad.write_text(json.dumps({"messages": [{"role": "user", "content": "ok"}, message]}))
        find(browser, "#import-file").send_keys(str(bad))
        wait(browser, lambda: find(browser, "#banner").is_displayed())
        why = {0: 'has a "files" that is not a list of file names',
               1: 'has a "tool_calls" that is not a list of function calls ({id, type, '
                  'function: {name, arguments}})',
               2: 'has a "tool_calls" that is not a list of function calls ({id, type, '
                  'function: {name, arguments}})',
               3: 'has a "stats" that is not counts and times as numbers (completion, '
                  'prompt, cached, ttft, tps)',
               4: "needs a role (user, assistant or tool) and a text content"}[n]
        assert find(browser, "#banner-text").text == \
            f"Cannot import bad{n}.json: message 2 {why}."
        js(browser, "document.getElementById('banner').hidden = true")
    assert [e.text for e in find_all(browser, "#conversations .title")] == titles  # no import
    # already in storage (an older page imported it): drawn, each bad one as damaged
    seed(browser, scripted.url, BAD, title="Damaged")
    assert [e.text for e in find_all(browser, "#conversations .title")] == ["Damaged"]
    drawn = find_all(browser, "#messages > .message")
    assert [e.get_attribute("class") for e in drawn] == \
        ["message damaged"] * 5 + ["message user", "message assistant"]
    assert drawn[4].text == ("⚠ Message 5 cannot be shown: it needs a role (user, assistant or "
                             "tool) and a text content. It is kept as stored and not sent to "
                             "the model.")
    assert errors(browser) == []
    # and the conversation goes on: what is sent holds only the messages that can be read
    scripted.server.replies = [["Sure."]]
    type_message(browser, "Go on")
    wait(browser, lambda: done(browser) and len(replies(browser)) == 2)
    sent = scripted.server.asked[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == \
        [("user", "Still here"), ("assistant", "Fine."), ("user", "Go on")]
    # the sidebar survives a reload with this conversation the newest
    browser.get(scripted.url + "/")
    connected(browser)
    assert [e.text for e in find_all(browser, "#conversations .title")] == ["Damaged"]
    assert len(find_all(browser, "#messages > .message.damaged")) == 5
