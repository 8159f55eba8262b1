"""Structured outputs with random weights: the mask, not the model, makes the reply valid.

Schemas are generated here, from flat to nested; every reply must validate with the
jsonschema library at temperature 0 and at temperature 1 with several seeds, through the
lone engine and through the server's batch (the openai SDK's parse(), Ollama's format=,
forced tool calls). Strings, arrays and numbers in the generated schemas are bounded, so a
valid reply is always reachable within the token limit.
"""

from __future__ import annotations

import json
import random

import httpx
import jsonschema
import mlx.core as mx
import ollama
import openai
import pytest
from click.testing import CliRunner

from qwen_mlx.cli import main
from qwen_mlx.engine.constraint import Constraint
from qwen_mlx.serve import Server

from .serving import Running

MESSAGES = [{"role": "user", "content": "Describe a city as data."}]
NAME = "tiny-instruct"


def leaf(rng: random.Random) -> dict:
    kind = rng.choice(["int", "bool", "null", "enum", "const", "string", "pattern", "date",
                       "number"])
    if kind == "int":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}
    if kind == "number":
        return {"type": "number", "minimum": 0, "maximum": 1000, "multipleOf": 0.25}
    if kind == "bool":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "north", "south", 3, None], 3)}
    if kind == "const":
        return {"const": rng.choice(["fixed", 42, True])}
    if kind == "pattern":
        return {"type": "string", "pattern": "^[a-z]{2,6}-[0-9]{2}$"}
    if kind == "date":
        return {"type": "string", "format": "date"}
    return {"type": "string", "minLength": rng.randint(0, 3), "maxLength": rng.randint(3, 12)}


def schema_of(rng: random.Random, depth: int) -> dict:
    """A random schema; deeper ones nest objects, arrays and anyOf."""
    if depth == 0:
        return leaf(rng)
    kind = rng.choice(["object", "object", "array", "anyOf"])
    if kind == "array":
        low = rng.randint(0, 2)
        return {"type": "array", "items": schema_of(rng, depth - 1), "minItems": low,
                "maxItems": low + rng.randint(0, 2)}
    if kind == "anyOf":
        return {"anyOf": [schema_of(rng, depth - 1), schema_of(rng, depth - 1)]}
    names = rng.sample(["name", "size", "tags", "where", "when", "ok", "parts", "note"],
                       rng.randint(1, 4))
    properties = {n: schema_of(rng, rng.randint(0, depth - 1)) for n in names}
    return {"type": "object", "properties": properties,
            "required": rng.sample(names, rng.randint(1, len(names))),
            "additionalProperties": False}


SCHEMAS = [schema_of(random.Random(i), min(i // 8, 3)) for i in range(32)]


@pytest.fixture(scope="module")
def instruct(tiny_instruct):
    from qwen_mlx import load

    return load(tiny_instruct, context=1024)


def allowed_throughout(model, constraint: Constraint, tokens: list[int]) -> bool:
    """Replay the reply through a fresh matcher: every token was allowed when sampled."""
    matcher = model.grammars.compile(constraint).deep_copy()
    return all(matcher.consume_token(t) for t in tokens)


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_generated_schemas_always_validate(instruct, index):
    schema = SCHEMAS[index]
    constraint = Constraint.schema(schema)
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "top_k": 0, "top_p": 1.0,
                                          "seed": 1},
                     {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 2}):
        out = instruct.generate(MESSAGES, constraint=constraint, max_tokens=400, **sampling)
        assert out.stats.finish_reason == "stop", (schema, out.text)
        jsonschema.validate(json.loads(out.text), schema)
        assert allowed_throughout(instruct, constraint, out.tokens)


def test_regex_choice_and_the_length_limit(instruct):
    out = instruct.generate(MESSAGES, constraint=Constraint.regex(r"[a-z]{3}-\d{2}"),
                            temperature=1.0, seed=4, max_tokens=30)
    assert out.stats.finish_reason == "stop" and len(out.text) == 6 and out.text[3] == "-"
    for seed in range(4):
        out = instruct.generate(MESSAGES, constraint=Constraint.choice(["yes", "no", "maybe"]),
                                temperature=1.0, top_k=0, top_p=1.0, seed=seed, max_tokens=10)
        assert out.text in ("yes", "no", "maybe")
    # cut inside the JSON: it says so, never "stop"
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 50}},
              "required": ["a"], "additionalProperties": False}
    out = instruct.generate(MESSAGES, constraint=Constraint.schema(schema), max_tokens=3,
                            temperature=0)
    assert out.stats.finish_reason == "length" and out.text == '{"a":'


def test_unsupported_schemas_are_named_before_anything_runs(instruct):
    for schema, problem in (({"type": "array", "uniqueItems": True},
                             'Unimplemented keys: ["uniqueItems"]'),
                            ({"type": "string", "format": "hostnamex"},
                             "Unknown format: hostnamex"),
                            ({"type": "nope"}, "Invalid type: nope"),
                            # no finite instance: before, a reply '{"' that ended as "stop"
                            # and 48 lines of parser state on stderr
                            ({"type": "object", "properties": {"a": {"$ref": "#"}},
                              "required": ["a"]},
                             "no finite JSON matches it, or it is too complex to follow (a "
                             "required property that refers back to its own object?): parser "
                             "error: Too many items (limit 50000; ff_tokens); try avoiding "
                             "single-byte/short lexemes")):
        with pytest.raises(Exception) as e:
            instruct.request(MESSAGES, constraint=Constraint.schema(schema))
        assert str(e.value) == f"the JSON schema is not supported: {problem}"


def _allowed(masked) -> set[int]:
    return {i for i, v in enumerate(masked[0].tolist()) if v > float("-inf")}


def test_thinking_first_then_the_grammar(tiny_q4_f32):
    """A hybrid model with thinking on: its first token may open a <think> block (then
    tokens pass unmasked until </think> and the grammar starts there) or be the grammar's
    first, and then the grammar applies from the first token (a model that skips the block
    was once never constrained)."""
    from qwen_mlx import load

    hybrid = load(tiny_q4_f32, context=1024)
    request = hybrid.request(MESSAGES, constraint=Constraint.choice(["yes", "no"]))
    assert request.think_first
    assert not hybrid.request(MESSAGES, enable_thinking=False,
                              constraint=Constraint.choice(["yes", "no"])).think_first
    think, think_end = (hybrid.tokenizer.convert_tokens_to_ids(t)
                        for t in ("<think>", "</think>"))
    logits = mx.zeros((1, hybrid.config["vocab_size"]))
    grammar_start = lambda ids: ids and all(  # noqa: E731
        hybrid.decode([t]) in ("y", "ye", "yes", "n", "no") for t in ids)

    # the model opens the block
    mask = hybrid.processors(request)[-1]
    prompt = list(request.tokens)
    first = _allowed(mask(mx.array(prompt), logits))
    assert think in first and grammar_start(first - {think})
    word = hybrid.encode("hmm", raw=True)[0]
    assert mx.array_equal(mask(mx.array([*prompt, think]), logits), logits)
    assert mx.array_equal(mask(mx.array([*prompt, think, word]), logits), logits)
    assert grammar_start(_allowed(mask(mx.array([*prompt, think, word, think_end]), logits)))

    # the model skips it: constrained from its first token
    mask = hybrid.processors(request)[-1]
    mask(mx.array(prompt), logits)
    n = hybrid.encode("n", raw=True)[0]
    after = _allowed(mask(mx.array([*prompt, n]), logits))
    assert after and {hybrid.decode([t]) for t in after} <= {"o"} | {
        hybrid.decode([e]) for e in hybrid.eos_ids}  # "n" goes on as "no" only


def test_a_hybrid_reply_without_a_think_block_is_constrained(tiny_q4_f32):
    from qwen_mlx import load

    hybrid = load(tiny_q4_f32, context=1024)
    for seed in range(4):
        text = hybrid.generate(MESSAGES, constraint=Constraint.choice(["yes", "no"]),
                               max_tokens=40, temperature=1.0, seed=seed).text
        assert text in ("yes", "no") or text.startswith("<think>"), text


@pytest.fixture(scope="module")
def served(instruct):
    running = Running(Server(instruct, NAME))
    yield running
    running.stop()


def test_openai_parse_with_pydantic_and_streamed_json(instruct, served):
    from typing import Literal

    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=16)
        population: int = Field(ge=0, le=10_000_000)
        climate: Literal["hot", "mild", "cold"]
        districts: list[str] = Field(max_length=3)

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    r = client.chat.completions.parse(model=NAME, messages=MESSAGES, response_format=City,
                                      temperature=0, max_tokens=300)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and r.choices[0].finish_reason == "stop"
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "maximum": 9}},
              "required": ["ok", "n"], "additionalProperties": False}
    chunks = client.chat.completions.create(
        model=NAME, messages=MESSAGES, stream=True, temperature=0, max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema,
                                                                "strict": True}})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), schema)
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=20,
                                       response_format={"type": "json_object"}, temperature=0)
    assert r.choices[0].message.content.startswith("{")


def test_batched_structured_replies_equal_their_lone_ones(instruct, served):
    import asyncio

    async def one(client, schema):
        r = await client.chat.completions.create(
            model=NAME, messages=MESSAGES, temperature=0, max_tokens=400,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "s", "schema": schema}})
        return r.choices[0].message.content

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
        return await asyncio.gather(*(one(client, s) for s in SCHEMAS[16:24]))

    texts = asyncio.run(run())
    for schema, text in zip(SCHEMAS[16:24], texts):
        jsonschema.validate(json.loads(text), schema)
        assert text == instruct.generate(MESSAGES, constraint=Constraint.schema(schema),
                                         temperature=0, max_tokens=400).text


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"],
        "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "integer", "minimum": -12, "maximum": 14}},
        "required": ["zone"], "additionalProperties": False}}}


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_calls(served, stream):
    """tool_choice "required": one or more calls (parallel_tool_calls is true unless
    false, as in OpenAI's API), exactly one with parallel_tool_calls false; a named
    function: one call of it. Every call's arguments are valid under its schema."""
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    for choice, names, extra, counts in (
            ("required", {"get_weather", "get_time"}, {}, range(1, 20)),
            ("required", {"get_weather", "get_time"}, {"parallel_tool_calls": False}, [1]),
            ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}, {}, [1])):
        kwargs = dict(model=NAME, messages=MESSAGES, tools=[WEATHER, TIME], tool_choice=choice,
                      temperature=0, max_tokens=200, **extra)
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
            finish = chunks[-1].choices[0].finish_reason
        else:
            r = client.chat.completions.create(**kwargs)
            calls, finish = r.choices[0].message.tool_calls, r.choices[0].finish_reason
        assert finish == "tool_calls" and len(calls) in counts
        for call in calls:
            assert call.function.name in names
            tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
            jsonschema.validate(json.loads(call.function.arguments),
                                tool["function"]["parameters"])


def test_several_forced_calls_follow_qwens_format():
    """The grammar for parallel forced calls: one or more <tool_call> blocks, one per line,
    as Qwen3's template writes them; a single forced call allows exactly one."""
    from qwen_mlx.serve.formats import forced_tool_call

    call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": 3}}\n</tool_call>'
    several = forced_tool_call([WEATHER, TIME], None, several=True).grammar()
    one = forced_tool_call([WEATHER, TIME], None).grammar()
    for text, grammar, ok in ((call, several, True), (call + "\n" + call, several, True),
                              (call + "\n" + call, one, False), (call, one, True)):
        assert _lark_accepts(grammar, text) == ok, (text, ok)


def _lark_accepts(grammar: str, text: str) -> bool:
    """Whether the grammar accepts the text, by llguidance over the fixture tokenizer."""
    from llguidance import LLMatcher, LLTokenizer

    from qwen_mlx.testing import tokenizer_json

    tok = LLTokenizer(tokenizer_json().decode())
    matcher = LLMatcher(tok, grammar)
    ids = tok.tokenize_str(text)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


def test_ollama_format_and_refusals(served):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
                                                     "maximum": 5}},
              "required": ["n"], "additionalProperties": False}
    local = ollama.Client(host=served.url)
    r = local.chat(model=NAME, messages=MESSAGES, format=schema, options={"temperature": 0})
    jsonschema.validate(json.loads(r.message.content), schema)
    r = local.generate(model=NAME, prompt="Pick", format=schema, think=False,
                       options={"temperature": 0})
    jsonschema.validate(json.loads(r.response), schema)
    url = served.url
    bad = {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}
    r = httpx.post(f"{url}/v1/chat/completions", json={
        "model": NAME, "messages": MESSAGES, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": bad}}})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": 'the JSON schema is not supported: Unimplemented keys: ["uniqueItems"]',
        "type": "invalid_request_error", "param": "response_format", "code": None}
    r = httpx.post(f"{url}/api/chat", json={"model": NAME, "messages": MESSAGES,
                                            "format": bad})
    assert r.status_code == 400 and "uniqueItems" in r.json()["error"]
    endless = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
    r = httpx.post(f"{url}/v1/chat/completions", json={
        "model": NAME, "messages": MESSAGES, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": endless}}})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "the JSON schema is not supported: no finite JSON matches it")
    for body, message in (
            ({"response_format": {"type": "yaml"}},
             "'response_format' type must be text, json_object or json_schema"),
            ({"tool_choice": {"type": "function", "function": {"name": "nope"}},
              "tools": [WEATHER]}, "tool_choice names 'nope', which is not in 'tools'"),
            ({"tool_choice": "required"}, "forcing a tool call needs 'tools'"),
            ({"response_format": {"type": "json_object"}, "tool_choice": "required",
              "tools": [WEATHER]},
             "'response_format' and a forced tool_choice cannot be combined")):
        r = httpx.post(f"{url}/v1/chat/completions",
                       json={"model": NAME, "messages": MESSAGES, **body})
        assert r.status_code == 400 and r.json()["error"]["message"] == message
    r = httpx.post(f"{url}/api/chat", json={"model": NAME, "messages": MESSAGES,
                                            "think": True})
    assert r.status_code == 400 and r.json()["error"].startswith("'think' may only be false")


def test_generate_command_forms(tiny_instruct, tmp_path):
    schema = {"type": "object", "properties": {"x": {"enum": ["a", "b"]}}, "required": ["x"],
              "additionalProperties": False}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    run = CliRunner().invoke
    r = run(main, ["generate", str(tiny_instruct), "-p", "hi", "-q", "--temp", "0",
                   "--json-schema", str(tmp_path / "s.json")])
    assert r.exit_code == 0 and json.loads(r.stdout) in ({"x": "a"}, {"x": "b"})
    r = run(main, ["generate", str(tiny_instruct), "-p", "hi", "-q", "--choice", "up,down"])
    assert r.exit_code == 0 and r.stdout.strip() in ("up", "down")
    r = run(main, ["generate", str(tiny_instruct), "-p", "hi", "-q", "--regex", "[0-9]{4}"])
    assert r.exit_code == 0 and r.stdout.strip().isdigit() and len(r.stdout.strip()) == 4
    (tmp_path / "bad.json").write_text('{"type": "array", "uniqueItems": true}')
    for args, message in (
            (["--json-schema", str(tmp_path / "bad.json")],
             'error: the JSON schema is not supported: Unimplemented keys: ["uniqueItems"]'),
            (["--regex", "[a-z"], 'error: the regular expression is not supported: invalid '
                                  'regex "[a-z" (in regex): unclosed character class'),
            (["--regex", "x", "--choice", "a"],
             "error: --regex and --choice cannot be combined: choose one")):
        r = run(main, ["generate", str(tiny_instruct), "-p", "hi", *args])
        assert r.exit_code == 1 and r.output.strip() == message
