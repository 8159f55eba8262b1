"""OpenAI's Responses API through the official ``openai`` SDK (and openai-agents' default
model): create and stream give the text /v1/chat/completions gives for the same
conversation, a forced function tool and its function_call_output round trip through
previous_response_id (which prefills only the new input), stored responses retrieved,
listed and deleted, responses.parse with Pydantic, a hybrid model's thinking as a
reasoning item, refusals by name."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from qwen_mlx.serve import Server

from .serving import MODEL, Running
from .webpage import Scripted

T0 = {"temperature": 0}
OFF = {"effort": "none"}  # the hybrid fixture's thinking off: the grammar from the start
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "maxLength": 8}}, "required": ["city"],
               "additionalProperties": False}}


@pytest.fixture(scope="module")
def client(running):
    return openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)


def chat_text(url: str, messages: list[dict], **extra) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": messages,
                                                       "temperature": 0, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_create_and_stream_give_the_chat_completions_text(running, client):
    out = client.responses.create(model=MODEL, input="Tell me about the sea.",
                                  instructions="You are terse.", max_output_tokens=12, **T0)
    plain = chat_text(running.url, [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": "Tell me about the sea."}],
                      max_tokens=12)
    assert out.output_text == plain["choices"][0]["message"]["content"]
    assert (out.status, out.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert out.usage.output_tokens == 12 and out.usage.input_tokens == \
        plain["usage"]["prompt_tokens"]
    kinds, numbers = [], []
    with client.responses.stream(model=MODEL, input="Tell me about the sea.",
                                 instructions="You are terse.", max_output_tokens=12,
                                 **T0) as stream:
        for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
            last = event
    # cut at the limit, as OpenAI ends it: response.incomplete (the SDK's
    # get_final_response() wants response.completed, so the last event's response is read)
    assert last.response.output_text == out.output_text
    assert numbers == list(range(len(numbers)))
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete"
    assert {"response.output_item.added", "response.content_part.added",
            "response.output_text.delta", "response.output_text.done",
            "response.output_item.done"} <= set(kinds)


@pytest.fixture(scope="module")
def instruct_served(tiny_instruct):
    """Like Qwen3-4B-Instruct-2507 (no thinking switch): an earlier turn renders as it was
    generated, so a continuation's prefix is all in the KV cache."""
    from qwen_mlx import load

    r = Running(Server(load(tiny_instruct, context=4096), MODEL))
    yield r
    r.stop()


def test_a_forced_tool_round_trip_through_previous_response_id(instruct_served):
    running = instruct_served
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    first = client.responses.create(model=MODEL, input="Weather in Oslo?", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"},
                                    max_output_tokens=200, **T0)
    (call,) = [i for i in first.output if i.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    assert first.status == "completed"
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=8,
        **T0, input=[{"type": "function_call_output", "call_id": call.call_id,
                      "output": "3 degrees"}])
    # only the new input is prefilled (its tool turn's few tokens of template): the
    # conversation's prefix came from the KV cache
    new = len(running.server.model.encode(
        "<|im_start|>user\n<tool_response>\n3 degrees\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n", raw=True))
    assert second.usage.input_tokens - second.usage.input_tokens_details.cached_tokens <= \
        new + 8
    plain = chat_text(running.url, [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "content": "3 degrees"}], max_tokens=8, tools=[
            {"type": "function", "function": {k: v for k, v in WEATHER.items()
                                              if k != "type"}}])
    message = plain["choices"][0]["message"]
    assert second.output_text == (message["content"] or "")
    assert [i.name for i in second.output if i.type == "function_call"] == \
        [c["function"]["name"] for c in message.get("tool_calls") or []]
    # stored: retrieved, its input listed, deleted
    assert client.responses.retrieve(second.id).output_text == second.output_text
    items = client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]
    assert client.responses.delete(second.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=MODEL, previous_response_id=second.id, input="Go on",
                                max_output_tokens=2)
    assert "no stored response" in e.value.body["message"]


def test_a_long_conversation_continues_from_its_cache_after_eight_others(instruct_served):
    """A previous_response_id continuation of a 2,000-token conversation prefills only its
    new input (plus at most 8 tokens), though 8 other conversations ran in between."""
    running = instruct_served
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    model = running.server.model
    words = " ".join(f"item {i} is blue;" for i in range(2000))
    long = model.decode(model.encode(words, raw=True)[:2000])
    first = client.responses.create(model=MODEL, input=long, max_output_tokens=2, **T0)
    assert first.usage.input_tokens >= 2000
    for i in range(8):
        other = client.responses.create(model=MODEL, input=f"Conversation {i}: " + "hello " * 90,
                                        max_output_tokens=2, **T0)
        assert other.usage.input_tokens_details.cached_tokens < 20  # shares nothing
    second = client.responses.create(model=MODEL, previous_response_id=first.id,
                                     input="Which item is red?", max_output_tokens=2, **T0)
    new = len(model.encode("<|im_start|>user\nWhich item is red?<|im_end|>\n"
                           "<|im_start|>assistant\n", raw=True))
    assert second.usage.input_tokens > 2000
    assert second.usage.input_tokens - second.usage.input_tokens_details.cached_tokens <= \
        new + 8


def test_parse_with_pydantic(client):
    class Pick(BaseModel):  # bounded, so a random model's output ends in the limit
        name: str = Field(max_length=8)
        size: int = Field(ge=0, le=99)

    out = client.responses.parse(model=MODEL, input="Pick one.", text_format=Pick,
                                 reasoning=OFF, max_output_tokens=80, **T0)
    assert isinstance(out.output_parsed, Pick)


def test_refusals_name_the_field(client):
    for kwargs, message in (
            ({"tools": [{"type": "web_search"}]}, "the tool type 'web_search' is not supported"),
            ({"input": [{"role": "user", "content": [{"type": "input_image",
                                                      "image_url": "x"}]}]},
             "only text parts are supported, not 'input_image'"),
            ({"reasoning": {"effort": "extreme"}}, "'reasoning.effort' is not one of"),
            ({"previous_response_id": "resp_nope"}, "no stored response 'resp_nope'"),
            ({"extra_body": {"conversation": "c1"}}, "'conversation' is not supported")):
        args = {"model": MODEL, "input": "Hi", "max_output_tokens": 2, **kwargs}
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
            client.responses.create(**args)
        assert message in e.value.body["message"], e.value.body


def test_a_hybrid_models_thinking_is_a_reasoning_item(model):
    running = Running(Scripted(model, MODEL))
    try:
        scripted = running.server
        c = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        pieces = ["<think>\nThe sea", " is big.\n</th", "ink>\n\nIt is ", "vast."]
        scripted.replies = [pieces, pieces]
        out = c.responses.create(model=MODEL, input="Tell me about the sea.")
        assert [i.type for i in out.output] == ["reasoning", "message"]
        assert out.output[0].content[0].text == "The sea is big.\n"
        assert out.output_text == "It is vast."
        with c.responses.stream(model=MODEL, input="Tell me about the sea.") as stream:
            kinds = [e.type for e in stream]
            final = stream.get_final_response()
        assert "response.reasoning_text.delta" in kinds and final.output_text == "It is vast."
    finally:
        running.stop()


def test_openai_agents_default_model_runs_against_it(model):
    """openai-agents' default model speaks Responses (after set_default_openai_client): a
    function tool the model calls, its result sent back, the final answer (scripted
    replies: a random model would neither call the tool nor end its reply)."""
    from agents import (Agent, Runner, function_tool, set_default_openai_api,
                        set_default_openai_client, set_tracing_disabled)

    running = Running(Scripted(model, MODEL))
    try:
        scripted, asked = running.server, []

        @function_tool
        def get_weather(city: str) -> str:
            """Weather in a city."""
            asked.append(city)
            return "3 degrees"

        scripted.calls = [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
        scripted.replies = [["Let me check."], ["It is 3 degrees in Oslo."]]
        set_tracing_disabled(True)
        set_default_openai_client(openai.AsyncOpenAI(base_url=f"{running.url}/v1",
                                                     api_key="x", max_retries=0))
        set_default_openai_api("responses")
        agent = Agent(name="weather", instructions="Be brief.", model=MODEL,
                      tools=[get_weather])
        result = Runner.run_sync(agent, "Weather in Oslo?")
        assert (asked, result.final_output) == (["Oslo"], "It is 3 degrees in Oslo.")
        sent = scripted.asked[-1]["messages"]
        assert (sent[-1]["role"], sent[-1]["content"]) == ("tool", "3 degrees")
    finally:
        running.stop()


CODEX = "@openai/codex@0.171.0"


def test_codex_exec_runs_a_prompt_end_to_end(model, tmp_path):
    """`codex exec` (Codex CLI, from the npm registry, run by npx) with the server as its
    Responses provider (its web search and multi-agent tools switched off: they are not
    function tools): its instructions, 7 function tools, reasoning and include fields,
    streamed back. Scripted replies (a random model never ends one), the prompt cut to the
    fixture's context; the rest is the server's own code."""
    import os
    import shutil
    import subprocess

    if shutil.which("npx") is None:
        pytest.skip("Node's npx is not installed (Codex runs with it)")
    running = Running(Scripted(model, MODEL))
    try:
        scripted = running.server
        scripted.last_tokens = 400
        scripted.replies = [["Hi", " from", " qwen-mlx."]]
        (tmp_path / "codex").mkdir()
        env = {**os.environ, "HOME": str(tmp_path), "CODEX_HOME": str(tmp_path / "codex"),
               "QWEN_KEY": "x"}
        provider = [f'model_providers.qwen.{k}="{v}"' for k, v in (
            ("name", "qwen"), ("base_url", f"{running.url}/v1"), ("wire_api", "responses"),
            ("env_key", "QWEN_KEY"))]
        config = ["model_provider=qwen", 'web_search="disabled"', "features.multi_agent=false",
                  *provider]
        try:
            done = subprocess.run(["npx", "-y", CODEX, "exec", "--skip-git-repo-check", "-m",
                                   MODEL, *[a for c in config for a in ("-c", c)], "Say hi"],
                                  capture_output=True, text=True, env=env, cwd=tmp_path,
                                  timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail("codex exec did not end within 10 minutes")
        if done.returncode != 0 and "ENOTFOUND" in done.stderr + done.stdout:
            pytest.skip("the npm registry cannot be reached")
        assert (done.returncode, done.stdout.strip()) == (0, "Hi from qwen-mlx."), \
            (done.stdout[-1000:], done.stderr[-2000:])
        asked = scripted.asked[0]
        assert [t["function"]["name"] for t in asked["tools"]][:2] == ["exec_command",
                                                                        "write_stdin"]
    finally:
        running.stop()
