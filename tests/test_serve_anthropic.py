"""Anthropic's Messages API, driven by the official ``anthropic`` SDK as its users run it:
messages.create and messages.stream give the text /v1/chat/completions gives for the same
conversation (one engine), a forced tool and its tool_result round trip, stop sequences
named, count_tokens, x-api-key, --alias names, thinking blocks from a hybrid model's
<think>, errors in Anthropic's shape; and every unknown route answers JSON in its API's
shape."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from qwen_mlx.serve import Server

from .serving import MODEL, Running
from .webpage import Scripted

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {
               "city": {"type": "string", "maxLength": 8}},  # a random model's call ends
               "required": ["city"], "additionalProperties": False}}
ASK = [{"role": "user", "content": "Tell me about the sea."}]
T0 = {"temperature": 0}  # greedy: the 2026 SDK has no temperature argument; raw fields work


@pytest.fixture(scope="module")
def served(model):
    r = Running(Server(model, MODEL, api_key="k3y", aliases=("claude-*",)))
    yield r
    r.stop()


def client(url: str, key: str = "k3y") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def chat_text(url: str, messages: list[dict], **extra) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer k3y"},
                   json={"model": MODEL, "messages": messages, "temperature": 0, **extra},
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_create_and_stream_give_the_chat_completions_text(served):
    c = client(served.url)
    system = "You are terse."
    out = c.messages.create(model=MODEL, max_tokens=12, extra_body=T0, system=system,
                            messages=ASK)
    plain = chat_text(served.url, [{"role": "system", "content": system}, *ASK],
                      max_tokens=12)
    assert [b.type for b in out.content] == ["text"]
    assert out.content[0].text == plain["choices"][0]["message"]["content"]
    assert (out.stop_reason, out.stop_sequence) == ("max_tokens", None)
    assert out.usage.output_tokens == 12 == plain["usage"]["completion_tokens"]
    assert out.usage.input_tokens + out.usage.cache_read_input_tokens == \
        plain["usage"]["prompt_tokens"]
    assert out.model == MODEL and out.id.startswith("msg_")
    with c.messages.stream(model=MODEL, max_tokens=12, extra_body=T0, system=system,
                           messages=ASK) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == out.content[0].text == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 12
    # the same text as system blocks with cache_control, and the user's as text blocks
    blocks = c.messages.create(
        model=MODEL, max_tokens=12, extra_body=T0,
        system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text",
                                                "text": ASK[0]["content"]}]}])
    assert blocks.content[0].text == out.content[0].text
    assert blocks.usage.cache_read_input_tokens > 0  # the prefix came from the cache


def test_a_stop_sequence_is_named(served):
    c = client(served.url)
    text = c.messages.create(model=MODEL, max_tokens=16, extra_body=T0,
                             messages=ASK).content[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = c.messages.create(model=MODEL, max_tokens=16, extra_body=T0, messages=ASK,
                            stop_sequences=["never-there", stop])
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    assert text.startswith(cut.content[0].text) and stop not in cut.content[0].text


def test_a_forced_tool_and_its_result_round_trip(served):
    c = client(served.url)
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    off = {"type": "disabled"}  # the grammar from the first token (Anthropic forbids a
    # forced tool with thinking on, too)
    out = c.messages.create(model=MODEL, max_tokens=200, extra_body=T0, tools=[WEATHER],
                            tool_choice={"type": "tool", "name": "get_weather"},
                            messages=messages, thinking=off)
    assert out.stop_reason == "tool_use"
    (use,) = [b for b in out.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input.get("city"), str)
    assert use.id.startswith("toolu_")
    with c.messages.stream(model=MODEL, max_tokens=200, extra_body=T0, tools=[WEATHER],
                           tool_choice={"type": "any", "disable_parallel_tool_use": True},
                           messages=messages, thinking=off) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    assert final.content[-1].input == use.input
    # the result goes back as a tool_result block; the next reply is text
    messages += [{"role": "assistant", "content": [
                     {"type": "text", "text": b.text} if b.type == "text" else
                     {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
                     for b in out.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": "3 degrees"}]}]
    again = c.messages.create(model=MODEL, max_tokens=8, extra_body=T0, tools=[WEATHER],
                              tool_choice={"type": "none"}, messages=messages, thinking=off)
    assert again.stop_reason == "max_tokens" and again.content[0].type == "text"
    # what the model read: the call and its result, as the chat template renders them
    plain = chat_text(served.url, [messages[0], {"role": "assistant", "content": "",
                                                 "tool_calls": [{"type": "function", "function": {
                                                     "name": "get_weather",
                                                     "arguments": json.dumps(use.input)}}]},
                                   {"role": "tool", "content": "3 degrees"}], max_tokens=8,
                      chat_template_kwargs={"enable_thinking": False})
    assert again.content[0].text == plain["choices"][0]["message"]["content"]


def test_output_config_format_is_a_json_schema(served):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
                                                     "maximum": 5}},
              "required": ["n"], "additionalProperties": False}
    out = client(served.url).messages.create(
        model=MODEL, max_tokens=40, messages=ASK, extra_body=T0,
        thinking={"type": "disabled"},  # the grammar from the first token
        output_config={"format": {"type": "json_schema", "schema": schema}})
    value = json.loads(out.content[0].text)
    assert set(value) == {"n"} and 1 <= value["n"] <= 5 and out.stop_reason == "end_turn"


def test_count_tokens_is_the_prompt_create_reads(served):
    c = client(served.url)
    counted = c.messages.count_tokens(model=MODEL, messages=ASK, tools=[WEATHER],
                                      system="Be brief.")
    out = c.messages.create(model=MODEL, max_tokens=1, messages=ASK, tools=[WEATHER],
                            system="Be brief.")
    assert counted.input_tokens == out.usage.input_tokens + out.usage.cache_read_input_tokens
    assert counted.input_tokens > 50  # the tool's schema is in it


def test_keys_aliases_and_errors_in_anthropics_shape(served):
    out = client(served.url).messages.create(model="claude-sonnet-4-5", max_tokens=2,
                                             messages=ASK)
    assert out.model == "claude-sonnet-4-5" and out.usage.output_tokens == 2
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(served.url, "wrong").messages.create(model=MODEL, max_tokens=2, messages=ASK)
    assert e.value.body == {"type": "error", "error": {
        "type": "authentication_error",
        "message": "invalid or missing API key (Authorization: Bearer KEY)"}}
    c = client(served.url)
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(model="gpt-4o", max_tokens=2, messages=ASK)
    for kwargs, message in (
            ({"max_tokens": None}, "'max_tokens' is required"),
            ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
                "type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
             "messages[0].content[0]: 'image' blocks are not supported (the model reads "
             "text: text, tool_use, tool_result)"),
            ({"tools": [{"type": "bash_20250124", "name": "bash"}]},
             "tools[0]: the tool type 'bash_20250124' is not supported (only custom tools "
             "with an input_schema)"),
            ({"thinking": {"type": "enabled", "budget_tokens": 1024},
              "extra_body": {"top_k": -1}}, "'top_k' is out of range"),
            ({"output_config": {"effort": "high"}},
             "'output_config.effort' is not supported by qwen-mlx"),
            ({"inference_geo": "us"}, "'inference_geo' is not supported by qwen-mlx"),
            ({"extra_body": {"mcp_servers": []}}, "'mcp_servers' is not supported by qwen-mlx")):
        args = {"model": MODEL, "max_tokens": 2, "messages": ASK, **kwargs}
        if args["max_tokens"] is None:
            del args["max_tokens"]
            with pytest.raises(anthropic.BadRequestError) as e:
                c.post("/v1/messages", body=args, cast_to=httpx.Response)
        else:
            with pytest.raises(anthropic.BadRequestError) as e:
                c.messages.create(**args)
        assert e.value.body["error"] == {"type": "invalid_request_error", "message": message}


def test_a_hybrid_models_thinking_is_a_thinking_block(model):
    """<think>…</think> split across pieces: a thinking block, then the text, streamed and
    not; with thinking disabled the template's empty block is not shown as one."""
    running = Running(Scripted(model, MODEL))
    try:
        scripted, c = running.server, client(running.url, "x")
        pieces = ["<think>\nThe sea", " is big.\n</th", "ink>\n\nIt is ", "vast."]
        scripted.replies = [pieces, pieces]
        out = c.messages.create(model=MODEL, max_tokens=50, messages=ASK,
                                thinking={"type": "enabled", "budget_tokens": 1024})
        assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None))
                for b in out.content] == [("thinking", "The sea is big.\n"),
                                          ("text", "It is vast.")]
        with c.messages.stream(model=MODEL, max_tokens=50, messages=ASK) as stream:
            kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
            final = stream.get_final_message()
        assert kinds[0] == "thinking_delta" and kinds[-1] == "text_delta"
        assert [b.type for b in final.content] == ["thinking", "text"]
        assert final.content[1].text == "It is vast."
        assert scripted.asked[0]["thinking"] is True and scripted.asked[1]["thinking"] is None
        scripted.replies = [["Hello."]]
        off = c.messages.create(model=MODEL, max_tokens=5, messages=ASK,
                                thinking={"type": "disabled"})
        assert [b.type for b in off.content] == ["text"] and scripted.asked[2]["thinking"] \
            is False
    finally:
        running.stop()


def test_unknown_routes_answer_in_their_apis_shape(served):
    url, key = served.url, {"Authorization": "Bearer k3y"}
    r = httpx.post(f"{url}/v1/audio/speech", headers=key, json={})
    assert r.status_code == 404 and r.json()["error"]["message"].startswith(
        "/v1/audio/speech is not served by qwen-mlx (its APIs: ")
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{url}/api/create", headers=key, json={})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert r.json()["error"].startswith("/api/create is not served by qwen-mlx")
    r = httpx.post(f"{url}/v1/messages/batches", headers=key, json={})
    assert r.status_code == 404 and r.json()["type"] == "error" and \
        r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(f"{url}/v1/messages", headers=key)
    assert r.status_code == 405 and r.json()["error"]["message"].startswith(
        "GET /v1/messages is not served here")
    with pytest.raises(anthropic.NotFoundError) as e:  # what the SDK shows: the reason
        client(url).messages.batches.list()
    assert "/v1/messages/batches is not served by qwen-mlx" in str(e.value)


CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.332"


def test_claude_code_runs_a_prompt_end_to_end(model, tmp_path):
    """`claude -p` (Claude Code, from the npm registry, run by npx as its users run it)
    against the server: its 20k-token system prompt and 12 tools, its thinking, context
    management and deferred tools, streamed back. The replies are scripted (a random
    model never ends a reply) and the prompt cut to the fixture's context; the rest is the
    server's own code."""
    import os
    import shutil
    import subprocess

    if shutil.which("npx") is None:
        pytest.skip("Node's npx is not installed (Claude Code runs with it)")
    running = Running(Scripted(model, MODEL, aliases=("claude-*",)))
    try:
        scripted = running.server
        scripted.last_tokens = 400
        scripted.replies = [["Hi", " from", " qwen-mlx."]]
        env = {**os.environ, "HOME": str(tmp_path / "home"), "ANTHROPIC_API_KEY": "x",
               "ANTHROPIC_BASE_URL": running.url, "DISABLE_TELEMETRY": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "64", "MAX_THINKING_TOKENS": "0"}
        try:
            done = subprocess.run(["npx", "-y", CLAUDE_CODE, "-p", "Say hi", "--model",
                                   "claude-sonnet-4-5"], capture_output=True, text=True,
                                  env=env, cwd=tmp_path, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail("claude -p did not end within 10 minutes")
        if done.returncode != 0 and "ENOTFOUND" in done.stderr + done.stdout:
            pytest.skip("the npm registry cannot be reached")
        assert (done.returncode, done.stdout.strip()) == (0, "Hi from qwen-mlx."), \
            done.stderr[-2000:]
        asked = scripted.asked[0]
        assert len(asked["tools"]) >= 5 and asked["messages"][0]["role"] == "system"
    finally:
        running.stop()
