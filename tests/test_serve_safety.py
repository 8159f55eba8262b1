"""What `qwen-mlx serve` refuses: foreign hosts and origins, unsupported fields, bodies too
large, and whatever a fuzzer can send; none of it may get a 5xx."""

from __future__ import annotations

import json

import httpx

from qwen_mlx.serve import Server, create_app

from .serving import MODEL


def test_browser_safety_refuses_rebinding_and_foreign_origins(running):
    """Any page the user visits can reach 127.0.0.1: a foreign Host (DNS rebinding) or Origin
    is refused before anything runs; localhost pages get CORS and their preflights."""
    url = running.url
    port = url.rsplit(":", 1)[1]
    ran = len(running.server.worker.finished)
    r = httpx.get(f"{url}/v1/models", headers={"Host": f"evil.example:{port}"})
    assert r.status_code == 403 and r.json() == {
        "error": f"Host 'evil.example:{port}' is not this machine (DNS rebinding is refused)"}
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert httpx.get(f"{url}/v1/models", headers={"Host": host}).status_code == 200
    body = json.dumps({"model": MODEL, "max_tokens": 2,
                       "messages": [{"role": "user", "content": "Hi"}]})
    r = httpx.post(f"{url}/v1/chat/completions", content=body,
                   headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert r.status_code == 403 and r.json() == {
        "error": "origin 'https://evil.example' is not allowed (serve --allow-origin adds "
                 "origins)"}
    assert len(running.server.worker.finished) == ran  # no generation ran
    # every route of the later APIs too: nothing runs for a foreign page or Host
    later = [("POST", "/v1/embeddings"), ("POST", "/api/embed"), ("POST", "/api/embeddings"),
             ("POST", "/v1/rerank"), ("POST", "/rerank"), ("POST", "/api/pull"),
             ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("GET", "/api/ps")]
    for method, path in later:
        for headers in ({"Origin": "https://evil.example"}, {"Host": f"evil.example:{port}"}):
            r = httpx.request(method, f"{url}{path}", headers=headers,
                              content=json.dumps({"model": MODEL, "input": "Hi"}))
            assert r.status_code == 403, (method, path, headers)
    assert len(running.server.worker.finished) == ran
    r = httpx.post(f"{url}/v1/chat/completions", content=body,
                   headers={"Origin": "http://localhost:3000",
                            "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = httpx.options(f"{url}/v1/chat/completions", headers=preflight)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert r.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "POST" in r.headers["access-control-allow-methods"]
    r = httpx.options(f"{url}/v1/chat/completions",
                      headers={**preflight, "Origin": "https://evil.example"})
    assert r.status_code == 403


def test_allowed_origins_and_an_exposed_bind_address(model):
    from starlette.testclient import TestClient

    app = create_app(Server(model, MODEL, allow_origins=("https://app.example",)))
    with TestClient(app, base_url="http://localhost") as c:
        r = c.get("/v1/models", headers={"Origin": "https://app.example"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert c.get("/v1/models", headers={"Origin": "https://other.example"}).status_code \
            == 403
    anyone = create_app(Server(model, MODEL, allow_origins=("*",)))
    with TestClient(anyone, base_url="http://localhost") as c:
        assert c.get("/v1/models", headers={"Origin": "https://x.example"}).status_code == 200
    # bound to every address on purpose: the Host check is off, the Origin check stays
    exposed = create_app(Server(model, MODEL, host="0.0.0.0"))
    with TestClient(exposed, base_url="http://my-mac.lan:11434") as c:
        assert c.get("/v1/models").status_code == 200
        assert c.get("/v1/models", headers={"Origin": "https://evil.example"}).status_code \
            == 403


def test_fuzzed_bodies_never_get_a_5xx(running):
    """A few hundred generated bodies (wrong types, extreme numbers, deep nesting, huge
    strings, unknown fields, broken JSON) against every API (OpenAI's chat, completions and
    responses, Anthropic's messages and count_tokens, Ollama's): every answer is below 500,
    and the server still serves afterwards."""
    import random

    url = running.url
    rng = random.Random(0)
    bases = {
        "/v1/chat/completions": {"model": MODEL, "max_tokens": 1,
                                 "messages": [{"role": "user", "content": "Hi"}]},
        "/api/chat": {"model": MODEL, "stream": False, "options": {"num_predict": 1},
                      "messages": [{"role": "user", "content": "Hi"}]},
        "/api/generate": {"model": MODEL, "prompt": "Hi", "stream": False,
                          "options": {"num_predict": 1}},
        "/v1/completions": {"model": MODEL, "prompt": "Hi", "max_tokens": 1},
        "/v1/responses": {"model": MODEL, "max_output_tokens": 1, "input": "Hi"},
        "/tokenize": {"content": "Hi", "with_pieces": True},
        "/detokenize": {"tokens": [9707, 0]},
        "/v1/messages": {"model": MODEL, "max_tokens": 1,
                         "messages": [{"role": "user", "content": "Hi"}]},
        "/v1/messages/count_tokens": {"model": MODEL,
                                      "messages": [{"role": "user", "content": "Hi"}]},
        "/api/pull": {"model": "Qwen/Qwen3-0.6B", "stream": False},  # offline here: a 400
        "/api/copy": {"source": MODEL, "destination": "copied"},
        "/api/delete": {"model": "copied"},
        "/v1/embeddings": {"model": MODEL, "input": ["Hi", "there"]},
        "/api/embed": {"model": MODEL, "input": "Hi"},
        "/api/embeddings": {"model": MODEL, "prompt": "Hi"},
        "/v1/rerank": {"model": MODEL, "query": "Hi", "documents": ["a", {"text": "b"}]},
    }
    deep = '{"a": ' * 5_000 + "null" + "}" * 5_000  # spliced in as text: too deep to dump
    values = [None, True, False, "", "yes", "x" * 100_000, -1, 0, 1, 0.5, 2**64, -2**70,
              10**30, 1e308, -1e308, [], {}, [1, "a", None], {"type": "json_object"},
              [{"role": "robot"}], [{"role": "user", "content": [{"type": "image_url"}]}],
              [{"role": "assistant", "content": "", "tool_calls": [{"function": "x"}]}],
              [{"role": "assistant", "tool_calls": "nope"}], "__DEEP__",
              [{"role": "user", "content": [{"type": "tool_result", "content": 5}]}],
              [{"role": "assistant", "content": [{"type": "tool_use", "input": []}]}],
              [{"type": "text"}], {"type": "tool", "name": 1}, {"type": "enabled"},
              [{"name": "x", "input_schema": "no"}], "\ud800"]
    fields = ["model", "messages", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
              "stream", "stream_options", "n", "tools", "tool_choice", "presence_penalty",
              "logprobs", "response_format", "options", "prompt", "system", "raw", "format",
              "keep_alive", "images", "unknown_field", "top_logprobs", "frequency_penalty",
              "echo", "max_tokens", "stop_sequences", "thinking", "metadata", "input",
              "instructions", "text", "reasoning", "previous_response_id", "store",
              "max_output_tokens", "content", "with_pieces", "tokens", "source",
              "destination", "name", "insecure", "dimensions", "encoding_format",
              "truncate", "query", "documents", "top_n", "return_documents"]
    option_keys = ["temperature", "top_p", "seed", "num_ctx", "stop", "repeat_penalty", "x",
                   "presence_penalty", "repeat_last_n"]
    statuses = []
    for i in range(980):  # sixteen endpoints: enough of both kinds for each
        path, base = rng.choice(list(bases.items()))
        body = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(values)
            if rng.random() < 0.25 and isinstance(body.get("options"), dict):
                body["options"][rng.choice(option_keys)] = value
            elif rng.random() < 0.1:
                body.pop(rng.choice(list(body)), None)
            else:
                body[rng.choice(fields)] = value
        # never a long generation: the token limits stay at one
        if path.endswith("count_tokens") or path in ("/tokenize", "/detokenize") or \
                "embed" in path or "rerank" in path:
            body.pop("max_tokens", None)  # not one of its fields
        elif path == "/v1/responses":
            body["max_output_tokens"] = 1
        elif path.startswith("/v1"):
            body["max_tokens"] = 1
        elif isinstance(body.get("options"), dict):
            body["options"]["num_predict"] = 1
        else:
            body["options"] = {"num_predict": 1}
        r = httpx.request("DELETE" if path == "/api/delete" else "POST", f"{url}{path}",
                          content=json.dumps(body).replace('"__DEEP__"', deep), timeout=60)
        statuses.append(r.status_code)
        assert r.status_code < 500, (path, r.status_code, r.text[:300])
    for raw in (b"[", b"null", b"123", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe",
                b'{"model": NaN}', b'{"max_tokens": Infinity}'):
        for path in bases:
            r = httpx.request("DELETE" if path == "/api/delete" else "POST", f"{url}{path}",
                              content=raw, timeout=60)
            assert r.status_code == 400, (path, raw[:20], r.status_code, r.text[:200])
    assert statuses.count(200) > 10 and statuses.count(400) > 100  # both kinds were tried
    assert httpx.get(f"{url}/v1/models").status_code == 200


def test_unsupported_fields_are_refused_by_name_and_no_ops_accepted(running):
    url = running.url
    base = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    for field, value in (("logit_bias", {"15": 3}), ("store", True), ("foo", 1)):
        r = httpx.post(f"{url}/v1/chat/completions", json={**base, field: value})
        assert r.status_code == 400 and r.json()["error"]["message"] == \
            f"'{field}' is not supported by qwen-mlx" and r.json()["error"]["param"] == field
    r = httpx.post(f"{url}/v1/chat/completions", json={
        **base, "logit_bias": {}, "parallel_tool_calls": False, "logprobs": False, "n": None,
        "response_format": {"type": "text"}, "tool_choice": "none", "user": "u1",
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{url}/api/chat", json={"model": MODEL, "stream": False,
                                            "messages": [{"role": "user", "content": "x"}],
                                            "options": {"mirostat": 2}})
    assert r.status_code == 400 and r.json() == {
        "error": "'options.mirostat' is not supported by qwen-mlx"}
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x", "best_of": 2})
    assert r.status_code == 400 and r.json()["error"]["message"] == \
        "'best_of' is not supported by qwen-mlx"
    r = httpx.post(f"{url}/api/generate", json={"model": MODEL, "prompt": "x", "stream": False,
                                                "suffix": "y"})
    assert r.status_code == 400 and r.json() == {"error": "'suffix' is not supported by "
                                                          "qwen-mlx"}
    r = httpx.post(f"{url}/api/generate", json={"model": MODEL, "prompt": "x", "stream": False,
                                                "keep_alive": "5m", "format": "",
                                                "options": {"num_predict": 1, "seed": -1}})
    assert r.status_code == 200, r.text
    big = b'{"model": "' + b"x" * (9 << 20) + b'"}'
    r = httpx.post(f"{url}/v1/chat/completions", content=big)
    assert r.status_code == 413 and "over 8,000,000 bytes" in r.json()["error"]["message"]


def _string_positions(value, path=()):
    """Every place in a JSON value that holds a string: ("value", path) or ("key", path)."""
    if isinstance(value, str):
        yield "value", path
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield "key", path + (key,)
            yield from _string_positions(inner, path + (key,))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _string_positions(inner, path + (i,))


def _with_surrogate(body, kind: str, path: tuple):
    """A copy of ``body`` with a lone surrogate in the string (or key) at ``path``."""
    body = json.loads(json.dumps(body))
    *parents, last = path
    holder = body
    for step in parents:
        holder = holder[step]
    if kind == "value":
        holder[last] = holder[last] + "\ud800"
    else:
        holder[last + "\udc00"] = holder.pop(last)
    return body


def test_invalid_unicode_in_any_string_is_a_400_and_the_connection_goes_on(running):
    """A lone UTF-16 surrogate (valid JSON escape, not text) in every string position and
    key of every endpoint's body, options and messages included: 400 naming where, never a
    500; the next request on the same keep-alive connection is answered."""
    tools = [{"type": "function", "function": {"name": "add", "description": "Add.",
                                                "parameters": {"type": "object"}}}]
    bodies = {
        "/v1/chat/completions": {"model": MODEL, "max_tokens": 1, "stop": ["x"], "tools": tools,
                                 "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": [
                                                  {"type": "text", "text": "Hi"}]}],
                                 "response_format": {"type": "text"}},
        "/v1/completions": {"model": MODEL, "prompt": "Hi", "max_tokens": 1},
        "/api/chat": {"model": MODEL, "stream": False, "format": "json",
                      "options": {"num_predict": 1, "stop": ["x"]},
                      "messages": [{"role": "user", "content": "Hi"}]},
        "/api/generate": {"model": MODEL, "prompt": "Hi", "system": "Be brief.",
                          "stream": False, "options": {"num_predict": 1}},
        "/api/show": {"model": MODEL},
    }
    tried = 0
    with httpx.Client(base_url=running.url, timeout=60) as client:
        for path, body in bodies.items():
            for kind, where in _string_positions(body):
                bad = json.dumps(_with_surrogate(body, kind, where))  # ASCII: \ud800 escapes
                r = client.post(path, content=bad)
                assert r.status_code == 400, (path, kind, where, r.status_code, r.text[:200])
                assert "invalid Unicode" in r.text, r.text
                ok = client.post(path, json=body)  # same connection
                assert ok.status_code == 200, (path, ok.text[:200])
                tried += 1
    assert tried > 40


def test_a_token_limit_over_the_context_is_refused_with_the_most_allowed(running):
    """As OpenAI does: an explicit limit the context cannot hold is a 400 naming the most
    allowed (it was silently cut, so a 1e308 request ran until the context was full);
    Ollama's -1 (until the context ends) stays."""
    url = running.url
    base = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    prompt = len(running.server.model.encode(base["messages"]))
    room = 1024 - prompt
    for field, value, shown in (("max_tokens", 1e308, "1e+308"),
                                ("max_tokens", 10**12, "1,000,000,000,000"),
                                ("max_completion_tokens", room + 1, f"{room + 1:,}")):
        r = httpx.post(f"{url}/v1/chat/completions", json={**base, field: value})
        assert r.status_code == 400 and r.json()["error"] == {
            "message": f"'{field}' is {shown}; at most {room:,} fit (the context is 1,024 "
                       f"tokens, the prompt {prompt})",
            "type": "invalid_request_error", "param": field, "code": None}
    r = httpx.post(f"{url}/v1/chat/completions", json={**base, "max_tokens": room,
                                                       "temperature": 0}, timeout=300)
    assert r.status_code == 200
    r = httpx.post(f"{url}/api/chat", json={**base, "stream": False,
                                            "options": {"num_predict": 1e308}})
    assert r.status_code == 400 and r.json()["error"].startswith(
        f"'options.num_predict' is 1e+308; at most {room:,} fit")
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x",
                                                  "max_tokens": 5000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 16


def test_ollama_hardware_options_are_accepted_and_reply_changing_ones_refused(running):
    url = running.url
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Hi"}]}
    hardware = {"num_gpu": 99, "num_thread": 8, "num_batch": 512, "use_mmap": True,
                "use_mlock": False, "numa": False, "low_vram": False, "main_gpu": 0,
                "typical_p": 1, "tfs_z": 1.0}
    plain = httpx.post(f"{url}/api/chat", json={**body, "options": {
        "num_predict": 6, "temperature": 0}}, timeout=60).json()
    tuned = httpx.post(f"{url}/api/chat", json={**body, "options": {
        "num_predict": 6, "temperature": 0, **hardware}}, timeout=60)
    assert tuned.status_code == 200
    assert tuned.json()["message"] == plain["message"]  # no effect on the reply
    for name, value in (("typical_p", 0.5), ("tfs_z", 2), ("mirostat", 1), ("num_keep", 4)):
        r = httpx.post(f"{url}/api/chat", json={**body, "options": {name: value}})
        assert r.status_code == 400 and r.json() == {
            "error": f"'options.{name}' is not supported by qwen-mlx"}
