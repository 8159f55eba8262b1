"""Speculative decoding in `qwen-mlx serve`: the server's default (--draft/--lookup), the
``speculative`` field per request (refused keys and combinations named), speculating
requests checked together in one forward beside the plain batch with texts equal to plain
decoding, and the usage extension."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from click.testing import CliRunner

from qwen_mlx.cli import main
from qwen_mlx.engine.speculative_batch import SpeculativeBatch
from qwen_mlx.serve import Server
from qwen_mlx.serve.speculative import Speculation

from .serving import MODEL, Running, free_port

COPY = ("Edit the code: def area(width, height): return width * height. "
        "def area(width, height): return width * height. def area(width, height):")
PROMPTS = [COPY, "Tell me about the number 3.", COPY + " Please.", "Say something."]


@pytest.fixture(scope="module")
def drafted(model):
    """Served with the model as its own draft, 3 proposals per step, 4 at a time."""
    r = Running(Server(model, MODEL, parallel=4,
                       speculation=Speculation("draft", 3, model)))
    yield r
    r.stop()


def chat(url: str, content: str, **extra) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": content}],
        "temperature": 0, "max_tokens": 24, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def solo(model, content: str) -> str:
    return model.generate([{"role": "user", "content": content}], temperature=0,
                          max_tokens=24).text


def test_speculating_requests_share_forwards_beside_the_batch(model, drafted, monkeypatch):
    """Speculating and plain requests at once: every text is plain decoding's, the
    speculating ones report their proposals, the plain one ran in the batch while they ran,
    and their proposals were checked together: the speculative batch made fewer forwards
    than their replies counted."""
    methods = [None, {"method": "off"}, {"method": "lookup", "tokens": 4},
               {"method": "draft", "tokens": 2}]
    expected = [solo(model, p) for p in PROMPTS]
    worker = drafted.server.worker
    admitted = []
    admit = worker._admit

    def gated():  # the four requests start in one admission (whatever the HTTP timing)
        if worker.waiting and not admitted:
            for _ in range(6000):
                worker._collect(block=False)
                if len(worker.waiting) == len(PROMPTS):
                    break
                time.sleep(0.01)
            admit()
            admitted.append((len(worker.running), len(worker.speculating)))
            return
        admit()

    monkeypatch.setattr(worker, "_admit", gated)
    before = worker.speculative.forwards

    async def main_() -> list[dict]:
        async with httpx.AsyncClient(timeout=120) as client:
            async def one(prompt, method):
                body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                        "temperature": 0, "max_tokens": 24,
                        **({"speculative": method} if method else {})}
                r = await client.post(f"{drafted.url}/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                return r.json()
            return await asyncio.gather(*(one(p, m) for p, m in zip(PROMPTS, methods)))

    outs = asyncio.run(main_())
    assert [o["choices"][0]["message"]["content"] for o in outs] == expected
    default, off, lookup, draft = (o["usage"] for o in outs)
    assert "speculative" not in off
    for u, n in ((default, 3), (draft, 2)):  # the draft is the model: every proposal kept
        spec = u["speculative"]
        assert spec["acceptance_rate"] == 1.0 and spec["accepted_tokens"] == spec["draft_tokens"]
        assert spec["target_forwards"] < u["completion_tokens"]
    assert lookup["speculative"]["target_forwards"] <= lookup["completion_tokens"]
    assert admitted == [(1, 3)]  # the plain one in the batch, three speculating beside it
    own = [u["speculative"]["target_forwards"] for u in (default, lookup, draft)]
    shared = worker.speculative.forwards - before
    # they joined one step apart (a prefill chunk each), then shared every forward
    assert max(own) <= shared <= max(own) + 2 < sum(own)
    assert not worker.speculating and not worker.running


def test_the_draft_keeps_n_plus_one_tokens_per_forward(drafted):
    out = chat(drafted.url, COPY, max_tokens=16, speculative={"tokens": 3})
    spec = out["usage"]["speculative"]
    assert out["usage"]["completion_tokens"] == 16
    assert spec == {"draft_tokens": 12, "accepted_tokens": 12, "acceptance_rate": 1.0,
                    "target_forwards": 4, "tokens_per_forward": 4.0}


def test_completions_and_ollama_carry_the_usage_extension(model, drafted):
    r = httpx.post(f"{drafted.url}/v1/completions", timeout=120, json={
        "model": MODEL, "prompt": COPY, "temperature": 0, "max_tokens": 8,
        "speculative": {"method": "lookup", "tokens": 2}})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == model.generate(
        COPY, raw=True, temperature=0, max_tokens=8).text
    assert r.json()["usage"]["speculative"]["draft_tokens"] > 0
    r = httpx.post(f"{drafted.url}/api/chat", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": COPY}], "stream": False,
        "options": {"temperature": 0, "num_predict": 8}})
    assert r.status_code == 200, r.text
    assert r.json()["speculative"]["acceptance_rate"] == 1.0


def test_structured_outputs_speculate_with_plain_texts(model, drafted):
    """A JSON schema, and a forced tool call, under the server's draft: the texts are plain
    decoding's and the usage says speculation ran."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
                                                     "maximum": 9}}, "required": ["n"],
              "additionalProperties": False}
    off = {"chat_template_kwargs": {"enable_thinking": False}}  # the grammar from the start
    out = chat(drafted.url, "Give JSON.", max_tokens=30, **off, response_format={
        "type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    from qwen_mlx.engine.constraint import Constraint

    expected = model.generate([{"role": "user", "content": "Give JSON."}], temperature=0,
                              max_tokens=30, constraint=Constraint.schema(schema),
                              enable_thinking=False)
    assert out["choices"][0]["message"]["content"] == expected.text
    assert json.loads(expected.text)["n"] in range(10)
    assert out["usage"]["speculative"]["target_forwards"] > 0
    tools = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
                                               "maximum": 9}}, "required": ["a"]}}}]
    plain = chat(drafted.url, "Add.", max_tokens=40, tools=tools, tool_choice="required",
                 speculative={"method": "off"}, **off)
    fast = chat(drafted.url, "Add.", max_tokens=40, tools=tools, tool_choice="required",
                speculative={"method": "lookup", "tokens": 3}, **off)
    calls = [c["function"] for c in fast["choices"][0]["message"]["tool_calls"]]
    assert calls == [c["function"] for c in plain["choices"][0]["message"]["tool_calls"]]
    assert "speculative" in fast["usage"] and "speculative" not in plain["usage"]


@pytest.mark.parametrize("field, message, param", [
    ([], "'speculative' must be an object", "speculative"),
    ({"n": 3}, "'speculative.n' is not supported by qwen-mlx", "speculative.n"),
    ({"method": "fast"}, "'speculative.method' must be", "speculative.method"),
    ({"tokens": 0}, "from 1 to 16", "speculative.tokens"),
    ({"tokens": 17}, "from 1 to 16", "speculative.tokens"),
    ({"tokens": True}, "from 1 to 16", "speculative.tokens"),
    ({"method": "off", "tokens": 2}, "needs method draft or lookup", "speculative.tokens"),
])
def test_bad_speculative_fields_are_refused_by_name(drafted, field, message, param):
    r = httpx.post(f"{drafted.url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "speculative": field})
    assert r.status_code == 400
    assert message in r.json()["error"]["message"] and r.json()["error"]["param"] == param


def test_a_null_method_is_the_servers_own(drafted):
    """Before: "this server was started without --draft or --lookup", on a --draft server."""
    out = chat(drafted.url, COPY, max_tokens=12, speculative={"method": None, "tokens": 2})
    assert out["usage"]["speculative"]["draft_tokens"] > 0


def test_logprobs_of_a_speculating_request_are_the_batchs(drafted):
    """The rows that verified the proposals give each token's log-probability: the same
    tokens, values and alternatives as the batch reports without speculation."""
    def entries(**extra):
        out = chat(drafted.url, COPY, max_tokens=12, logprobs=True, top_logprobs=3, **extra)
        return out["choices"][0]["logprobs"]["content"], out["usage"]

    plain, usage = entries(speculative={"method": "off"})
    assert "speculative" not in usage
    for method in ({"method": "lookup", "tokens": 4}, {"method": "draft", "tokens": 3}):
        fast, usage = entries(speculative=method)
        assert usage["speculative"]["target_forwards"] < 12 or method["method"] == "lookup"
        assert [e["token"] for e in fast] == [e["token"] for e in plain]
        for a, b in zip(fast, plain):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
            assert [t["token"] for t in a["top_logprobs"]] == \
                [t["token"] for t in b["top_logprobs"]]
            assert [t["logprob"] for t in a["top_logprobs"]] == \
                pytest.approx([t["logprob"] for t in b["top_logprobs"]], abs=1e-4)
    r = httpx.post(f"{drafted.url}/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": COPY, "max_tokens": 6, "temperature": 0, "logprobs": 2,
        "speculative": {"method": "lookup"}})
    assert r.status_code == 200 and len(r.json()["choices"][0]["logprobs"]["tokens"]) == 6


def test_a_server_without_speculation(model, running):
    """No default: a request names its method; a draft it does not have is refused."""
    out = chat(running.url, COPY, speculative={"method": "lookup"})
    assert out["usage"]["speculative"]["draft_tokens"] > 0
    assert "speculative" not in chat(running.url, COPY)["usage"]
    for field, message in (({"tokens": 2}, "'speculative.method' is needed"),
                           ({"method": "draft"}, "needs a server started with --draft")):
        r = httpx.post(f"{running.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "speculative": field})
        assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_serve_refuses_conflicting_speculative_options(tiny_q4_f32):
    for args, message in ((["--draft", str(tiny_q4_f32), "--lookup", "3"], "not both"),
                          (["--draft-tokens", "3"], "--draft-tokens needs --draft"),
                          # "" loaded the default model as the draft
                          (["--draft", ""], "error: --draft needs a MODEL (it was empty)"),
                          (["--draft", "/nonexistent"], "error: --draft /nonexistent: model "
                                                        "folder /nonexistent does not exist")):
        result = CliRunner().invoke(main, ["serve", str(tiny_q4_f32), "--port", str(free_port()), *args])
        assert result.exit_code != 0
        assert message in result.output


def test_a_client_that_leaves_ends_its_speculation(drafted, monkeypatch):
    worker = drafted.server.worker
    body = {"model": MODEL, "messages": [{"role": "user", "content": COPY}], "stream": True,
            "temperature": 0, "max_tokens": 400, "speculative": {"method": "lookup"}}
    # the engine holds once the reply has text, until the client has gone (on a busy
    # machine it could otherwise finish all 400 tokens before the client reads the first)
    # (on the class: the worker makes its speculative batch anew after a failed step)
    left, step = threading.Event(), SpeculativeBatch.step

    def held_step(self):  # only a live reply holds it (an earlier test's leaving one is
        # reaped after this step; holding for it would starve this request of its first step)
        if any(job.made and not job.cancelled.is_set() for job in worker.speculating.values()):
            assert left.wait(120)
        return step(self)
    monkeypatch.setattr(SpeculativeBatch, "step", held_step)
    with httpx.stream("POST", f"{drafted.url}/v1/chat/completions", json=body,
                      timeout=120) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first text: it is speculating
        assert worker.speculating, (list(worker.finished), worker.fault)
        job = next(iter(worker.speculating.values()))
    deadline = time.time() + 60  # the server notices the client has gone
    while not job.cancelled.is_set() and time.time() < deadline:
        time.sleep(0.02)
    left.set()
    for _ in range(1000):  # the engine notices within a step
        if not worker.speculating:
            break
        time.sleep(0.02)
    assert not worker.speculating
    assert worker.finished[-1]["cancelled"] and worker.finished[-1]["generated"] < 400
    assert any(len(c.tokens) > len(COPY) // 8 for c in worker.pool.caches)  # kept for reuse
