"""The chat page while a long reply streams: finished blocks are drawn once and stay (a
selection in them survives), the view stays where the reader scrolled, and Copy and
Regenerate appear only when the reply has ended. Deterministic: the scripted server holds the
stream at an event while the page is inspected, and DOM nodes are compared by identity."""

from __future__ import annotations

import threading

from .webpage import done, find_all, fresh, js, needs_chromium, replies, type_message, wait

pytestmark = needs_chromium

LAST = ".message.assistant:last-child .markdown"


def test_finished_blocks_are_drawn_once_and_keep_a_selection(browser, scripted):
    fresh(browser, scripted.url)
    held = threading.Event()
    scripted.server.replies = [["First paragraph.\n\n", "Second ", "paragraph.\n\n",
                                "- a list", "\n- that grows", held, "\n\nThe ", "end."]]
    type_message(browser, "Write")
    wait(browser, lambda: len(find_all(browser, f"{LAST} li")) == 2)
    assert find_all(browser, ".message.assistant .copy-reply, .message.assistant "
                             ".regenerate") == []  # not while the reply streams
    js(browser, f"""window.firstBlock = document.querySelector('{LAST} p');
                    getSelection().selectAllChildren(window.firstBlock);""")
    held.set()
    wait(browser, lambda: done(browser) and replies(browser))
    assert js(browser, f"return document.querySelector('{LAST} p') === window.firstBlock "
                       f"&& window.firstBlock.isConnected")
    assert js(browser, "return getSelection().toString()") == "First paragraph."
    assert [p.text for p in find_all(browser, f"{LAST} p")] == [
        "First paragraph.", "Second paragraph.", "The end."]
    assert [li.text for li in find_all(browser, f"{LAST} li")] == ["a list", "that grows"]
    assert len(find_all(browser, ".message.assistant:last-child .regenerate")) == 1
    # drawn again from the stored conversation, the reply is the same
    browser.refresh()
    wait(browser, lambda: replies(browser))
    assert [p.text for p in find_all(browser, f"{LAST} p")] == [
        "First paragraph.", "Second paragraph.", "The end."]


def test_the_view_stays_where_the_reader_scrolled(browser, scripted):
    fresh(browser, scripted.url)
    held = threading.Event()
    long_text = "".join(f"Paragraph {n} of a long reply.\n\n" for n in range(60))  # within the context
    scripted.server.replies = [[long_text, held, "Last words."]]
    type_message(browser, "Write a lot")
    wait(browser, lambda: len(find_all(browser, f"{LAST} p")) >= 59)
    js(browser, "document.getElementById('messages').scrollTop = 0")
    held.set()
    wait(browser, lambda: done(browser) and
         find_all(browser, ".message.assistant:last-child .regenerate"))
    assert js(browser, "return document.getElementById('messages').scrollTop") == 0
    # a new message follows the end again
    type_message(browser, "More")
    wait(browser, lambda: done(browser) and len(replies(browser)) == 2)
    # polled: the reply's actions are drawn as it ends, then the view follows (a full suite
    # once read the distance between the two)
    wait(browser, lambda: js(browser, "const b = document.getElementById('messages'); "
                                      "return b.scrollHeight - b.scrollTop - b.clientHeight")
         < 40)


def test_waiting_code_header_and_an_empty_export(browser, scripted):
    fresh(browser, scripted.url)
    held = threading.Event()
    scripted.server.replies = [[held, "```\nplain code, no language\n```\n"]]
    type_message(browser, "Code")
    # before the first token the reply says it is waiting, and the box is its size again
    wait(browser, lambda: find_all(browser, ".message.assistant.waiting"))
    assert js(browser, "return document.getElementById('input').style.height") == ""
    held.set()
    wait(browser, lambda: done(browser) and find_all(browser, ".message.assistant .code"))
    assert find_all(browser, ".message.assistant.waiting") == []
    # Copy sits in a header bar above the code, not over its first line
    assert js(browser, "const c = document.querySelector('.copy-code').getBoundingClientRect();"
                       "const p = document.querySelector('.code pre').getBoundingClientRect();"
                       "return c.bottom <= p.top")
    # an empty conversation is not exported as an empty file
    find_all(browser, "#new-chat")[0].click()
    find_all(browser, "#export-json")[0].click()
    wait(browser, lambda: find_all(browser, "#banner-text")[0].text.startswith(
        "This conversation is empty"))
