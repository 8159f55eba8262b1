"""One server, several models by name (serve/fleet.py), through the official ``openai`` and
``ollama`` clients: a request naming another model loads it once and answers as that model
served alone; /api/ps, /api/tags and /v1/models list them; Ollama's keep_alive (0, a second)
unloads and gives the memory back; the memory budget unloads the least recently used idle
model and never a busy one; an unknown name is a 404 that says how to get it."""

from __future__ import annotations

import json
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

from .serving import MODEL, Running, served

HI = [{"role": "user", "content": "Tell me a story."}]


def poll(check, timeout: float = 60):
    """Wait for a state (never a fixed time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("the state was not reached in time")


def ps(url: str) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(f"{url}/api/ps").json()["models"]}


def alone_text(folder, name: str, **extra) -> str:
    running = Running(Server(load(folder, context=1024), name))
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        return client.chat.completions.create(model=name, messages=HI, max_tokens=12,
                                              temperature=0, **extra).choices[0].message.content
    finally:
        running.stop()


@pytest.fixture(scope="module")
def two(tiny_q4_f32, other_q4_f32):
    running = served(tiny_q4_f32, {"other": other_q4_f32})
    yield running
    running.server.fleet.close()
    running.stop()


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
        running.server.fleet.close()
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
        running.server.fleet.close()
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
        running.server.fleet.close()
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


def test_qwen_mlx_serve_serves_the_cache_by_name_and_preloads_more(tmp_path, tiny_q4_f32,
                                                                   other_q4_f32,
                                                                   tiny_instruct):
    """`qwen-mlx serve A B` loads both before serving; a model in the cache is served by
    its name and recipe, loaded on its first request."""
    import shutil

    from .serving import free_port, serve_process

    home = tmp_path / "home"
    shutil.copytree(other_q4_f32, home / "models" / "Qwen--Qwen3-0.6B" / "q4-f32")
    port = free_port()
    proc = serve_process(tiny_q4_f32, port, str(tiny_instruct), "--keep-alive", "10m",
                         "--shutdown-timeout", "1", env={"QWEN_MLX_HOME": str(home)})
    url = f"http://127.0.0.1:{port}"
    try:
        assert set(ps(url)) == {tiny_q4_f32.name, tiny_instruct.name}
        assert {m["name"] for m in httpx.get(f"{url}/api/tags").json()["models"]} == \
            {tiny_q4_f32.name, tiny_instruct.name, "Qwen/Qwen3-0.6B:q4-f32"}
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="Qwen/Qwen3-0.6B:q4-f32", messages=HI,
                                               max_tokens=12, temperature=0)
        assert reply.choices[0].message.content == alone_text(other_q4_f32, "other")
        loaded = ps(url)
        assert set(loaded) == {tiny_q4_f32.name, tiny_instruct.name, "Qwen/Qwen3-0.6B:q4-f32"}
        assert loaded[tiny_instruct.name]["expires_at"].startswith("9999")
        # a signal: a long reply of a model loaded by name gets the grace, then is cut with
        # an error event, and the process exits 0
        body = {"model": "Qwen/Qwen3-0.6B:q4-f32", "messages": HI, "max_tokens": 1900,
                "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            lines = (line for line in r.iter_lines() if line)
            assert next(lines).startswith("data: ")
            proc.terminate()
            rest = list(lines)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["error"]["code"] == "shutting_down"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_a_keep_alive_that_is_not_a_duration(tiny_q4_f32):
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    from .serving import free_port

    result = CliRunner().invoke(main, ["serve", str(tiny_q4_f32), "--port", str(free_port()),
                                       "--keep-alive", "soon"])
    assert result.exit_code == 1
    assert result.output == ("error: --keep-alive 'soon' is not a duration (like \"5m\", "
                             "\"1h\", \"30s\", or seconds)\n")


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
        running.server.fleet.close()
        running.stop()


def test_qwen_mlx_ps_and_stop_talk_to_the_running_server(tiny_q4_f32, other_q4_f32):
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    running = served(tiny_q4_f32, {"other": other_q4_f32})
    port = str(running.port)
    try:
        ollama.Client(host=running.url).generate(model="other")  # loaded
        listed = CliRunner().invoke(main, ["ps", "--port", port, "--json"])
        assert listed.exit_code == 0
        assert [m["name"] for m in json.loads(listed.output)] == [MODEL, "other"]
        table = CliRunner().invoke(main, ["ps", "--port", port])
        rows = table.output.splitlines()
        assert rows[1].split() == ["name", "size", "context", "until"]
        assert rows[2].split()[0] == MODEL and rows[2].split()[-1] == "forever"
        assert rows[3].split()[0] == "other"
        stopped = CliRunner().invoke(main, ["stop", "other", "--port", port])
        assert stopped.exit_code == 0 and stopped.output == ""
        poll(lambda: set(ps(running.url)) == {MODEL})
        refused = CliRunner().invoke(main, ["stop", MODEL, "--port", port])
        assert refused.exit_code == 1
        assert refused.output == (f"error: the server at 127.0.0.1:{port} answered 400: "
                                  f"'keep_alive' 0: '{MODEL}' was named when the server "
                                  f"started and stays loaded until it stops\n")
    finally:
        running.server.fleet.close()
        running.stop()
    gone = CliRunner().invoke(main, ["ps", "--port", port])
    assert gone.exit_code == 1 and gone.output.startswith(
        f"error: no qwen-mlx server at http://127.0.0.1:{port} (")


@pytest.mark.parametrize("text, message", [
    ("[models.a]\nkv_bitz = 8\n", "[models.a]: 'kv_bitz' is not an option (the options: "
                                  "model, recipe, context,"),
    ("[models.a]\nparallel = \"four\"\n", "[models.a]: 'parallel' must be a count from 1 to 64"),
    ("[models.a]\nparallel = 0\n", "[models.a]: 'parallel' must be from 1 to 64"),
    ("[models.a]\nkv_bits = 3\n", "[models.a]: 'kv_bits' must be 8 or 4"),
    ("[models.a]\ndraft = \"x\"\nlookup = 4\n", "[models.a]: choose 'draft' or 'lookup'"),
    ("[models.a]\nkeep_alive = \"soon\"\n", "[models.a]: 'keep_alive' 'soon' is not a duration"),
    ("[models.a]\npinned = \"yes\"\n", "[models.a]: 'pinned' must be true or false"),
    ("[models.a]\naliases = [\"\"]\n", "[models.a]: 'aliases' must be a list of names"),
    ("[model.a]\n", "'model' is not a section here (each model is a [models.NAME] table)"),
    ("models = 3\n", "no [models.NAME] tables"),
    ("[models.a\n", "--models "),
])
def test_a_models_file_mistake_is_one_line_before_any_load(tmp_path, text, message):
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    from .serving import free_port

    path = tmp_path / "models.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["serve", "/nonexistent-model", "--port",
                                       str(free_port()), "--models", str(path)])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert result.output.startswith(f"error: --models {path}")
    assert message in result.output


def test_a_models_file_serves_each_model_with_its_options(tmp_path, tiny_q4_f32, other_q4_f32,
                                                          tiny_instruct):
    """A pinned model is loaded at start and stays; another loads on first use by its name
    or an alias, with its own context and keep_alive."""
    from .serving import free_port, serve_process

    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n"
                    f"  helper:\n    model: {other_q4_f32}\n    context: 512\n"
                    f"    aliases: ['helper-*']\n    keep_alive: 1s\n"
                    f"  steady:\n    model: {tiny_instruct}\n    pinned: true\n"
                    f"    lookup: 4\n")
    port = free_port()
    proc = serve_process(tiny_q4_f32, port, "--models", str(path))
    url = f"http://127.0.0.1:{port}"
    try:
        loaded = ps(url)
        assert set(loaded) == {tiny_q4_f32.name, "steady"}
        assert loaded["steady"]["expires_at"].startswith("9999")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="helper-small", messages=HI,
                                               max_tokens=12, temperature=0)
        assert reply.choices[0].message.content == alone_text(other_q4_f32, "other")
        shown = httpx.post(f"{url}/api/show", json={"model": "helper"}, timeout=60).json()
        assert shown["model_info"]["qwen3.context_length"] == 512  # its own context
        poll(lambda: set(ps(url)) == {tiny_q4_f32.name, "steady"})  # its 1 s passed
        steady = client.chat.completions.create(model="steady", messages=HI, max_tokens=4)
        assert steady.choices[0].message.content
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


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
        fleet.close()
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
        running.server.fleet.close()
        running.stop()

