"""Chat: cache reuse across turns, undo/retry, sessions on disk, Ctrl-C, context limits."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import termios
import time

import pytest
from rich.console import Console

from qwen_mlx.chat import ChatSession, store
from qwen_mlx.chat.repl import Repl
from qwen_mlx.engine import Piece
from qwen_mlx.engine.prompt_cache import common_prefix
from qwen_mlx.errors import QwenMlxError

GREEDY = dict(temperature=0.0, max_tokens=12)
TURNS = ["Hello, who are you?", "Tell me about the sea.", "And the mountains?"]


def reply(pieces):
    return "".join(p.text for p in pieces)


def make_repl(session, quiet=True):
    out, err = io.StringIO(), io.StringIO()
    repl = Repl(session, out=Console(file=out, width=200), err=Console(file=err, width=200),
                quiet=quiet)
    return repl, out, err


def test_three_turns_prefill_only_new_tokens_and_keep_an_exact_transcript(tiny_model):
    session = ChatSession(tiny_model, system="Be brief.", **GREEDY)
    replies = []
    for i, text in enumerate(TURNS):
        before = list(session.cache.tokens)
        session.messages.append({"role": "user", "content": text})
        prompt = session.render()
        session.messages.pop()
        replies.append(reply(session.send(text)))
        st = session.last_stats
        assert st.prompt_tokens == len(prompt)
        assert st.cached_tokens == min(common_prefix(before, prompt), len(prompt) - 1)
        assert st.prefill_tokens == len(prompt) - st.cached_tokens
        if i:  # all that was cached is reused: the previous prompt and reply (less its last,
            # never fed, token); only the new template lines and message are computed
            assert common_prefix(before, prompt) == len(before)
            assert st.prefill_tokens == len(prompt) - len(before)
            assert st.prefill_tokens == 1 + len(tiny_model.encode(text, raw=True)) + 10
    assert session.messages == [m for t, r in zip(TURNS, replies)
                                for m in ({"role": "user", "content": t},
                                          {"role": "assistant", "content": r})]
    # The same conversation computed from scratch gives the same last reply.
    fresh = tiny_model.generate(session.conversation()[:-1], **GREEDY)
    assert fresh.text == replies[-1]


def test_undo_and_retry(tiny_model):
    session = ChatSession(tiny_model, **GREEDY)
    first = reply(session.send(TURNS[0]))
    first_prompt = session.last_stats.prompt_tokens
    second = reply(session.send(TURNS[1]))
    cached = list(session.cache.tokens)
    session.undo()
    assert session.messages == [{"role": "user", "content": TURNS[0]},
                                {"role": "assistant", "content": first}]
    # Kept: the first prompt, the first reply and the next turn's opening, nothing after.
    probe = tiny_model.encode(session.messages + [{"role": "user", "content": ""}])
    assert session.cache.tokens == cached[:common_prefix(cached, probe)]
    assert len(session.cache) >= first_prompt + 11 and session.cache.offset == len(session.cache)
    again = reply(session.send(TURNS[1]))
    assert again == second
    assert reply(session.retry()) == second  # greedy: the same reply, from the cache
    assert session.last_stats.prefill_tokens == 1
    assert len(session.messages) == 4 and session.messages[-1]["content"] == second
    session.undo()
    session.undo()
    assert session.messages == [] and len(session.cache) == 0
    with pytest.raises(QwenMlxError, match="nothing to undo"):
        session.undo()
    with pytest.raises(QwenMlxError, match="nothing to retry yet"):
        session.retry()


def test_interrupted_reply_is_kept_and_marked_cut(tiny_model):
    session = ChatSession(tiny_model, temperature=0.0, max_tokens=200)
    pieces = session.send(TURNS[0])
    partial = "".join(next(pieces).text for _ in range(5))
    pieces.close()  # what the REPL does on Ctrl-C
    assert session.messages[-1] == {"role": "assistant", "content": partial, "cut": True}
    prompt = tiny_model.encode([{"role": "user", "content": TURNS[0]}])
    # The cache holds the prompt and the tokens generated before the cut, and knows it.
    assert session.cache.offset == len(session.cache) >= len(prompt) + 4
    assert session.cache.tokens[:len(prompt)] == prompt
    nxt = reply(session.send(TURNS[1]))
    assert nxt and session.last_stats.cached_tokens > 5


def test_context_limit_drops_the_oldest_exchange_and_keeps_the_system_prompt(tiny_model):
    session = ChatSession(tiny_model, system="Be brief.", max_context=160, temperature=0.0,
                          max_tokens=24)
    repl, out, err = make_repl(session)
    for text in TURNS * 2:
        repl.handle(text)
    assert "context full: dropped the oldest exchange" in err.getvalue()
    assert session.conversation()[0] == {"role": "system", "content": "Be brief."}
    assert session.messages[-2] == {"role": "user", "content": TURNS[-1]}
    assert len(session.render()) + 24 <= 160
    repl.handle("word " * 300)
    assert "error: the message is too long:" in err.getvalue()


def test_commands_and_bad_input(tiny_model):
    session = ChatSession(tiny_model, **GREEDY)
    repl, out, err = make_repl(session, quiet=False)
    for line in ["", "   ", "/bogus", "/think maybe", "/stats", "/load nothing-here", "/save"]:
        assert repl.handle(line) is True
    assert err.getvalue().splitlines() == [
        "error: unknown command /bogus (/help lists them)",
        "error: usage: /think on|off",
        "no reply yet",
        f"error: no saved session 'nothing-here' "
        f"({store.session_path('nothing-here')})",
        "error: a session needs a name: /save NAME"]
    assert out.getvalue() == ""
    repl.handle("/system You are a pirate.")
    repl.handle("Hi")
    assert session.conversation()[0]["content"] == "You are a pirate."
    assert " generated at " in err.getvalue().splitlines()[-1]
    assert repl.handle("/exit") is False


def test_corrupt_and_mismatched_session_files(tiny_model, tiny_q4, tmp_path):
    from qwen_mlx import load

    session = ChatSession(tiny_model, **GREEDY)
    reply(session.send("Hi"))
    path = store.save(session, str(tmp_path / "s1"))
    assert path == tmp_path / "s1.safetensors" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["s1.safetensors"]  # no temp file left
    other = ChatSession(load(tiny_q4), **GREEDY)
    with pytest.raises(QwenMlxError) as e:
        store.load(other, str(path))
    assert str(e.value) == (f"{path} was saved with another model ({tiny_model.path}); this "
                            f"chat runs {tiny_q4}")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(QwenMlxError) as e:
        store.load(session, str(bad))
    assert str(e.value) == f"{bad} is not a readable qwen-mlx session"
    assert session.messages[0]["content"] == "Hi"  # a failed load changes nothing


def run_chat(model, lines, home, *args):
    env = {**os.environ, "QWEN_MLX_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "qwen_mlx", "chat", str(model), "--temp", "0",
                           "--max-tokens", "12", *args], input="".join(l + "\n" for l in lines),
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_save_then_load_in_a_new_process_gives_the_same_next_reply(tiny_model, tiny_q4_f32,
                                                                   tmp_path):
    unbroken = ChatSession(tiny_model, **GREEDY)
    expected = [reply(unbroken.send(t)) for t in TURNS]
    unbroken_prefill = unbroken.last_stats.prefill_tokens
    first = run_chat(tiny_q4_f32, TURNS[:2] + ["/save talk"], tmp_path, "-q")
    assert first.stdout.splitlines() == expected[:2]
    assert (tmp_path / "sessions" / "talk.safetensors").is_file()
    second = run_chat(tiny_q4_f32, [TURNS[2], "/stats"], tmp_path, "--load", "talk", "-q")
    assert second.stdout.splitlines() == [expected[2]]
    stats = second.stderr.strip().splitlines()[-1]
    prefilled = int(stats.split("(")[1].split(" prefilled")[0])
    # The resumed session reuses its saved cache exactly as the unbroken one reused its own.
    assert prefilled == unbroken_prefill < len(tiny_model.encode(unbroken.conversation()[:-1]))


def line_editor_has(child, within: float = 60) -> None:
    """Wait until the line editor has the terminal (canonical mode off: a control key is
    then a key press, not a signal from the tty driver)."""
    deadline = time.time() + within
    while termios.tcgetattr(child.child_fd)[3] & termios.ICANON:
        assert time.time() < deadline, "the line editor never took the terminal"
        time.sleep(0.01)


@pytest.mark.parametrize("leave", ["c", "d"])
def test_ctrl_c_in_a_terminal_cuts_the_reply_and_the_chat_goes_on(tiny_model, tiny_q4_f32,
                                                                 tmp_path, leave):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "QWEN_MLX_HOME": str(tmp_path), "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "qwen_mlx", "chat", str(tiny_q4_f32), "--temp",
                                           "0", "--max-tokens", "100000", "-q"],
                          env=env, encoding="utf-8", timeout=120, dimensions=(40, 200),
                          # a runner started in the background (`cmd &` without job control)
                          # ignores SIGINT, and children inherit that: give Ctrl-C back
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    opening = tiny_model.generate("Tell me a very long story", **GREEDY).text
    child.expect(">>> ")
    child.sendline("Tell me a very long story")
    # The reply itself is streaming (not the line editor's escape codes: until it has given
    # the terminal back, Ctrl-C is a key press, not a signal).
    child.expect(re.escape(opening[:12].strip()))
    child.sendintr()
    child.expect(r"\[reply cut\]")
    child.expect(">>> ")
    child.sendline("/save after")
    child.expect("saved to")
    child.expect(">>> ")
    line_editor_has(child)  # else the key goes to the tty driver
    child.sendcontrol(leave)  # at the prompt, Ctrl-C and Ctrl-D both leave
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    session = ChatSession(tiny_model)
    store.load(session, str(tmp_path / "sessions" / "after.safetensors"))
    first, cut = session.messages
    assert first == {"role": "user", "content": "Tell me a very long story"}
    assert cut["cut"] is True and cut["content"].startswith(opening[:12].strip())
    assert len(session.cache) > len(tiny_model.encode("Tell me a very long story"))


def test_think_switch_and_dimmed_reasoning(tiny_model):
    session = ChatSession(tiny_model, **GREEDY)
    session.messages.append({"role": "user", "content": "Hi"})
    assert not tiny_model.decode(session.render()).endswith("<think>\n\n</think>\n\n")
    repl, out, err = make_repl(session)
    repl.handle("/think off")
    assert tiny_model.decode(session.render()).endswith("<think>\n\n</think>\n\n")
    assert err.getvalue() == "thinking off\n"
    from qwen_mlx.engine import Piece

    shown = io.StringIO()
    repl.out = Console(file=shown, force_terminal=True, color_system="standard", width=200)
    repl.show(iter([Piece("<think>"), Piece("\nhmm"), Piece("</think>"), Piece("\n\nYes.")]))
    dim, plain = "\x1b[2m", "\x1b[0m"
    assert shown.getvalue() == f"{dim}<think>{plain}\n{dim}hmm{plain}{dim}</think>{plain}\n\nYes.\n"


def test_jsonl_mode_answers_every_line_with_one_object(tiny_model, tiny_q4_f32, tmp_path):
    """A script reading line by line stays in step: replies with newlines, refused messages,
    commands and blank lines each get exactly one JSON object."""
    expected = ChatSession(tiny_model, **GREEDY)
    first, second = reply(expected.send(TURNS[0])), reply(expected.send(TURNS[1]))
    proc = run_chat(tiny_q4_f32, [TURNS[0], "", "/save /proc/x", "/bogus", "/stats",
                                  TURNS[1], "/undo"], tmp_path, "--jsonl")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 7
    assert records[0]["reply"] == first and records[0]["finish_reason"] == "length"
    assert records[0]["stats"]["generated_tokens"] == 12 and records[0]["notices"] == []
    assert records[1:4] == [
        {"error": "empty message"},
        {"error": "cannot save the session to /proc/x.safetensors: cannot write in /proc"},
        {"error": "unknown command /bogus (/help lists them)"}]
    assert records[4] == {"command": "stats", "stats": records[0]["stats"]}
    assert records[5]["reply"] == second
    assert records[6]["command"] == "undo" and records[6]["message"].startswith(
        "dropped the last exchange; ")
    assert proc.stderr == ""


def test_stop_strings_end_the_reply(tiny_model, tiny_q4_f32, tmp_path):
    full = reply(ChatSession(tiny_model, **GREEDY).send(TURNS[0]))
    stop = full[len(full) // 2:len(full) // 2 + 2]
    proc = run_chat(tiny_q4_f32, [TURNS[0]], tmp_path, "--jsonl", "--stop", stop)
    record = json.loads(proc.stdout)
    assert record["reply"] == full[:full.index(stop)]
    assert record["finish_reason"] == "stop"


def test_the_history_file_failing_does_not_end_the_chat(tiny_model, tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the home folder should be")
    monkeypatch.setenv("QWEN_MLX_HOME", str(blocked))
    repl, _, err = make_repl(ChatSession(tiny_model, **GREEDY))
    history = repl._history()
    history.append_string("Hi")  # kept in memory
    assert list(history.get_strings()) == ["Hi"]
    assert err.getvalue().startswith("history not kept: ")


def test_notices_and_progress_travel_with_the_reply(tiny_model):
    """No mailbox on the session: a dropped exchange arrives as the reply's first piece, and
    the prefill callback is passed with the message."""
    session = ChatSession(tiny_model, max_context=160, temperature=0.0, max_tokens=24)
    for text in TURNS:
        reply(session.send(text))
    progress = []
    pieces = list(session.send("word " * 40, on_prefill=lambda done, total:
                               progress.append((done, total))))
    notices = [p.notice for p in pieces if p.notice]
    assert notices and pieces[:len(notices)] == [Piece("", notice=n) for n in notices]
    assert all(n.startswith("context full: dropped the oldest exchange (") for n in notices)
    assert progress and progress[-1][0] == progress[-1][1] - 1  # all but the last token
    assert session.messages[-1]["content"] == "".join(p.text for p in pieces)


def test_chat_web_serves_the_page_and_opens_the_browser_on_it(tmp_path, tiny_q4_f32):
    """`chat --web`: the browser is opened (here a $BROWSER script that writes down its
    address) once the port answers; the page and the API are there; sampling options are
    the served defaults; Ctrl-C stops it cleanly."""
    import httpx

    from .serving import free_port

    opened = tmp_path / "opened"
    browser = tmp_path / "browser.sh"
    browser.write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    browser.chmod(0o755)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qwen_mlx", "chat", str(tiny_q4_f32),
                             "--web", "--port", str(port), "--temp", "0.25"],
                            env={**os.environ, "BROWSER": str(browser)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not opened.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        assert proc.poll() is None, proc.communicate()
        assert opened.read_text().strip() == url
        page = httpx.get(url, headers={"Accept": "text/html"})
        assert page.status_code == 200 and '<script src="/web/chat.js"' in page.text
        shown = httpx.post(url + "api/show", json={"model": tiny_q4_f32.name}).json()
        assert shown["parameters"].startswith("temperature 0.25\n")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"chat page: {url}" in err


@pytest.mark.parametrize("args, message", [
    (["--web", "--system", "Be brief."], "error: --system applies to the terminal chat, "
                                         "not --web (the page sets the system prompt and "
                                         "thinking in Settings)\n"),
    (["--port", "8080"], "error: --port applies with --web (the terminal chat serves "
                         "nothing)\n"),
])
def test_chat_web_refuses_what_it_would_ignore(tiny_q4_f32, args, message):
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    result = CliRunner().invoke(main, ["chat", str(tiny_q4_f32), *args], input="")
    assert result.exit_code == 1
    assert result.output == message
