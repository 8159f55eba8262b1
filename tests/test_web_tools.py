"""The chat page with the server's MCP tools (serve --mcp): the model's calls are shown
with Allow once / Always / Deny, an allowed call runs on the server, a denied one does not,
both results are shown (as text) and sent back, and the model goes on. The call endpoint
is the page's alone."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from qwen_mlx import McpServers, Toolbox
from qwen_mlx.tools.config import ServerSpec
from qwen_mlx.tools.loop import DENIED

from .serving import MODEL, Running
from .webpage import (Scripted, done, find, find_all, fresh, js, needs_chromium, replies,
                      type_message, wait)

pytestmark = needs_chromium

SERVER = str(Path(__file__).with_name("mcp_server.py"))


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:  # the MCP server's log: not the user's home
        env.setenv("QWEN_MLX_HOME", str(tmp_path_factory.mktemp("home")))
        servers = McpServers([ServerSpec("fixture", command=sys.executable, args=(SERVER,))])
    r = Running(Scripted(model, MODEL, page_tools=Toolbox([servers])))
    yield r
    r.stop()
    servers.close()


def test_the_page_asks_runs_one_call_denies_another_and_goes_on(browser, served):
    fresh(browser, served.url)
    assert "add (fixture)" in js(browser, "return document.getElementById('tools-note')"
                                          ".textContent")
    scripted = served.server
    hostile = "<img src=x onerror=window.pwned=1>"
    scripted.calls = [{"name": "add", "arguments": {"a": 2, "b": 3}},
                      {"name": "echo", "arguments": {"text": hostile}}]
    scripted.replies = [["Let me work it out."], ["It is 5."]]
    type_message(browser, "What is 2 + 3?")
    wait(browser, lambda: find_all(browser, ".approval"))
    assert find(browser, ".approval span").text == "Run add (fixture)?"
    # the offered tools went with the request
    assert [t["function"]["name"] for t in scripted.asked[-1]["tools"]] == [
        "add", "echo", "sleep", "fail", "big", "die"]
    find(browser, ".approval .allow-once").click()
    wait(browser, lambda: find_all(browser, ".approval") and
         find(browser, ".approval span").text == "Run echo (fixture)?")
    find(browser, ".approval .deny").click()
    wait(browser, lambda: done(browser) and len(replies(browser)) == 2 and
         replies(browser)[-1].text.startswith("It is 5."))
    summaries = [s.text for s in find_all(browser, "details.tool-result summary")]
    assert summaries == ["fixture · add: result", "fixture · echo: error"]
    assert js(browser, "return [...document.querySelectorAll('details.tool-result pre')]"
                       ".map((p) => p.textContent)") == ["5", DENIED]
    # the call's arguments are shown as text; nothing in them ran
    assert hostile in js(browser, "return document.querySelector('.tool-calls').textContent")
    assert js(browser, "return window.pwned === undefined")
    # both results went back to the model, as tool messages after its calls
    sent = scripted.asked[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent[-2:]] == [("tool", "5"), ("tool", DENIED)]
    assert sent[-3]["role"] == "assistant"


def test_the_call_endpoint_is_the_pages_alone(served):
    url = served.url + "/web/tools/call"
    call = {"name": "add", "arguments": {"a": 1, "b": 1}}
    refused = httpx.post(url, json=call)  # a script: no Origin
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == ("tool calls come from the chat page of this "
                                                  "server only")
    page = httpx.post(url, json=call, headers={"Origin": served.url})
    assert page.status_code == 200 and page.json() == {"content": "2", "error": False,
                                                       "server": "fixture"}
    unknown = httpx.post(url, json={"name": "rm"}, headers={"Origin": served.url})
    assert unknown.status_code == 404
    # the API never offers them: a request without tools has none
    httpx.post(served.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
    assert served.server.asked[-1]["tools"] is None
