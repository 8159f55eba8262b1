"""`qwen-mlx serve` through the official openai and ollama clients, on a loopback port."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest

from qwen_mlx.engine import Piece, Stats
from qwen_mlx.serve import Server
from qwen_mlx.tools import calls as tool_calls

from .serving import MODEL, Running

GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(running):
    return openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def local(running):
    return ollama.Client(host=running.url)


def alone(model, messages, **kw) -> str:
    """The reply computed directly with the engine, with a fresh cache."""
    return model.generate(messages, **GREEDY, **kw).text


def test_openai_chat_stream_and_not_with_usage(model, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    expected = alone(model, messages, max_tokens=10)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                       temperature=0)
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(model.encode(messages))
    assert r.usage.completion_tokens == 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + 10
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, max_completion_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    # the same prompt again: all but its last token come from the kept cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 1
    assert [m.id for m in client.models.list().data] == [MODEL]
    # vLLM's continuous_usage_stats: every text chunk carries the counts so far
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    running = [c.usage for c in chunks if c.choices and c.choices[0].delta.content]
    assert running and all(u.prompt_tokens == r.usage.prompt_tokens for u in running)
    counts = [u.completion_tokens for u in running]
    assert counts == sorted(set(counts)) and 1 <= counts[0] and counts[-1] <= 10
    with pytest.raises(openai.BadRequestError, match="continuous_usage_stats"):
        client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                       stream_options={"include_obfuscation": True})


def test_stop_and_seed(model, client):
    messages = [{"role": "user", "content": "Count with me"}]
    full = alone(model, messages, max_tokens=12)
    stop = full[5:9]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12,
                                       temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    seeded = [client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                             temperature=1.0, seed=7).choices[0].message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_growing_conversation_prefills_only_the_suffix(model, client):
    history = [{"role": "user", "content": "Tell me about rivers."}]
    first = client.chat.completions.create(model=MODEL, messages=history, max_tokens=12,
                                           temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And lakes?"}]
    second = client.chat.completions.create(model=MODEL, messages=history, max_tokens=12,
                                            temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens  # the first prompt at least, maybe its reply
    assert second.choices[0].message.content == alone(model, history, max_tokens=12)


def test_four_concurrent_requests_each_match_their_own_reply(model, client):
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(4)]
    expected = [alone(model, [{"role": "user", "content": p}], max_tokens=16) for p in prompts]

    def ask(prompt: str) -> str:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16,
            temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, prompts)) == expected


class Scripted:
    """A model whose replies are scripted (random weights never call tools): the real
    tokenizer and template, the server's real code paths."""

    def __init__(self, model, replies: list[str]) -> None:
        self.model, self.replies, self.prompts = model, list(replies), []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def stream(self, request, **kwargs):
        tokens = request.tokens  # the worker runs validated requests only
        self.prompts.append(self.model.decode(tokens))  # recorded when the worker starts it
        text = self.replies.pop(0)
        stats = Stats(prompt_tokens=len(tokens), prefill_tokens=len(tokens),
                      generated_tokens=7, finish_reason="stop")
        parts = [text[i:i + 5] for i in range(0, len(text), 5)]
        yield from [Piece(p, [1]) for p in parts] + [Piece("", [], stats)]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.mark.parametrize("stream", [False, True])
def test_openai_tool_call_round_trip(model, stream):
    scripted = Scripted(model, ["Let me check.\n" + CALL, "It is 3 degrees in Oslo."])
    running = Running(Server(scripted, MODEL, parallel=1))  # scripted: the lone engine
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "Weather in Oslo?"}]
        if stream:
            chunks = list(client.chat.completions.create(model=MODEL, messages=messages,
                                                         tools=[WEATHER], stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
            finish = chunks[-1].choices[0].finish_reason
        else:
            r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
            text, calls = r.choices[0].message.content, r.choices[0].message.tool_calls
            finish = r.choices[0].finish_reason
        assert text.strip() == "Let me check." and finish == "tool_calls"
        (call,) = calls
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Oslo"}
        assert "<tools>" in scripted.prompts[0] and '"get_weather"' in scripted.prompts[0]
        messages += [{"role": "assistant", "content": None, "tool_calls": [
                         {"id": call.id, "type": "function",
                          "function": {"name": "get_weather",
                                       "arguments": call.function.arguments}}]},
                     {"role": "tool", "tool_call_id": call.id, "content": "3 degrees"}]
        r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
        assert r.choices[0].message.content == "It is 3 degrees in Oslo."
        assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
        second = scripted.prompts[1]
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' \
            in second
        assert "<tool_response>\n3 degrees\n</tool_response>" in second
    finally:
        running.stop()


def test_ollama_tool_call(model):
    scripted = Scripted(model, [CALL])
    running = Running(Server(scripted, MODEL, parallel=1))  # scripted: the lone engine
    try:
        r = ollama.Client(host=running.url).chat(
            model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[WEATHER], stream=False)
        (call,) = r.message.tool_calls
        assert call.function.name == "get_weather" and call.function.arguments == {"city": "Oslo"}
    finally:
        running.stop()


def test_ollama_chat_generate_and_metadata(model, local):
    messages = [{"role": "user", "content": "Hello there"}]
    expected = alone(model, messages, max_tokens=9)
    r = local.chat(model=MODEL, messages=messages, options={"num_predict": 9, "temperature": 0},
                   stream=False)
    assert r.message.content == expected and r.done and r.done_reason == "length"
    assert r.prompt_eval_count == len(model.encode(messages)) and r.eval_count == 9
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0
    parts = list(local.chat(model=f"{MODEL}:latest", messages=messages,
                            options={"num_predict": 9, "temperature": 0}, stream=True))
    assert "".join(p.message.content for p in parts) == expected
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == 9 and parts[-1].eval_duration > 0
    raw = local.generate(model=MODEL, prompt="Once upon", raw=True, stream=False,
                         options={"num_predict": 6, "temperature": 0})
    assert raw.response == model.generate("Once upon", raw=True, max_tokens=6, **GREEDY).text
    templated = "".join(p.response for p in local.generate(
        model=MODEL, prompt="Hello there", options={"num_predict": 9, "temperature": 0},
        stream=True))
    assert templated == expected
    (listed,) = local.list().models
    assert listed.model == MODEL and listed.details.family == "qwen3"
    assert listed.details.quantization_level == "Q4" and listed.size > 0
    shown = local.show(MODEL)
    assert shown.modelinfo["qwen3.context_length"] == 1024 and "tools" in shown.capabilities
    assert httpx.get(f"{local._client.base_url}/api/version").json()["version"]


def test_disconnect_mid_stream_stops_generation(model, running, client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Go on forever"}],
            "max_tokens": 900, "temperature": 0, "stream": True}
    finished = running.server.worker.finished
    before = sum(j["cancelled"] for j in finished)
    with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert got[0].startswith("data: ")
    deadline = time.time() + 60  # the engine notices the client has gone
    while sum(j["cancelled"] for j in finished) == before and time.time() < deadline:
        time.sleep(0.02)
    # served next, and correctly; the abandoned request stopped long before 900 tokens
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=5, temperature=0)
    assert r.choices[0].message.content == alone(model, [{"role": "user", "content": "Hi"}],
                                                 max_tokens=5)
    abandoned = [j for j in running.server.worker.finished if j["cancelled"]]
    assert abandoned and abandoned[-1]["generated"] < 900


def test_bad_requests_get_each_apis_error_shape(running):
    url = running.url
    post = httpx.post
    r = post(f"{url}/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    assert r.json() == {"error": {"message": "the request body is not valid JSON",
                                  "type": "invalid_request_error", "param": None, "code": None}}
    r = post(f"{url}/v1/chat/completions", json={"model": "gpt-4o", "messages": [
        {"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(f"{url}/v1/chat/completions", json={"model": MODEL})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": "word " * 1100}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(f"{url}/v1/chat/completions", json={"model": MODEL, "temperature": "hot",
                                                 "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = post(f"{url}/v1/chat/completions", json={"model": MODEL, "n": 2,
                                                 "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["message"] == "only n=1 is supported"
    r = post(f"{url}/api/chat", content=b"[")
    assert r.status_code == 400 and r.json() == {"error": "the request body is not valid JSON"}
    r = post(f"{url}/api/chat", json={"model": "llama3", "messages": []})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    r = post(f"{url}/api/generate", json={"model": MODEL, "prompt": "hi " * 50,
                                          "options": {"num_ctx": 20}})
    assert r.status_code == 400 and "the context is 20" in r.json()["error"]
    # Values the engine refuses are refused before anything is queued, streaming or not
    # (they were a plain-text 500 inside the worker).
    for stream in (False, True):
        for field, value, message in (("top_p", 0, "top_p must be in (0, 1]"),
                                      ("min_p", 1, "min_p must be in [0, 1)")):
            r = post(f"{url}/v1/chat/completions", json={
                "model": MODEL, field: value, "stream": stream,
                "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 400 and r.json()["error"] == {
                "message": message, "type": "invalid_request_error", "param": field,
                "code": None}
            r = post(f"{url}/api/chat", json={"model": MODEL, "stream": stream,
                                              "options": {field: value},
                                              "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 400 and r.json() == {"error": message}
    r = post(f"{url}/v1/chat/completions", json={"model": MODEL, "stop": ["", "x"],
                                                 "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["message"] == \
        "a stop string must be non-empty text"
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=url).chat(model=MODEL, messages=[{"role": "robot", "content": "x"}])
    assert e.value.status_code == 400
    # and the server keeps serving
    r = post(f"{url}/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                          "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["eval_count"] == 2


def test_api_key(model):
    running = Running(Server(model, MODEL, api_key="s3cret"))
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        r = httpx.post(f"{running.url}/v1/chat/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{running.url}/v1/chat/completions", json=body,
                       headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert httpx.get(f"{running.url}/api/tags").status_code == 401
        for method, path in [("POST", "/v1/embeddings"), ("POST", "/api/embed"),
                             ("POST", "/api/embeddings"), ("POST", "/v1/rerank"),
                             ("POST", "/rerank"), ("POST", "/api/pull"), ("POST", "/api/copy"),
                             ("DELETE", "/api/delete"), ("GET", "/api/ps")]:
            r = httpx.request(method, f"{running.url}{path}",
                              json={"model": MODEL, "input": "Hi", "prompt": "Hi"})
            assert r.status_code == 401, (method, path)
        r = httpx.post(f"{running.url}/v1/embeddings", json={"model": MODEL, "input": "Hi"},
                       headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
    finally:
        running.stop()


def test_tool_call_splitter_holds_back_a_partial_tag():
    s = tool_calls.Splitter()
    assert s.feed("Sure <tool") == "Sure "
    assert s.feed("_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>") == ""
    assert s.finish() == ("", [{"name": "f", "arguments": {}}])
    s = tool_calls.Splitter()
    assert s.feed("a <tool") + s.feed("box>") == "a <toolbox>"
    assert tool_calls.parse("x <tool_call>not json</tool_call>") == \
        ("x <tool_call>not json</tool_call>", [])


def test_a_call_whose_arguments_hold_the_closing_tag_is_parsed():
    """Code that writes Qwen's format has `</tool_call>` inside a string argument: the block
    ends at the first closing tag after which its text is a call."""
    code = 'print("<tool_call>{}</tool_call>")'
    block = json.dumps({"name": "write", "arguments": {"path": "a.py", "text": code}})
    text = f"Writing it.\n<tool_call>\n{block}\n</tool_call>\n<tool_call>\n" \
           f'{{"name": "run", "arguments": {{}}}}\n</tool_call>'
    assert tool_calls.parse(text) == ("Writing it.", [
        {"name": "write", "arguments": {"path": "a.py", "text": code}},
        {"name": "run", "arguments": {}}])
    s = tool_calls.Splitter()
    assert s.feed(text[:20]) + s.feed(text[20:]) == "Writing it.\n"
    assert s.finish()[1] == tool_calls.parse(text)[1]
    # a block that is no call stays text, and the next one is still read
    assert tool_calls.parse("<tool_call>oops</tool_call> <tool_call>{\"name\": \"f\"}"
                            "</tool_call>") == ("<tool_call>oops</tool_call>",
                                                [{"name": "f", "arguments": {}}])


def test_serve_command_refuses_a_taken_port(tiny_q4_f32):
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(tiny_q4_f32), "--port", str(port)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")


def _filled(model, n: int):
    """A prompt cache that really holds ``n`` tokens of KV."""
    cache = model.new_cache()
    model.generate([(i * 7) % 5000 + 100 for i in range(n)], cache=cache, max_tokens=1)
    return cache


def test_cache_pool_keeps_its_byte_budget(model):
    """Kept caches are budgeted by the bytes their buffers measure, not by token counts."""
    from qwen_mlx.serve.kv_room import CachePool

    sizes = {n: _filled(model, n).nbytes for n in (200, 600, 1000)}
    assert sizes[200] < sizes[600] < sizes[1000]  # capacities of 256, 768 and 1024
    pool = CachePool(model, slots=3, budget=sizes[1000] + sizes[600] + sizes[200] // 2)
    for n in (200, 600, 1000):
        pool.give_back(_filled(model, n))
    assert [c.nbytes for c in pool.caches] == [sizes[1000], sizes[600]]  # 200 more: over
    assert pool.nbytes == sizes[1000] + sizes[600]
    prompt = [(i * 7) % 5000 + 100 for i in range(700)] + [7]
    reused = pool.take(prompt)  # the longest common prefix wins
    assert len(reused) == 1000 and [len(c) for c in pool.caches] == [600]
    assert len(pool.take([99])) == 0  # nothing shared: a new cache
    pool.shrink(sizes[600] - 1)  # room for a batch: the least recently used go first
    assert pool.caches == []


def test_trimming_a_cache_frees_its_buffers(model):
    """mlx-lm's trim only moves the offset; ours gives the memory back when most of a
    buffer is unused (measured nbytes), and keeps generating exactly as before."""
    cache = _filled(model, 1000)
    full = cache.nbytes
    per_token = full / 1024  # the buffers grew in steps of 256 positions
    cache.trim(10)
    assert len(cache) == 10 and cache.offset == 10
    assert cache.nbytes == 10 * per_token
    cache.trim(995)  # nothing to trim
    assert cache.nbytes == 10 * per_token
    prompt = [(i * 7) % 5000 + 100 for i in range(12)]
    again = model.generate(prompt, cache=cache, max_tokens=6, temperature=0)
    assert again.text == model.generate(prompt, max_tokens=6, temperature=0).text
    assert again.stats.cached_tokens == 10
    cache.trim(0)
    assert cache.nbytes == 0


def test_each_request_has_its_own_prefill_bar():
    """Requests prefilled side by side each get a row; one ending closes only its own, and
    the display stops with the last (one shared bar was closed by the first to end)."""
    from qwen_mlx.cli.console import PrefillBars

    bars = PrefillBars(threshold=10)
    first, second, short = bars(), bars(), bars()
    first(5, 100)
    second(50, 200)
    short(3, 8)  # under the threshold: no row
    assert bars.rows == 2 and [t.total for t in bars.bar.tasks] == [100, 200]
    first(99, 100)  # its prefill is done: its row goes
    assert bars.rows == 1 and [t.completed for t in bars.bar.tasks] == [50]
    assert bars.bar.live.is_started
    second.close()
    short.close()
    assert bars.rows == 0 and bars.bar.tasks == [] and not bars.bar.live.is_started
