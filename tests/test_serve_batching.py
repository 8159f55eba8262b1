"""`qwen-mlx serve` under many clients: continuous batching (texts equal to lone runs),
cancellation of abandoned requests, time limits, log-probabilities, penalties, the new
endpoints, and the shutdown sequence of the real command."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time

import httpx
import ollama
import openai
import pytest

from qwen_mlx.serve import Server

from .serving import MODEL, Running, free_port, serve_process

PROMPTS = [f"Tell me about the number {i}." + " Please." * (i % 3) for i in range(8)]


def solo(model, content: str, **kw) -> str:
    return model.generate([{"role": "user", "content": content}], **kw).text


def test_eight_concurrent_async_clients_get_their_lone_texts(model, running):
    """8 streams at once through the async openai client: each text is exactly what the
    request gets alone (greedy, and seeded sampling), and they really ran together."""
    requests = [dict(temperature=0, max_tokens=24) for _ in PROMPTS[:6]] + \
        [dict(temperature=1.0, seed=11, max_tokens=24), dict(temperature=0.8, seed=3,
                                                             max_tokens=24)]
    expected = [solo(model, p, **kw) for p, kw in zip(PROMPTS, requests)]

    async def one(client, prompt, kw) -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True, **kw)
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        return await asyncio.gather(*(one(client, p, kw) for p, kw in zip(PROMPTS, requests)))

    assert running.server.worker.parallel == 8  # from the memory plan
    peak = []
    watch = threading.Thread(target=lambda: [peak.append(len(running.server.worker.running))
                                             or time.sleep(0.01) for _ in range(300)])
    watch.start()
    texts = asyncio.run(main())
    watch.join()
    assert texts == expected
    assert max(peak) > 1  # decoded side by side, not one after another


def test_more_requests_than_parallel_wait_their_turn(model):
    running = Running(Server(model, MODEL, parallel=2))
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)

        def ask(prompt: str) -> str:
            return client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0,
                max_tokens=12).choices[0].message.content

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(5) as pool:
            texts = list(pool.map(ask, PROMPTS[:5]))
        assert texts == [solo(model, p, temperature=0, max_tokens=12) for p in PROMPTS[:5]]
    finally:
        running.stop()


def test_a_request_queued_when_the_shutdown_begins_gets_the_grace(model):
    """One at a time: the second request waits for the first. Shutdown begins (closing,
    the grace not yet over): the waiting one was ended at once, though its client may
    already hold its first event; now it starts when the first ends and finishes, all
    within the grace. New requests are refused."""
    from qwen_mlx.serve.worker import ShuttingDown

    server = Server(model, MODEL, parallel=1)
    worker = server.worker

    def request(prompt: str, tokens: int):
        return model.request([{"role": "user", "content": prompt}], temperature=0,
                             max_tokens=tokens)

    async def text_of(pieces) -> str:
        return "".join([p.text async for p in pieces])

    async def run():
        first = worker.generate(request(PROMPTS[0], 24))
        head = await first.__anext__()  # running
        second = asyncio.ensure_future(text_of(worker.generate(request(PROMPTS[1], 6))))
        while not worker.waiting:  # the second is queued behind the first
            await asyncio.sleep(0.01)
        worker.closing.set()
        with pytest.raises(ShuttingDown):
            await text_of(worker.generate(request(PROMPTS[2], 2)))
        return head.text + await text_of(first), await second

    try:
        first, second = asyncio.run(run())
    finally:
        worker.close()
    assert first == solo(model, PROMPTS[0], temperature=0, max_tokens=24)
    assert second == solo(model, PROMPTS[1], temperature=0, max_tokens=6)


def test_a_non_streaming_client_that_times_out_frees_the_engine(model, running):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Go on forever"}],
            "max_tokens": 900, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):  # Ollama's stream: false too
        httpx.post(f"{running.url}/api/chat", timeout=0.5, json={
            "model": MODEL, "stream": False, "messages": body["messages"],
            "options": {"num_predict": 900, "temperature": 0}})
    r = httpx.post(f"{running.url}/v1/chat/completions", timeout=30, json={
        **body, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200
    gone = [j for j in running.server.worker.finished if j["cancelled"]][-2:]
    assert len(gone) == 2 and all(j["generated"] < 900 for j in gone)


@pytest.mark.parametrize("parallel", [1, 4])
def test_request_timeout_ends_a_reply_as_length(model, parallel):
    running = Running(Server(model, MODEL, parallel=parallel, time_limit=0.3))
    try:
        r = httpx.post(f"{running.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": "Go on"}],
            "max_tokens": 900, "temperature": 0}).json()
        assert r["choices"][0]["finish_reason"] == "length"
        assert 0 < r["usage"]["completion_tokens"] < 900
    finally:
        running.stop()


def test_connections_that_send_no_request_in_time_are_closed(model):
    import socket

    running = Running(Server(model, MODEL, parallel=1), idle_timeout=0.5)
    try:
        silent = socket.create_connection(("127.0.0.1", running.port))
        slow = socket.create_connection(("127.0.0.1", running.port))
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
        kept = httpx.Client(base_url=running.url)
        assert kept.get("/health").status_code == 200  # then idle on keep-alive
        for sock in (silent, slow):
            sock.settimeout(10)  # a timeout here raises: the server must close it first
            assert sock.recv(1024) == b""
        time.sleep(0.8)
        assert kept.get("/health").status_code == 200  # a new connection, transparently
    finally:
        running.stop()


def test_chat_logprobs(model, running):
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Hi there"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    assert b"".join(bytes(e.bytes) for e in content).decode() == r.choices[0].message.content
    for e in content:  # greedy: the sampled token is the likeliest alternative
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob) and e.logprob <= 0
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6,
                                                 temperature=0, logprobs=True, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert all(e.top_logprobs == [] for e in streamed)  # top_logprobs not asked: none
    r = httpx.post(f"{running.url}/v1/chat/completions", json={
        "model": MODEL, "messages": messages, "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["message"] == \
        "'top_logprobs' needs 'logprobs': true"


def test_one_at_a_time_gives_the_batchs_logprobs(model, running):
    """The lone engine (--parallel 1, and quantized KV) reports log-probabilities as the
    batch does: the same tokens, values and alternatives, streamed and not, with a
    penalty (the processed logits are the ones scored)."""
    lone = Running(Server(model, MODEL, parallel=1))
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}],
                "max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 3,
                "presence_penalty": 0.5}
        answers = [httpx.post(f"{r.url}/v1/chat/completions", json=body).json()
                   for r in (running, lone)]
        batch, alone = (a["choices"][0]["logprobs"]["content"] for a in answers)
        assert [e["token"] for e in alone] == [e["token"] for e in batch] and len(batch) == 6
        for a, b in zip(alone, batch):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
            assert [t["token"] for t in a["top_logprobs"]] == \
                [t["token"] for t in b["top_logprobs"]]
        completion = httpx.post(f"{lone.url}/v1/completions", json={
            "model": MODEL, "prompt": "Once", "max_tokens": 3, "temperature": 0,
            "logprobs": 2}).json()["choices"][0]["logprobs"]
        assert len(completion["tokens"]) == 3 and all(len(t) == 2 for t in
                                                      completion["top_logprobs"])
    finally:
        lone.stop()


def test_penalties_change_the_reply_as_the_engine_does(model, running):
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    content = "Count with me"
    plain = solo(model, content, temperature=0, max_tokens=20)
    for kw in ({"presence_penalty": 1.5}, {"frequency_penalty": 2.0}):
        r = client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": content}], temperature=0, max_tokens=20, **kw)
        expected = solo(model, content, temperature=0, max_tokens=20, **kw)
        assert r.choices[0].message.content == expected != plain
    local = ollama.Client(host=running.url)
    r = local.chat(model=MODEL, messages=[{"role": "user", "content": content}],
                   options={"temperature": 0, "num_predict": 20, "repeat_penalty": 3.0})
    assert r.message.content == solo(model, content, temperature=0, max_tokens=20,
                                     repetition_penalty=3.0) != plain


def test_completions_endpoint(model, running):
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    prompt = "The capital of France is"
    expected = model.generate(prompt, raw=True, temperature=0, max_tokens=16)
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0)  # 16 by default
    assert r.object == "text_completion" and r.choices[0].text == expected.text
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt=[prompt], temperature=0,
                                            max_tokens=5, stream=True, logprobs=2))
    text = "".join(c.choices[0].text for c in chunks)
    assert text == model.generate(prompt, raw=True, temperature=0, max_tokens=5).text
    tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert "".join(tokens) == text and chunks[-1].choices[0].finish_reason == "length"
    ids = model.encode(prompt, raw=True)
    r = client.completions.create(model=MODEL, prompt=ids, temperature=0, max_tokens=4,
                                  stop=["\n"])
    assert r.choices[0].text == model.generate(ids, temperature=0, max_tokens=4,
                                               stop=["\n"]).text


def test_models_health_ps_and_ollama_load_requests(running):
    url = running.url
    assert httpx.get(f"{url}/v1/models/{MODEL}").json()["id"] == MODEL
    r = httpx.get(f"{url}/v1/models/gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["parallel"] == 8
    local = ollama.Client(host=url)
    (ps,) = local.ps().models
    assert ps.model == MODEL and ps.size > 0 and ps.context_length == 1024
    r = httpx.post(f"{url}/api/generate", json={"model": MODEL}).json()
    assert r["done"] and r["done_reason"] == "load" and r["response"] == ""
    r = httpx.post(f"{url}/api/chat", json={"model": MODEL, "messages": []}).json()
    assert r["done_reason"] == "load" and r["message"] == {"role": "assistant", "content": ""}


def test_health_answers_while_a_huge_request_is_tokenized(running):
    """Templating and tokenizing 7 MB runs off the event loop: /health answers first."""
    order = []
    body = {"model": MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": "lorem ipsum dolor " * 400_000}]}
    server, tokenizing = running.server, threading.Event()
    encode = server.encode_chat

    def encode_chat(*args, **kwargs):
        tokenizing.set()
        return encode(*args, **kwargs)
    big = threading.Thread(target=lambda: order.append(
        ("big", httpx.post(f"{running.url}/v1/chat/completions", json=body,
                           timeout=300).status_code)))
    server.encode_chat = encode_chat
    try:
        big.start()
        assert tokenizing.wait(60)  # the body is in and being tokenized
        order.append(("health", httpx.get(f"{running.url}/health", timeout=300).status_code))
        big.join()
    finally:
        del server.encode_chat
    assert order == [("health", 200), ("big", 400)]  # longer than the 1,024-token context


def _serve(tiny_q4_f32, port: int, *extra: str) -> subprocess.Popen:
    return serve_process(tiny_q4_f32, port, *extra)


def started(lines) -> None:
    """Read a stream up to its first generated text: the request is in the engine."""
    for line in lines:
        if line.startswith("data: {") and \
                json.loads(line[6:])["choices"][0]["delta"].get("content"):
            return
    raise AssertionError("the stream ended before any text")


def refused(url: str, within: float) -> bool:
    """True once a new connection to ``url`` is refused (polled for ``within`` s)."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=2)
        except httpx.TransportError:
            return True
        time.sleep(0.02)
    return False


def test_sigterm_lets_replies_finish_then_cuts_them_and_exits_0(tiny_q4_f32):
    port = free_port()
    proc = _serve(tiny_q4_f32, port, "--shutdown-timeout", "1")
    url = f"http://127.0.0.1:{port}"
    body = {"model": tiny_q4_f32.name, "messages": [{"role": "user", "content": "Go on"}],
            "max_tokens": 1900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        started(lines)
        proc.send_signal(signal.SIGTERM)
        assert refused(f"{url}/health", within=1)  # no new connections during the grace
        rest = [line for line in lines if line]
    assert json.loads(rest[-2][6:])["error"]["code"] == "shutting_down"
    assert rest[-1] == "data: [DONE]"
    assert proc.wait(30) == 0
    assert "1 request(s) get up to 1 s to finish" in proc.stderr.read()


def test_a_second_signal_exits_at_once(tiny_q4_f32):
    port = free_port()
    proc = _serve(tiny_q4_f32, port, "--shutdown-timeout", "60")
    body = {"model": tiny_q4_f32.name, "messages": [{"role": "user", "content": "Go on"}],
            "max_tokens": 1900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                      timeout=60) as r:
        lines = r.iter_lines()  # kept: a dropped iterator would close the stream
        started(lines)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # waiting for the reply, up to 60 s
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 128 + signal.SIGINT, proc.stderr.read()
