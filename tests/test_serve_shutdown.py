"""Stopping `qwen-mlx serve` (and `chat --web`) with a signal: exit 0 every time, idle,
mid-stream and right after a stream's first chunk, on a checkpoint slow enough per step that
the signal lands while the engine computes. Before the fix the process aborted at exit
(``terminate called without an active exception``, -6) when MLX objects were collected in
another thread during finalization, and the signal handler started a thread itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

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


def slow_compiler_probe(folder) -> tuple[dict, object]:
    """A ``g++`` first on PATH that logs MLX's compiler probe (``g++ --version``) and makes
    it last 3 s, then runs the real compiler: the window in which ``system()`` ignores
    SIGINT, widened so that a signal lands in it every time."""
    real = shutil.which("g++")
    if real is None:
        pytest.skip("no g++: MLX's CPU backend then compiles nothing and probes nothing")
    folder.mkdir()
    log = folder / "probes.log"
    fake = folder / "g++"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo probe >> "{log}"; '
                    f'sleep 3; fi\nexec "{real}" "$@"\n')
    fake.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}, log


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_during_the_first_decode_is_not_lost(small_q4_f32, tmp_path, sig):
    """MLX's compiler probe runs while the model loads, so no signal can fall into the window
    where system() ignores SIGINT (before: the first decode ran it, the signal was lost, the
    reply streamed to its end and the server stayed up)."""
    env, log = slow_compiler_probe(tmp_path / "bin")
    port = free_port()
    proc = serve_process(small_q4_f32, port, "--shutdown-timeout", "1", env=env)
    try:
        assert log.read_text() == "probe\n"  # already done by the time /health answers
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        with httpx.stream("POST", url, json=stream_body(small_q4_f32), timeout=120) as r:
            lines = (line for line in r.iter_lines() if line)
            assert next(lines).startswith("data: ")  # the first event, before any decode
            deadline = time.monotonic() + 60  # before: the probe starts now, at the decode
            while not log.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(sig)
            rest = list(lines)
        assert proc.wait(60) == 0, proc.stderr.read()[-500:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["error"]["code"] == "shutting_down"
    assert log.read_text() == "probe\n"
