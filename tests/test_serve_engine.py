"""The server's engine thread under faults and odd configurations: a failing step ends only
the requests it was running (500 / an error event naming the cause) and serving goes on;
quantized KV with the default --parallel serves one at a time instead of hanging; a client
that leaves while queued stops counting as waiting at once."""

from __future__ import annotations

import json
import math
import threading
import time

import httpx
import pytest

from qwen_mlx import load
from qwen_mlx.engine.batch import Batch
from qwen_mlx.serve import Server

from .serving import MODEL, Running


def poll(check, timeout: float = 60, every: float = 0.05):
    """Wait for ``check()`` to be true (a state, never a fixed time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("the state was not reached in time")


def chat(content: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "temperature": 0, **extra}


def test_a_failing_batch_step_fails_its_requests_and_the_server_goes_on(model, monkeypatch):
    armed = threading.Event()
    real_step = Batch.step

    def step(self):
        if armed.is_set():
            armed.clear()
            raise RuntimeError("[metal::malloc] injected out of memory")
        return real_step(self)

    monkeypatch.setattr(Batch, "step", step)
    running = Running(Server(model, MODEL))
    try:
        url = running.url
        results = {}

        def streamed(name: str) -> None:
            with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120,
                              json=chat(f"Story {name}", max_tokens=900, stream=True)) as r:
                results[name] = [line for line in r.iter_lines() if line]

        threads = [threading.Thread(target=streamed, args=(n,)) for n in "ab"]
        for t in threads:
            t.start()
        poll(lambda: len(running.server.worker.running) == 2)
        armed.set()
        for t in threads:
            t.join(120)
        for lines in results.values():
            assert lines[-1] == "data: [DONE]"
            error = json.loads(lines[-2][6:])["error"]
            assert error["code"] == "internal_error"
            assert error["message"] == "internal error: RuntimeError: [metal::malloc] " \
                                       "injected out of memory"
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["engine"] == {
            "state": "ok", "faults": 1,
            "last_fault": "RuntimeError: [metal::malloc] injected out of memory"}
        # a request that is not streamed gets a 500 in OpenAI's shape, once
        armed.set()
        r = httpx.post(f"{url}/v1/chat/completions", json=chat("Hi", max_tokens=8), timeout=120)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert r.json()["error"]["type"] == "server_error"
        # and then the same request is answered exactly as the model answers it alone
        r = httpx.post(f"{url}/v1/chat/completions", json=chat("Hi", max_tokens=8), timeout=120)
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == \
            model.generate("Hi", temperature=0, max_tokens=8).text
        r = httpx.post(f"{url}/api/chat", timeout=120, json={
            "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 8, "temperature": 0}})
        assert r.status_code == 200 and r.json()["done"]
    finally:
        running.stop()


def test_a_failing_lone_engine_fails_the_request_and_goes_on(model, monkeypatch):
    running = Running(Server(model, MODEL, parallel=1))
    real = model.stream
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "stream", failing)
    try:
        r = httpx.post(f"{running.url}/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}})
        assert r.status_code == 500 and r.json() == {
            "error": "internal error: ValueError: injected fault"}
        r = httpx.post(f"{running.url}/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}})
        assert r.status_code == 200 and r.json()["done"]
        assert httpx.get(f"{running.url}/health").json()["engine"]["faults"] == 1
    finally:
        running.stop()


@pytest.mark.parametrize("kv", [dict(kv_bits=8, kv_group_size=32), dict(kv_bits=4, kv_group_size=32),
                                dict(kv_bits=4, kv_group_size=32, kv_start=16),
                                dict(kv_bits=8, kv_group_size=32, kv_start=4)])
def test_every_kv_option_serves_with_the_default_parallel(tiny_kv, kv):
    """Quantized KV caches are batched, --kv-start's too: the default --parallel batches,
    and two requests at once are answered as each alone (a prefix-quantized cache once
    chose 8 slots and hung)."""
    llm = load(tiny_kv, context=1024, **kv)
    running = Running(Server(llm, MODEL))
    try:
        assert running.server.worker.batched and running.server.worker.parallel > 1
        out = []
        threads = [threading.Thread(target=lambda p=p: out.append((p, httpx.post(
            f"{running.url}/v1/chat/completions", json=chat(p, max_tokens=6),
            timeout=120).json()["choices"][0]["message"]["content"]))) for p in ("A", "B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(out) == [(p, llm.generate(p, temperature=0, max_tokens=6).text)
                               for p in ("A", "B")]
    finally:
        running.stop()


def test_a_client_that_leaves_the_queue_stops_waiting_at_once(model, monkeypatch):
    """One at a time (--parallel 1), the first reply held mid-way by the test: three queued
    requests whose clients give up are no longer waiting, and are ended, while it runs."""
    gate = threading.Event()
    real = model.stream

    def held(*args, **kwargs):
        for i, piece in enumerate(real(*args, **kwargs)):
            if i == 1:
                gate.wait(120)
            yield piece

    monkeypatch.setattr(model, "stream", held)
    running = Running(Server(model, MODEL, parallel=1))
    first = threading.Thread(target=lambda: httpx.post(
        f"{running.url}/v1/chat/completions", json=chat("Go on", max_tokens=40), timeout=300))
    try:
        url, worker = running.url, running.server.worker
        first.start()
        poll(lambda: worker.admitting is not None)

        def queued() -> None:
            try:
                httpx.post(f"{url}/v1/chat/completions", json=chat("Later", max_tokens=4),
                           timeout=httpx.Timeout(60, read=1.0))
            except httpx.ReadTimeout:
                pass  # gave up: the client closes its connection

        leavers = [threading.Thread(target=queued) for _ in range(3)]
        for t in leavers:
            t.start()
        poll(lambda: httpx.get(f"{url}/health").json()["waiting"] == 3)
        for t in leavers:
            t.join(60)
        poll(lambda: httpx.get(f"{url}/health").json()["waiting"] == 0)
        assert not gate.is_set() and worker.admitting is not None  # the first still runs
        # (the lone engine ends them between two of the held reply's pieces: release one)
        gate.set()
        poll(lambda: sum(j["cancelled"] for j in worker.finished) == 3)
    finally:
        gate.set()
        first.join(60)
        running.stop()


def test_a_long_scoring_request_lets_the_streams_beside_it_decode(tiny_q4_f32, monkeypatch):
    """An evaluation request's prompt is scored a chunk per engine step, so a stream that
    is decoding goes on between its chunks (it used to wait for the whole scoring), and
    the scores are those of one pass."""
    model = load(tiny_q4_f32, context=1024, prefill_step=32)
    log: list[str] = []  # in the engine thread's order
    real_step, real_scoring = Batch.step, model.scoring

    def step(self):
        log.append("step")
        return real_step(self)

    def scoring(*args, **kwargs):
        for part in real_scoring(*args, **kwargs):
            log.append("chunk")
            yield part

    monkeypatch.setattr(Batch, "step", step)
    monkeypatch.setattr(model, "scoring", scoring)
    running = Running(Server(model, MODEL))
    url, worker = running.url, running.server.worker
    stream = threading.Thread(target=lambda: httpx.post(
        f"{url}/v1/chat/completions", json=chat("Story", max_tokens=400), timeout=300))
    try:
        stream.start()
        poll(lambda: worker.running)
        prompt = " ".join(f"word{i}" for i in range(150))
        r = httpx.post(f"{url}/v1/completions", timeout=300, json={
            "model": MODEL, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0})
        assert r.status_code == 200, r.text
        got = r.json()["choices"][0]["logprobs"]["token_logprobs"]
        ids = model.encode(prompt, raw=True)
        assert len(got) == len(ids) and got[1:] == pytest.approx(
            [s.logprob for s in load(tiny_q4_f32, context=1024).score(ids)[1:]], abs=1e-4)
        first, last = log.index("chunk"), len(log) - 1 - log[::-1].index("chunk")
        chunks = log.count("chunk")
        assert chunks == 1 + math.ceil((len(ids) - 1) / 32)  # the first token's, then 32 each
        assert log[first:last].count("step") >= chunks - 2  # decoding went on between them
    finally:
        stream.join(300)
        running.stop()
