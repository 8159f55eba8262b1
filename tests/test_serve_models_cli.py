"""`qwen-mlx serve` of several models as a process and from the command line: the model cache
served by name beside the MODELs given (preloaded), a --models file's options and its
mistakes, --keep-alive checked, `qwen-mlx ps` and `qwen-mlx stop`, and the shutdown's grace
for a model loaded by name."""

from __future__ import annotations

import json

import httpx
import openai
import ollama
import pytest

from .serving import HI, MODEL, alone_text, poll, ps, served


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
