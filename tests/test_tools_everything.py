"""The reference MCP server, `@modelcontextprotocol/server-everything` from the npm registry
(run by npx, as its users run it), against our client: the capabilities it tests (roots,
log messages), content that is not text (images, resource links), and the terminal chat's
roots. Skipped, with the reason, where Node's npx is missing
or the registry cannot be reached."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from qwen_mlx import McpServers, Toolbox
from qwen_mlx.tools.config import ServerSpec
from qwen_mlx.tools.loop import Call
from qwen_mlx.tools.toolbox import ToolResult

PACKAGE = "@modelcontextprotocol/server-everything"
EVERYTHING = ServerSpec("everything", command="npx", args=("-y", PACKAGE))


@pytest.fixture(scope="module")
def npx_ready():
    """npx present and the package fetched once (into npm's cache)."""
    if shutil.which("npx") is None:
        pytest.skip("Node's npx is not installed (server-everything runs with it)")
    try:
        got = subprocess.run(["npm", "view", PACKAGE, "version"], capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"the npm registry cannot be reached: {e}")
    if got.returncode != 0:
        pytest.skip(f"the npm registry cannot be reached: {got.stderr.strip()[:200]}")


@pytest.fixture(scope="module")
def everything(npx_ready, tmp_path_factory):
    home, root = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("root")
    notes = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("QWEN_MLX_HOME", str(home))
        servers = McpServers([EVERYTHING], on_note=notes.append, start_timeout=300,
                             roots=[root], sampling=True, forms=True)
    with servers as s:
        s.notes, s.home, s.root = notes, home, root
        yield s


def test_its_tools_its_roots_and_content_that_is_not_text(everything):
    """The roots capability is declared, so it offers get-roots-list and gets our folder;
    images and resource links reach the model described (type, URI, size), not as an empty
    '[resource ]'."""
    assert everything.status == {"everything": "running"}
    box = Toolbox([everything])
    names = [t.name for t in box.tools]
    assert {"echo", "get-sum", "get-roots-list", "get-tiny-image"} <= set(names)
    assert box.call("get-sum", {"a": 2, "b": 3}).text == "The sum of 2 and 3 is 5."
    roots = box.call("get-roots-list", {}).text
    assert f"URI: {everything.root.resolve().as_uri()}" in roots
    image = box.call("get-tiny-image", {}).text
    assert "[image: image/png, " in image and " bytes]" in image
    links = box.call("get-resource-links", {"count": 2}).text
    assert "[resource link: Blob Resource 1 (demo://resource/dynamic/blob/1, " in links


def test_a_long_calls_progress_is_heard_and_shown(everything, tiny_model):
    """We send a progress token with every call: the long-running operation's steps come
    back, and the chat shows them (a line each off a terminal, at most one a second and
    the last)."""
    import io

    from rich.console import Console

    from qwen_mlx.chat import ChatSession
    from qwen_mlx.chat.repl import Repl

    box, heard = Toolbox([everything]), []
    result = box.call("trigger-long-running-operation", {"duration": 2, "steps": 4},
                      on_progress=lambda *report: heard.append(report))
    assert not result.error, result.text
    assert heard == [(float(n), 4.0, None) for n in (1, 2, 3, 4)]
    shown = io.StringIO()
    repl = Repl(ChatSession(tiny_model, tools=box), out=Console(file=io.StringIO()),
                err=Console(file=shown, width=200))
    for n in (1, 2, 4):
        repl.tool_progress(Call("slow", {}), float(n), 4.0, None)
    assert shown.getvalue().splitlines() == ["tool progress (slow): 1/4",
                                             "tool progress (slow): 4/4"]


def test_its_resources_and_prompts_in_the_chat(everything, tiny_model):
    """/resources and /prompts list them; /resource URI attaches one to the next message
    (as /file puts a file); /prompt NAME KEY=VALUE sends the filled prompt; a name that
    no server has is one line."""
    import io

    from rich.console import Console

    from qwen_mlx.chat import ChatSession
    from qwen_mlx.chat.repl import Repl

    err = io.StringIO()
    session = ChatSession(tiny_model, tools=Toolbox([everything]), max_tokens=2,
                          temperature=0)
    doc = "demo://resource/static/document/architecture.md"
    Repl(session, out=Console(file=io.StringIO()), err=Console(file=err, width=300),
         quiet=True).run(["/resources", "/prompts", f"/resource {doc}", "Summarize it",
                          "/prompt args-prompt city=Paris", "/resource demo://nope",
                          "/prompt nope", "/prompt"])
    said = err.getvalue().splitlines()
    assert f"everything: {doc}  architecture.md (text/markdown)" in said
    assert "everything: args-prompt(city, state?)  A prompt with two arguments, one " \
           "required and one optional" in said
    attached = [line for line in said if line.startswith("attached ")]
    assert len(attached) == 1 and attached[0].startswith(f"attached {doc} (")
    assert said[-3:] == [
        "error: no running MCP server lists the resource 'demo://nope' (/resources lists "
        "them)",
        "error: no running MCP server offers a prompt named 'nope' (/prompts lists them)",
        "error: usage: /prompt NAME [KEY=VALUE ...] (/prompts lists them)"]
    users = [m["content"] for m in session.messages if m["role"] == "user"]
    assert users[0].startswith(f"{doc}:\n\n# ") and users[0].endswith("\n\nSummarize it")
    assert users[1] == "What's weather in Paris?"


def test_its_sampling_request_is_asked_and_answered_by_our_model(everything, tiny_model):
    """sampling/createMessage: shown, asked like a tool call, answered by the chat's model
    within the server's token limit (5 here: the reply stops at maxTokens); a "no" is an
    error the server reads."""
    import io

    from rich.console import Console

    from qwen_mlx.chat import ChatSession
    from qwen_mlx.chat.repl import Repl

    box, err = Toolbox([everything]), io.StringIO()
    assert "trigger-sampling-request" in [t.name for t in box.tools]  # declared: offered
    repl = Repl(ChatSession(tiny_model, tools=box), out=Console(file=io.StringIO()),
                err=Console(file=err, width=300), quiet=True)
    answers = iter(["maybe", "y", "n"])
    repl._ask_line = lambda label: next(answers)
    first = box.call("trigger-sampling-request", {"prompt": "Say hi", "maxTokens": 5})
    second = box.call("trigger-sampling-request", {"prompt": "Say hi", "maxTokens": 5})
    sampled = json.loads(first.text.split("\n", 1)[1])
    assert (sampled["model"], sampled["stopReason"]) == ("qwen-mlx", "maxTokens")
    said = err.getvalue().splitlines()
    asked = ("MCP server everything asks the model for a reply (1 message, up to 5 tokens): "
             "Resource trigger-sampling-request context: Say hi")
    assert said[:3] == [asked, "answer y (yes), n (no) or a (always, for this server)",
                        f"reply for everything: {' '.join(sampled['content']['text'].split())}"]
    assert said[3] == asked
    assert second == ToolResult("error: MCP error -32600: the user declined the sampling "
                                "request", True)


def test_its_form_is_asked_field_by_field_declined_and_cancelled(everything, tiny_model):
    """elicitation/create: each field asked with its type or choices, a wrong answer asked
    again with what is expected, an empty answer skips an optional field; /decline and
    /cancel answer the form as such."""
    import io

    from rich.console import Console

    from qwen_mlx.chat import ChatSession
    from qwen_mlx.chat.repl import Repl

    box, err = Toolbox([everything]), io.StringIO()
    repl = Repl(ChatSession(tiny_model, tools=box), out=Console(file=io.StringIO()),
                err=Console(file=err, width=300), quiet=True)
    answers = iter(["Ada", "maybe", "yes", "", "", "", "", "x", "7", "5000", "12.5", "Bob",
                    "Joey", "Guitar, Nope", "Guitar", "", "", "", "/decline", "/cancel"])
    asked = []
    repl._ask_line = lambda label: asked.append(label) or next(answers)
    results = [box.call("trigger-elicitation-request", {}) for _ in range(3)]
    accepted = json.loads(results[0].text.split("Raw result: ", 1)[1])
    assert accepted == {"action": "accept", "content": {
        "name": "Ada", "check": True, "integer": 7, "number": 12.5,
        "untitledSingleSelectEnum": "Joey", "untitledMultipleSelectEnum": ["Guitar"]}}
    assert results[1].text.endswith('"action": "decline"\n}')
    assert results[2].text.endswith('"action": "cancel"\n}')
    assert asked[0] == "  String (string): "
    assert asked[1] == "  Boolean (boolean, optional: empty skips it): "
    assert [line for line in err.getvalue().splitlines() if line.startswith("answer ")] == [
        "answer yes or no", "answer a whole number", "answer a number from 0 to 1000",
        "answer one of Monica, Rachel, Joey, Chandler, Ross, Phoebe",
        "answer some of Guitar, Piano, Violin, Drums, Bass, separated by commas"]


def test_its_log_messages_go_to_its_log(everything):
    """notifications/message: every one into the server's log; a warning or worse also as
    one line, at most one every 5 s."""
    box = Toolbox([everything])
    assert box.call("toggle-simulated-logging", {}).text.startswith("Started simulated")
    log = everything.home / "mcp-logs" / "everything.log"
    deadline = time.monotonic() + 60
    while "[qwen-mlx] log message [" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "[qwen-mlx] log message [" in log.read_text()
    box.call("toggle-simulated-logging", {})
    for note in everything.notes:
        assert note.startswith("MCP server 'everything' (") and note.endswith(
            f"(its log: {log})")


def test_the_terminal_chat_gives_it_roots(npx_ready, tiny_q4_f32, tmp_path, monkeypatch):
    """chat --mcp-root DIR declares roots (the terminal's default is the current folder), so
    the server offers its roots tool; the page's default is none."""
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    monkeypatch.setenv("QWEN_MLX_HOME", str(tmp_path / "home"))
    servers = tmp_path / "mcp.json"
    servers.write_text(json.dumps({"mcpServers": {"everything": {
        "command": "npx", "args": ["-y", PACKAGE]}}}))
    result = CliRunner().invoke(main, [
        "chat", str(tiny_q4_f32), "-q", "--mcp", str(servers), "--mcp-start-timeout", "300",
        "--mcp-root", str(tmp_path)], input="/tools\n")
    assert result.exit_code == 0, result.output
    (listed,) = [line for line in result.output.splitlines()
                 if line.startswith("everything (running): ")]
    assert "get-roots-list" in listed.split(": ", 1)[1].split(", ")
    with McpServers([EVERYTHING], start_timeout=300) as page:  # no roots
        assert page.status == {"everything": "running"}
        assert "get-roots-list" not in [t.name for t in page.tools]


def test_its_sampling_request_is_asked_in_the_page(everything, model, browser):
    """The chat page, serving its tools: the request for a reply shows under the reply (its
    size and last message); Allow has the served model answer it through the batch, Deny is
    an error the server reads, Always answers that server's later requests unasked. Before,
    the page declared no sampling and the tool failed."""
    from .serving import MODEL, Running
    from .webpage import (Scripted, done, errors, find, find_all, fresh, js, replies,
                          type_message, wait)

    kept = everything.sampler, everything.elicitor  # the page's server sets its own
    running = Running(Scripted(model, MODEL, page_tools=Toolbox([everything])))
    try:
        scripted = running.server
        scripted.last_tokens = 500  # its 20 tools' schemas are longer than the context
        fresh(browser, running.url)
        wait(browser, lambda: "trigger-sampling-request" in js(
            browser, "return document.getElementById('tools-note').textContent"))
        for answer in ("allow", "deny", "always", None):  # None: asked no more
            scripted.calls = [{"name": "trigger-sampling-request",
                               "arguments": {"prompt": "Say hi", "maxTokens": 5}}]
            scripted.replies = [["Let me ask."]] + ([] if answer == "deny" else [["Hi."]]) \
                + [["Done."]]
            before, asked = len(replies(browser)), len(scripted.asked)
            type_message(browser, "Sample")
            wait(browser, lambda: find_all(browser, ".approval"))
            find(browser, ".approval .allow-once").click()
            if answer is not None:
                wait(browser, lambda: find_all(browser, ".tool-sample"))
                assert find(browser, ".tool-sample p").text == (
                    "everything asks the model for a reply (1 message, up to 5 tokens): "
                    "Resource trigger-sampling-request context: Say hi")
                find(browser, f".tool-sample .sample-{answer}").click()
            wait(browser, lambda: done(browser) and len(replies(browser)) == before + 2)
            assert not find_all(browser, ".tool-sample")
            result = scripted.asked[-1]["messages"][-1]
            assert result["role"] == "tool"
            if answer == "deny":
                assert result["content"] == "error: MCP error -32600: the user declined the " \
                                            "sampling request"
                continue
            sampled = json.loads(result["content"].split("\n", 1)[1])
            assert (sampled["model"], sampled["content"]["text"]) == ("qwen-mlx", "Hi.")
            assert scripted.asked[asked + 1]["messages"][-1] == {
                "role": "user", "content": "Resource trigger-sampling-request context: Say hi"}
            assert scripted.asked[asked + 1]["thinking"] is False
        assert errors(browser) == []
    finally:
        running.stop()
        everything.sampler, everything.elicitor = kept
