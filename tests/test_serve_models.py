"""One server, several models by name (serve/fleet.py), through the official ``openai`` and
``ollama`` clients: a request naming another model loads it once and answers as that model
served alone; /api/ps, /api/tags and /v1/models list them; Ollama's keep_alive (0, a second)
unloads and gives the memory back; the memory budget unloads the least recently used idle
model and never a busy one; an unknown name is a 404 that says how to get it."""

from __future__ import annotations

import threading
import time

import httpx
import mlx.core as mx
import ollama
import openai
import pytest

from qwen_mlx import load
from qwen_mlx.serve import Server
from qwen_mlx.serve.fleet import estimate_bytes, footprint, parse_keep_alive
from qwen_mlx.serve.server import RequestError

from .serving import HI, MODEL, alone_text, poll, ps, served


def test_requests_alternating_models_answer_as_each_alone(two, tiny_q4_f32, other_q4_f32):
    client = openai.OpenAI(base_url=f"{two.url}/v1", api_key="x", max_retries=0)
    texts = {}
    for name in [MODEL, "other", MODEL, "other"]:
        text = client.chat.completions.create(model=name, messages=HI, max_tokens=12,
                                              temperature=0).choices[0].message.content
        assert texts.setdefault(name, text) == text
    assert texts[MODEL] == alone_text(tiny_q4_f32, MODEL)
    assert texts["other"] == alone_text(other_q4_f32, "other")
    assert texts[MODEL] != texts["other"]  # two models indeed
    assert two.server.fleet.loads == 1
    listed = {m.id: m.model_extra["loaded"] for m in client.models.list().data}
    assert listed == {MODEL: True, "other": True}
    loaded = ps(two.url)
    assert set(loaded) == {MODEL, "other"}
    assert loaded[MODEL]["expires_at"].startswith("9999")  # the first model stays
    assert loaded["other"]["expires_at"][:4] == time.strftime("%Y", time.gmtime())
    assert loaded["other"]["context_length"] == 1024
    assert {m["name"] for m in httpx.get(f"{two.url}/api/tags").json()["models"]} == \
        {MODEL, "other"}


def test_eight_first_requests_load_a_model_once(tiny_q4_f32, other_q4_f32):
    running = served(tiny_q4_f32, {"other": other_q4_f32})
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        out = []

        def ask():
            out.append(client.chat.completions.create(
                model="other", messages=HI, max_tokens=4, temperature=0).choices[0]
                .message.content)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(out) == 8 and len(set(out)) == 1
        assert running.server.fleet.loads == 1
    finally:
        running.stop()


def test_keep_alive_unloads_and_gives_the_memory_back(tiny_q4_f32, other_q4_f32):
    running = served(tiny_q4_f32, {"other": other_q4_f32})
    client = ollama.Client(host=running.url)
    try:
        client.chat(model=MODEL, messages=HI, options={"num_predict": 2})  # the first warm
        before = mx.get_active_memory()
        # Ollama's preload idiom: a model and no messages
        assert client.generate(model="other").done_reason == "load"
        assert set(ps(running.url)) == {MODEL, "other"}
        assert mx.get_active_memory() > before
        # keep_alive 0: unloaded once the reply has ended
        reply = client.chat(model="other", messages=HI, options={"num_predict": 4},
                            keep_alive=0)
        assert reply.message.content
        poll(lambda: set(ps(running.url)) == {MODEL} and
             mx.get_active_memory() <= before * 1.05)  # the memory is given back
        assert [m.model for m in client.ps().models] == [MODEL]  # the client's own ps
        # a one-second keep_alive: loaded, then gone a second after its last request
        client.chat(model="other", messages=HI, options={"num_predict": 2}, keep_alive="1s")
        assert "other" in ps(running.url)
        poll(lambda: set(ps(running.url)) == {MODEL})
        # the unload idiom: keep_alive 0 and no prompt
        client.generate(model="other", keep_alive=-1)
        assert ps(running.url)["other"]["expires_at"].startswith("9999")
        assert client.generate(model="other", keep_alive=0).done_reason == "unload"
        poll(lambda: set(ps(running.url)) == {MODEL})
        assert running.server.fleet.loads == 3
        # the model the server started with stays: keep_alive 0 for it is refused
        with pytest.raises(ollama.ResponseError) as e:
            client.generate(model=MODEL, keep_alive=0)
        assert e.value.status_code == 400 and "stays loaded" in e.value.error
    finally:
        running.stop()


def test_memory_unloads_the_idle_model_and_never_a_busy_one(tiny_q4_f32, other_q4_f32,
                                                            tiny_instruct):
    first = Server(load(tiny_q4_f32, context=1024), MODEL)
    room = footprint(first) + max(estimate_bytes(other_q4_f32), estimate_bytes(tiny_instruct))
    running = served(tiny_q4_f32, {"other": other_q4_f32, "instruct": tiny_instruct},
                     budget=room)
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    try:
        client.chat.completions.create(model="other", messages=HI, max_tokens=2)
        client.chat.completions.create(model="instruct", messages=HI, max_tokens=2)
        assert set(ps(running.url)) == {MODEL, "instruct"}  # "other" made room
        # a long reply keeps "instruct" busy: "other" cannot load under it
        done = threading.Event()

        def long_reply():
            with httpx.stream("POST", f"{running.url}/v1/chat/completions", timeout=300, json={
                    "model": "instruct", "messages": HI, "max_tokens": 400, "stream": True,
                    "temperature": 0}) as r:
                for line in r.iter_lines():
                    if line and not done.is_set():
                        done.set()

        stream = threading.Thread(target=long_reply)
        stream.start()
        done.wait(120)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="other", messages=HI, max_tokens=2)
        assert e.value.status_code == 503
        message = e.value.body["message"]
        assert "model 'other' needs" in message and "instruct" in message and \
            "in use" in message
        stream.join(300)
        assert set(ps(running.url)) == {MODEL, "instruct"}
    finally:
        running.stop()


def test_an_unknown_model_is_a_404_that_says_how_to_get_it(two):
    client = openai.OpenAI(base_url=f"{two.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=HI, max_tokens=2)
    assert "model 'nope' not found here" in e.value.body["message"]
    assert "qwen-mlx convert nope" in e.value.body["message"]
    with pytest.raises(ollama.ResponseError) as o:
        ollama.Client(host=two.url).chat(model="nope", messages=HI)
    assert o.value.status_code == 404 and "/api/pull" in o.value.error


@pytest.mark.parametrize("value, seconds", [
    ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("-1", None), (-1, None), (0, 0.0),
    ("0", 0.0), (90, 90.0), ("2.5s", 2.5), (2**64, None), (10**400, None), ("-5m", None)])
def test_keep_alive_reads_as_ollama_reads_it(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [], "m", "1x"])
def test_a_keep_alive_that_is_not_a_duration_is_refused(value):
    with pytest.raises(RequestError, match="keep_alive"):
        parse_keep_alive(value)


def test_pull_copy_and_delete_as_the_ollama_client_does(tiny_q4_f32, tiny_hf):
    """/api/pull converts into the cache (a local folder here; a hub id offline is a 400 at
    once), the pulled model is served by name; /api/copy names a model again; /api/delete
    unloads and removes a conversion, and refuses a folder the server was given."""
    from qwen_mlx.hub import cache

    running = served(tiny_q4_f32, {})
    client = ollama.Client(host=running.url)
    try:
        with pytest.raises(ollama.ResponseError) as e:
            client.pull("Qwen/Qwen3-0.6B")
        assert e.value.status_code == 400 and "HF_HUB_OFFLINE" in e.value.error
        statuses = [p.status for p in client.pull(str(tiny_hf), stream=True)]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert any(s.startswith("converting ") for s in statuses)
        (pulled,) = cache.list_models()
        assert pulled.name == str(tiny_hf) and pulled.recipe == "q4"
        names = {m.model for m in client.list().models}
        assert {str(tiny_hf), f"{tiny_hf}:q4"} <= names
        reply = client.chat(model=str(tiny_hf), messages=HI, options={"num_predict": 3})
        assert reply.message.content and str(tiny_hf) in ps(running.url)
        # a second name for the first model: no load
        client.copy(MODEL, "mine")
        again = client.chat(model="mine", messages=HI, options={"num_predict": 3,
                                                                "temperature": 0})
        first = client.chat(model=MODEL, messages=HI, options={"num_predict": 3,
                                                               "temperature": 0})
        assert again.message.content == first.message.content
        assert running.server.fleet.loads == 1
        # delete: unloaded, gone from the cache and the lists
        client.delete(str(tiny_hf))
        assert cache.list_models() == [] and not pulled.path.exists()
        assert str(tiny_hf) not in ps(running.url)
        assert str(tiny_hf) not in {m.model for m in client.list().models}
        with pytest.raises(ollama.ResponseError) as e:
            client.delete(MODEL)
        assert e.value.status_code == 400 and "never deletes a folder" in e.value.error
        assert tiny_q4_f32.is_dir()
        with pytest.raises(ollama.ResponseError) as e:
            client.delete("nope")
        assert e.value.status_code == 404
    finally:
        running.stop()


def test_a_stream_goes_on_while_another_model_loads(tiny_q4_f32, other_q4_f32):
    """A load runs beside the event loop: a reply of a loaded model streams to its end
    while another model's load is held, and the request that asked for the load is then
    answered."""
    running = served(tiny_q4_f32, {"other": other_q4_f32})
    fleet, gate = running.server.fleet, threading.Event()
    real_open = fleet.open

    def held_open(name, folder):
        assert gate.wait(120)
        return real_open(name, folder)

    fleet.open = held_open
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    out = {}
    loading = threading.Thread(target=lambda: out.setdefault("other", client.chat.completions
                               .create(model="other", messages=HI, max_tokens=4)))
    try:
        loading.start()
        poll(lambda: fleet._lock is not None and fleet._lock.locked())  # the load is held
        reply = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=40,
                                               temperature=0)
        assert reply.usage.completion_tokens == 40 and "other" not in out
        gate.set()
        loading.join(120)
        assert out["other"].choices[0].message.content and fleet.loads == 1
    finally:
        gate.set()
        running.stop()


def test_max_models_unloads_the_least_recently_used(tiny_q4_f32, other_q4_f32, tiny_instruct):
    running = served(tiny_q4_f32, {"other": other_q4_f32, "instruct": tiny_instruct},
                     max_models=2)
    client = ollama.Client(host=running.url)
    try:
        client.generate(model="other")
        assert [m.model for m in client.ps().models] == [MODEL, "other"]
        client.generate(model="instruct")  # one too many: "other" goes
        assert [m.model for m in client.ps().models] == [MODEL, "instruct"]
    finally:
        running.stop()
