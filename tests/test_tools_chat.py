"""The tool loop where people and programs meet it: the terminal chat (ask, run, answer;
always, --allow-tool, the round limit, /tools), JSONL records, saved sessions, and the
command line's options (chat, chat --web, generate). Replies are scripted: random weights
never decide to call a tool."""

from __future__ import annotations

import json
import sys

from qwen_mlx import McpServers, Toolbox
from qwen_mlx.tools.loop import DENIED

from .test_tools import SERVER, add, reply_calling, servers, write  # noqa: F401 - a fixture


# -- the terminal chat's loop (a scripted model: each reply is given) ----------------------

class ScriptedSession:
    """A ChatSession whose replies are given texts (the transcript, tools and rounds are
    the real ones)."""

    def __new__(cls, model, replies, **kwargs):
        from qwen_mlx.chat import ChatSession
        from qwen_mlx.engine import Piece

        class Session(ChatSession):
            def _reply(self, on_prefill, constraint=None):
                self.prompts.append(self.conversation())
                return self._record((p for p in [Piece(self.replies.pop(0))]), [])

        session = Session(model, **kwargs)
        session.replies, session.prompts = list(replies), []
        return session


def terminal(session, lines, **kwargs):
    import io

    from rich.console import Console

    from qwen_mlx.chat.repl import Repl

    out, err = io.StringIO(), io.StringIO()
    Repl(session, out=Console(file=out, width=300), err=Console(file=err, width=300),
         quiet=True, **kwargs).run(lines)
    return out.getvalue(), err.getvalue()


CALL = reply_calling(("add", {"a": 2, "b": 3}))


def test_the_chat_asks_runs_and_answers_with_the_result(tiny_model):
    session = ScriptedSession(tiny_model, [CALL, "It is 5.", CALL, "Still 5."],
                              tools=Toolbox([add]))
    out, err = terminal(session, ["What is 2 + 3?", "maybe", "y", "Again?", "n"])
    assert [m["role"] for m in session.messages] == ["user", "assistant", "tool", "assistant",
                                                     "user", "assistant", "tool", "assistant"]
    assert [m["content"] for m in session.messages if m["role"] == "tool"] == ["5", DENIED]
    assert err.splitlines() == [
        'tool call: add {"a": 2, "b": 3}',
        "answer y (yes), n (no) or a (always, for this tool in this chat)",
        "tool result (add): 5",
        'tool call: add {"a": 2, "b": 3}',
        f"tool error (add): {DENIED}"]
    assert out.splitlines() == [CALL.splitlines()[0], *CALL.splitlines()[1:], "It is 5.",
                                *CALL.splitlines(), "Still 5."]
    # the tools are in every prompt, and the result goes back as a tool message
    assert session.prompts[1][-1] == {"role": "tool", "name": "add", "content": "5"}
    assert session.tool_specs()[0]["function"]["name"] == "add"


def test_always_allow_tool_and_the_round_limit(tiny_model):
    session = ScriptedSession(tiny_model, [CALL, "5.", CALL, "5 again."],
                              tools=Toolbox([add]))
    _, err = terminal(session, ["One", "a", "Two"])  # "always": the second call is not asked
    assert "answer y" not in err and err.count("tool result (add): 5") == 2
    session = ScriptedSession(tiny_model, [CALL] * 3, tools=Toolbox([add]))
    _, err = terminal(session, ["Loop"], allowed_tools=["add"], max_tool_rounds=2)
    assert err.count("tool result (add): 5") == 2
    assert err.splitlines()[-1] == ("stopped after 2 tool rounds (--max-tool-rounds); the last "
                                    "reply's calls were not run")
    assert [m["role"] for m in session.messages] == ["user"] + ["assistant", "tool"] * 2 + [
        "assistant"]


def test_tools_command_and_no_tools(tiny_model, servers):
    _, err = terminal(ScriptedSession(tiny_model, [], tools=Toolbox([servers])), ["/tools"])
    assert err.splitlines()[0] == "fixture (running): add, echo, sleep, ask, fail, big, die"
    _, err = terminal(ScriptedSession(tiny_model, []), ["/tools"])
    assert err.startswith("no tools: start the chat with --mcp FILE")


def test_jsonl_has_a_record_per_call_and_per_result(tiny_model):
    import io

    from rich.console import Console

    from qwen_mlx.chat.jsonl import JsonlRepl

    session = ScriptedSession(tiny_model, [CALL, "It is 5."], tools=Toolbox([add]))
    out = io.StringIO()
    JsonlRepl(session, out=Console(file=out), err=Console(file=io.StringIO()),
              quiet=True).run(["What is 2 + 3?", "y"])
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [list(r)[0] for r in records] == ["reply", "tool_call", "tool_result", "reply"]
    assert records[1] == {"tool_call": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    assert records[2] == {"tool_result": {"name": "add", "content": "5", "error": False}}
    assert records[3]["reply"] == "It is 5."


def test_a_saved_session_keeps_calls_and_results(tiny_model):
    from qwen_mlx.chat import store

    session = ScriptedSession(tiny_model, [CALL, "It is 5."], tools=Toolbox([add]))
    terminal(session, ["What is 2 + 3?", "y", "/save tools"])
    again = ScriptedSession(tiny_model, [])
    store.load(again, "tools")
    assert again.messages == session.messages


# -- the command line ----------------------------------------------------------------------

def chat_cli(model, *args, lines=("Hi",)):
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    return CliRunner().invoke(main, ["chat", str(model), "--temp", "0", "--max-tokens", "4",
                                     "-q", *map(str, args)],
                              input="".join(line + "\n" for line in lines))


def tiny_model_reply(model, tools_file) -> str:
    """The tiny model's greedy 4-token reply to "Hi" with the fixture server's tools."""
    from qwen_mlx import load

    with McpServers.from_files([tools_file]) as servers:
        return load(model).generate("Hi", tools=Toolbox([servers]).specs(), temperature=0,
                                    max_tokens=4).text


def test_chat_mcp_options(tiny_q4_f32, tmp_path, monkeypatch):
    bad = write(tmp_path, {"mcpServers": {"a": {"command": "x", "agrs": []}}}, "bad.json")
    result = chat_cli(tiny_q4_f32, "--mcp", bad)
    assert result.exit_code == 1
    assert result.output == f"error: {bad}: server 'a': unknown field agrs\n"
    result = chat_cli(tiny_q4_f32, "--allow-tool", "add")
    assert (result.exit_code, result.output) == (1, "error: --allow-tool needs tools: pass "
                                                    "--mcp FILE\n")
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    result = CliRunner().invoke(main, ["chat", str(tiny_q4_f32), "--web", "--mcp", str(bad)])
    assert (result.exit_code, result.output) == (1, f"error: {bad}: server 'a': unknown field "
                                                    f"agrs\n")  # read before the model loads
    good = write(tmp_path, {"mcpServers": {"fixture": {"command": sys.executable,
                                                       "args": [SERVER]}}}, "good.json")
    result = CliRunner().invoke(main, ["chat", str(tiny_q4_f32), "--web", "--mcp", str(good),
                                       "--allow-tool", "add"])
    assert result.exit_code == 1 and result.output.startswith(
        "error: --allow-tool applies to the terminal chat, not --web")
    result = CliRunner().invoke(main, ["generate", str(tiny_q4_f32), "-p", "Hi", "--raw",
                                       "--mcp", str(good)])
    assert (result.exit_code, result.output) == (
        1, "error: --mcp needs the chat template and a free reply: drop --raw\n")
    result = CliRunner().invoke(main, ["generate", str(tiny_q4_f32), "-p", "Hi", "--json",
                                       "--mcp", str(good), "--max-tokens", "4", "--temp", "0"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.splitlines()[-1])
    assert record["tool_rounds"] == 0 and record["messages"][0] == {"role": "user",
                                                                    "content": "Hi"}
    assert record["text"] == tiny_model_reply(tiny_q4_f32, good)
    # the default file is read when present; a server that does not start is one line
    monkeypatch.setenv("QWEN_MLX_CONFIG", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    write(tmp_path / "config", {"mcpServers": {"gone": {"command": "/nonexistent/server"}}},
          "mcp.json")
    result = chat_cli(tiny_q4_f32, "--allow-tool", "add", lines=["Hi", "/tools"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("MCP server 'gone' did not start: FileNotFoundError")
    assert lines[0].endswith("; the chat goes on without its tools")
    assert lines[1] == "--allow-tool add: no running server offers it"
    assert lines[-1].startswith("gone: did not start: FileNotFoundError")
    result = chat_cli(tiny_q4_f32, "--mcp", good, lines=["/tools restart fixture",
                                                          "/tools restart", "/tools"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "fixture restarted", "error: usage: /tools, or /tools restart NAME",
        "fixture (running): add, echo, sleep, ask, fail, big, die"]


def test_tool_choice_makes_the_first_reply_a_call_end_to_end(tiny_q4_f32, tmp_path,
                                                             monkeypatch):
    """generate --mcp --tool-choice NAME: a random model's reply to the message is that
    call (a grammar), it runs on the real server, its result (cut at 20,000 characters)
    goes back, and the reply to it is free. required/NAME need tools; a name no server
    offers is one line; none offers no tools; --web refuses it."""
    from click.testing import CliRunner

    from qwen_mlx import load
    from qwen_mlx.chat import ChatSession
    from qwen_mlx.cli import main

    monkeypatch.setenv("QWEN_MLX_HOME", str(tmp_path / "home"))
    good = write(tmp_path, {"mcpServers": {"fixture": {"command": sys.executable,
                                                       "args": [SERVER]}}}, "good.json")
    common = ["generate", str(tiny_q4_f32), "-p", "Go", "--no-think", "--temp", "0",
              "--max-tokens", "24", "--json"]
    result = CliRunner().invoke(main, [*common, "--mcp", str(good), "--tool-choice", "big",
                                       "--allow-tool", "big"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[-1])
    assert record["tool_rounds"] == 1
    user, call, tool, reply = record["messages"]
    assert call == {"role": "assistant", "content": '<tool_call>\n{"name": "big", '
                                                    '"arguments": {}}\n</tool_call>'}
    assert tool["role"] == "tool" and tool["content"].startswith("x" * 20_000 + "\n[cut: ")
    assert reply["role"] == "assistant" and "<tool_call>" not in reply["content"]
    for args, said in [
        (["--tool-choice", "required"], "--tool-choice required needs tools: pass --mcp FILE"),
        (["--mcp", str(good), "--tool-choice", "nope"],
         "--tool-choice nope: no running server offers a tool of that name (the tools: add, "
         "echo, sleep, ask, fail, big, die)")]:
        result = CliRunner().invoke(main, [*common, *args])
        assert (result.exit_code, result.output.splitlines()[-1]) == (1, f"error: {said}")
    result = CliRunner().invoke(main, ["chat", str(tiny_q4_f32), "--web", "--mcp", str(good),
                                       "--tool-choice", "none"])
    assert result.exit_code == 1 and result.output.startswith(
        "error: --tool-choice applies to the terminal chat, not --web")
    with McpServers.from_files([good]) as servers:
        box, model = Toolbox([servers]), load(tiny_q4_f32)

        def prompt(**kwargs) -> list[int]:
            session = ChatSession(model, **kwargs)
            session.messages.append({"role": "user", "content": "Hi"})
            return session.render()

        assert '"name": "big"' in model.tokenizer.decode(prompt(tools=box))
        assert prompt(tools=box, tool_choice="none") == prompt()
