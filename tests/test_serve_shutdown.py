"""Stopping `qwen-mlx serve` (and `chat --web`) with a signal: exit 0 every time, idle,
mid-stream and right after a stream's first chunk, on a checkpoint slow enough per step that
the signal lands while the engine computes. Before the fix the process aborted at exit
(``terminate called without an active exception``, -6) when MLX objects were collected in
another thread during finalization, and the signal handler started a thread itself."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from .serving import free_port, serve_process

SIGNALS = [signal.SIGINT, signal.SIGTERM]


def stream_body(folder, max_tokens: int = 1900) -> dict:
    return {"model": folder.name, "messages": [{"role": "user", "content": "Go on"}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}


def content_chunks(lines):
    """The stream's data events that carry text."""
    for line in lines:
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            if "choices" in event and event["choices"] and \
                    event["choices"][0]["delta"].get("content"):
                yield event


def stop(proc, sig) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("when", ["idle", "first chunk", "mid-stream"])
def test_a_signal_exits_0_five_times_in_a_row(small_q4_f32, when):
    codes, errors = [], []
    for run in range(5):
        sig = SIGNALS[run % 2]
        port = free_port()
        proc = serve_process(small_q4_f32, port, "--shutdown-timeout", "1")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        if when == "idle":  # after one request, so the engine has run
            r = httpx.post(url, json={**stream_body(small_q4_f32, 4), "stream": False},
                           timeout=120)
            assert r.status_code == 200
            code = stop(proc, sig)
        else:
            with httpx.stream("POST", url, json=stream_body(small_q4_f32), timeout=120) as r:
                lines = r.iter_lines()
                chunks = content_chunks(lines)
                for _ in range(1 if when == "first chunk" else 8):
                    next(chunks)
                proc.send_signal(sig)
                rest = [line for line in lines if line]
            code = proc.wait(60)
            assert rest[-1] == "data: [DONE]"
            # cut at the 1 s grace's end: the last event before [DONE] says why
            assert json.loads(rest[-2][6:])["error"]["code"] == "shutting_down"
        err = proc.stderr.read()
        codes.append(code)
        if code != 0:
            errors.append(err[-500:])
    assert codes == [0] * 5, errors


def test_chat_web_exits_0_on_ctrl_c_after_a_reply(small_q4_f32):
    for run in range(2):
        port = free_port()
        proc = serve_process(small_q4_f32, port, command="chat")
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                       json={**stream_body(small_q4_f32, 4), "stream": False}, timeout=120)
        assert r.status_code == 200
        assert stop(proc, signal.SIGINT) == 0, proc.stderr.read()
