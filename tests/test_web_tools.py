"""The chat page with the server's MCP tools (serve --mcp): the model's calls are shown
with Allow once / Always / Deny, an allowed call runs on the server, a denied one does not,
both results are shown (as text) and sent back, and the model goes on. The call endpoint
is the page's alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.keys import Keys

from qwen_mlx import McpServers, Toolbox
from qwen_mlx.tools.config import ServerSpec
from qwen_mlx.tools.loop import CANCELLED, DENIED, NOT_RUN
from qwen_mlx.tools.toolbox import ToolResult

from .serving import MODEL, Running, free_port
from .webpage import (Scripted, done, find, find_all, fresh, js, needs_chromium, replies,
                      stored, type_message, wait)

pytestmark = needs_chromium

SERVER = str(Path(__file__).with_name("mcp_server.py"))


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:  # the MCP server's log: not the user's home
        env.setenv("QWEN_MLX_HOME", str(tmp_path_factory.mktemp("home")))
        servers = McpServers([ServerSpec("fixture", command=sys.executable, args=(SERVER,),
                                         auto_approve=("fail",))], forms=True)
    r = Running(Scripted(model, MODEL, page_tools=Toolbox([servers])))
    yield r
    r.stop()
    servers.close()


def test_the_page_asks_runs_one_call_denies_another_and_goes_on(browser, served):
    fresh(browser, served.url)
    # the page asks for the tools once connected
    wait(browser, lambda: "add (fixture)" in js(
        browser, "return document.getElementById('tools-note').textContent"))
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
        "add", "echo", "sleep", "ask", "fail", "big", "die"]
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


def unasked_round(browser, served, call: dict, then: str) -> Scripted:
    """A message whose reply makes ``call``, answered with no approval asked, and the
    model's next reply ``then``."""
    fresh(browser, served.url)
    scripted = served.server
    scripted.calls = [call]
    scripted.replies = [["Let me see."], [then]]
    type_message(browser, "Go")
    wait(browser, lambda: done(browser) and len(replies(browser)) == 2 and
         replies(browser)[-1].text.startswith(then))
    assert not find_all(browser, ".approval")
    return scripted


def test_a_call_of_a_tool_no_one_offers_is_answered_not_left_hanging(browser, served):
    """The terminal sends "no tool named ..." back to the model; the page does the same
    (it used to wait for an approval it never asked for)."""
    scripted = unasked_round(browser, served, {"name": "rm", "arguments": {"path": "/"}},
                             "There is no such tool.")
    said = ("error: there is no tool named 'rm' (the tools: add, echo, sleep, ask, fail, big, "
            "die)")
    sent = scripted.asked[-1]["messages"]
    assert (sent[-1]["role"], sent[-1]["content"]) == ("tool", said)
    assert [s.text for s in find_all(browser, "details.tool-result summary")] == [
        "tool · rm: error"]


def test_a_running_call_shows_keeps_send_waiting_and_esc_cancels_it(browser, served,
                                                                    monkeypatch):
    """While a call runs the page says so, Send waits (Enter adds nothing), and Esc cancels
    it as Ctrl-C does in the terminal: the call is "cancelled", the next "not run" (not
    asked about), the server cancels it too, and the model is not asked again. The page had
    no such state: a message sent meanwhile put results after unrelated turns."""
    fresh(browser, served.url)
    scripted, box = served.server, served.server.page_tools
    ran, plain = [], box.call
    monkeypatch.setattr(box, "call", lambda *a: ran.append(plain(*a)) or ran[-1])
    scripted.calls = [{"name": "sleep", "arguments": {"seconds": 50}},
                      {"name": "add", "arguments": {"a": 1, "b": 2}}]
    scripted.replies = [["Let me wait."], ["never asked"]]
    type_message(browser, "Wait for me")
    wait(browser, lambda: find_all(browser, ".approval"))
    asked = len(scripted.asked)
    assert not done(browser)  # Send waits while the user is asked, too
    find(browser, ".approval .allow-once").click()
    wait(browser, lambda: find_all(browser, ".tool-running"))
    assert find(browser, ".tool-running").text == ("Running sleep (fixture)… Stop or Esc "
                                                   "cancels it.")
    assert not done(browser) and find(browser, "#stop").is_displayed()
    type_message(browser, "Another message meanwhile")
    assert len(find_all(browser, ".message.user")) == 1
    find(browser, "body").send_keys(Keys.ESCAPE)
    wait(browser, lambda: done(browser) and len(find_all(browser, "details.tool-result")) == 2)
    assert not find_all(browser, ".tool-running") and not find_all(browser, ".approval")
    assert find(browser, "#status").text == "Tool call cancelled"
    assert [(m["role"], m.get("content")) for m in stored(browser)["messages"][-2:]] == [
        ("tool", CANCELLED), ("tool", NOT_RUN)]
    wait(browser, lambda: ran, timeout=30)  # the sleep would take 50 s
    assert ran == [ToolResult(CANCELLED, True)]
    assert len(scripted.asked) == asked


def test_a_tool_its_file_approves_runs_without_asking(browser, served):
    """autoApprove (alwaysAllow) in the servers file: the page runs the call at once."""
    scripted = unasked_round(browser, served, {"name": "fail", "arguments": {"message": "x"}},
                             "It failed.")
    assert [s.text for s in find_all(browser, "details.tool-result summary")] == [
        "fixture · fail: error"]
    last = scripted.asked[-1]["messages"][-1]
    assert (last["role"], last["content"]) == ("tool", "Error executing tool fail")


def test_a_running_calls_progress_shows_in_the_page(browser, served):
    """The server's progress reports (the fixture's sleep: one a second) reach the page's
    running note while the call runs; then its result."""
    import re

    fresh(browser, served.url)
    scripted = served.server
    scripted.calls = [{"name": "sleep", "arguments": {"seconds": 4}}]
    scripted.replies = [["Waiting."], ["Done waiting."]]
    type_message(browser, "Wait four seconds")
    wait(browser, lambda: find_all(browser, ".approval"))
    find(browser, ".approval .allow-once").click()
    shown = []
    wait(browser, lambda: shown.append(js(
        browser, "return document.querySelector('.tool-running')?.textContent ?? ''")) or
        re.fullmatch(r"Running sleep \(fixture\): [1-3]/4 [1-3] s… Stop or Esc cancels it\.",
                     shown[-1]))
    wait(browser, lambda: done(browser) and len(replies(browser)) == 2)
    sent = scripted.asked[-1]["messages"]
    assert (sent[-1]["role"], sent[-1]["content"]) == ("tool", "slept 4 s")


def test_a_servers_form_is_asked_in_the_page(browser, served):
    """elicitation: the server's question shows as a small form under the reply; Submit
    sends the typed fields, Decline declines; each answer is what the server gets."""
    fresh(browser, served.url)
    scripted = served.server
    for answer, result in (("submit", "name=Ada age=36"), ("decline", "decline")):
        scripted.calls = [{"name": "ask", "arguments": {}}]
        scripted.replies = [["Let me ask."], ["Thanks."]]
        before = len(replies(browser))
        type_message(browser, "Ask me")
        wait(browser, lambda: find_all(browser, ".approval"))
        find(browser, ".approval .allow-once").click()
        wait(browser, lambda: find_all(browser, ".tool-form"))
        assert find(browser, ".tool-form p").text == "fixture asks: Who are you?"
        assert [label.text for label in find_all(browser, ".tool-form label")] == [
            "Name", "Age (optional)"]
        if answer == "submit":
            find(browser, ".tool-form [name=name]").send_keys("Ada")
            find(browser, ".tool-form [name=age]").send_keys("36")
        find(browser, f".tool-form .form-{answer}").click()
        wait(browser, lambda: done(browser) and len(replies(browser)) == before + 2)
        assert not find_all(browser, ".tool-form")
        sent = scripted.asked[-1]["messages"]
        assert (sent[-1]["role"], sent[-1]["content"]) == ("tool", result)


def test_the_form_endpoint_is_the_pages_and_takes_only_a_waiting_form(served):
    """POST /web/tools/form: the page's origin only, known fields only, and only the id of
    a form that waits; fuzzed bodies on the page's tool routes never get a 5xx."""
    import random

    url = served.url
    page = {"Origin": url}
    r = httpx.post(f"{url}/web/tools/form", json={"id": "x", "action": "accept"})
    assert r.status_code == 403
    r = httpx.post(f"{url}/web/tools/form", json={"id": "x", "action": "accept",
                                                  "content": {}}, headers=page)
    assert (r.status_code, r.json()["error"]["message"]) == (
        404, "no form with that id is waiting for an answer")
    r = httpx.post(f"{url}/web/tools/form", json={"id": "x", "action": "maybe"}, headers=page)
    assert r.status_code == 400 and "'action' must be one of accept, decline, cancel" in \
        r.json()["error"]["message"]
    r = httpx.post(f"{url}/web/tools/form", json={"id": "x", "what": 1}, headers=page)
    assert r.status_code == 400 and "unknown field 'what'" in r.json()["error"]["message"]
    rng = random.Random(0)
    values = [None, True, 0, -1, 1e308, "", "x" * 10_000, [], {}, [None], {"a": [1]},
              {"name": {"deep": []}}, "accept", "decline"]
    for _ in range(100):
        path = rng.choice(["/web/tools/form", "/web/tools/call", "/web/tools/read",
                           "/web/tools/prompt"])
        body = {k: rng.choice(values) for k in rng.sample(
            ["id", "action", "content", "name", "arguments", "uri", "extra"],
            rng.randint(0, 4))}
        r = httpx.post(f"{url}{path}", json=body, headers=page)
        assert r.status_code < 500, (path, body, r.text)
    assert httpx.get(f"{url}/health").status_code == 200


def test_resources_attach_and_prompts_fill_the_composer(browser, served):
    """The servers' resources and prompts in one picker: a resource becomes an attachment
    of the next message, as a file does; a prompt's arguments are asked in a small form and
    the filled prompt goes into the composer."""
    from selenium.webdriver.support.ui import Select

    fresh(browser, served.url)
    wait(browser, lambda: find(browser, "#mcp-pick").is_displayed())
    pick = Select(find(browser, "#mcp-pick"))
    assert [o.text for o in pick.options] == [
        "Resources and prompts…", "hello (fixture: note://hello)",
        "greet (fixture): Greet someone by name."]
    pick.select_by_visible_text("hello (fixture: note://hello)")
    wait(browser, lambda: find_all(browser, ".file-chip"))
    assert find(browser, ".file-chip").text.startswith("📎 note://hello (23 characters)")
    scripted = served.server
    scripted.replies = [["Noted."]]
    type_message(browser, "Read it")
    wait(browser, lambda: done(browser) and len(replies(browser)) == 1)
    assert scripted.asked[-1]["messages"][-1]["content"] == \
        "note://hello:\n\nHello from the fixture.\n\nRead it"
    Select(find(browser, "#mcp-pick")).select_by_visible_text(
        "greet (fixture): Greet someone by name.")
    wait(browser, lambda: find_all(browser, ".tool-form"))
    assert find(browser, ".tool-form p").text == "The prompt greet (fixture)"
    find(browser, ".tool-form [name=name]").send_keys("Ada")
    find(browser, ".tool-form .form-submit").click()
    wait(browser, lambda: find(browser, "#input").get_attribute("value") ==
         "Please greet Ada warmly.")
    r = httpx.post(f"{served.url}/web/tools/read", json={"uri": "note://hello"})
    assert r.status_code == 403


def test_the_call_endpoint_is_the_pages_alone(served):
    url = served.url + "/web/tools/call"
    call = {"name": "add", "arguments": {"a": 1, "b": 1}}
    refused = httpx.post(url, json=call)  # a script: no Origin
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == ("tool calls come from the chat page of this "
                                                  "server only")
    unknown = httpx.post(url, json={"name": "rm"}, headers={"Origin": served.url})
    assert unknown.status_code == 404
    # the API never offers them: a request without tools has none
    httpx.post(served.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
    assert served.server.asked[-1]["tools"] is None


def made_call(served, name: str, arguments: dict, *, stream: bool = False) -> dict:
    """A reply of the model's that ends with this call of a page tool -> the call."""
    served.server.calls = [{"name": name, "arguments": arguments}]
    tools = [{"type": "function", "function": {"name": name, "parameters": {}}}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "tools": tools,
            "stream": stream}
    reply = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=60)
    if not stream:
        return reply.json()["choices"][0]["message"]["tool_calls"][0]
    chunks = [json.loads(line[6:]) for line in reply.text.splitlines()
              if line.startswith("data: {")]
    return next(c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                if c["choices"][0]["delta"].get("tool_calls"))


def test_a_forged_origin_runs_only_a_call_the_model_made_and_once(served):
    """Any non-browser client can set Origin: the endpoint runs a call only when the model
    emitted it (same id, name and arguments) in one of this server's replies, once."""
    url, page = served.url + "/web/tools/call", {"Origin": served.url}
    forged = httpx.post(url, json={"id": "call_0", "name": "add",
                                   "arguments": {"a": 1, "b": 1}}, headers=page)
    assert forged.status_code == 403
    assert forged.json()["error"]["message"] == (
        "the model made no such call (id, name and arguments of a call in one of this "
        "server's replies; each runs once)")
    for stream in (False, True):
        call = made_call(served, "add", {"a": 2, "b": 5}, stream=stream)
        ident = call["id"]
        other_args = httpx.post(url, json={"id": ident, "name": "add",
                                           "arguments": {"a": 2, "b": 6}}, headers=page)
        other_name = httpx.post(url, json={"id": ident, "name": "echo",
                                           "arguments": {"a": 2, "b": 5}}, headers=page)
        assert (other_args.status_code, other_name.status_code) == (403, 403)
        ran = httpx.post(url, json={"id": ident, "name": "add",
                                    "arguments": json.loads(call["function"]["arguments"])},
                         headers=page)
        assert ran.status_code == 200 and ran.json() == {"content": "7", "error": False,
                                                         "server": "fixture"}
        again = httpx.post(url, json={"id": ident, "name": "add",
                                      "arguments": {"a": 2, "b": 5}}, headers=page)
        assert again.status_code == 403


def test_serve_mcp_off_loopback_needs_an_api_key(tmp_path):
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    tools = tmp_path / "mcp.json"
    tools.write_text(json.dumps({"mcpServers": {"fixture": {"command": sys.executable,
                                                            "args": [SERVER]}}}))
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "absent"), "--mcp", str(tools),
                                       "--host", "0.0.0.0", "--port", str(free_port())])
    assert (result.exit_code, result.stderr) == (1, (
        "error: serve --mcp on 0.0.0.0 needs --api-key: the page's tools run on this machine, "
        "and anyone who can reach 0.0.0.0 could ask for them\n"))


def test_serve_reads_the_default_mcp_file_as_chat_web_does(tiny_q4_f32, tmp_path, monkeypatch):
    """With no --mcp, $QWEN_MLX_CONFIG/mcp.json gives the page its tools, as `chat --web`
    reads it; off loopback without --api-key they are not offered, and it says so."""
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    from .serving import serve_process

    config = tmp_path / "config"
    config.mkdir()
    (config / "mcp.json").write_text(json.dumps({"mcpServers": {"fixture": {
        "command": sys.executable, "args": [SERVER]}}}))
    monkeypatch.setenv("QWEN_MLX_CONFIG", str(config))
    port = free_port()
    proc = serve_process(tiny_q4_f32, port)
    try:
        offered = httpx.get(f"http://127.0.0.1:{port}/web/tools", timeout=60).json()["tools"]
        assert [(t["name"], t["server"]) for t in offered][:2] == [("add", "fixture"),
                                                                  ("echo", "fixture")]
    finally:
        proc.terminate()
        proc.wait(60)
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "absent"), "--host", "0.0.0.0",
                                       "--port", str(free_port())])
    assert result.stderr.splitlines()[0] == (
        f"the tools of {config / 'mcp.json'} are not offered: serving on 0.0.0.0 without "
        f"--api-key")
