"""The disk tier for prompt caches (qwen_mlx.engine.kv_disk): a long prompt's head written
by one load of a model is read back by the next, block by block, with the same tokens out;
files that are damaged, foreign or made under another KV setting are never loaded."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from qwen_mlx import load
from qwen_mlx.engine import kv_blocks, kv_disk
from qwen_mlx.engine.kv_disk import BLOCK, finish_writes

REPLY = 6


def prompt_of(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(200, 20000) for _ in range(n)]


def reply(model, prompt: list[int], cache=None) -> tuple[list[int], object]:
    tokens, stats = [], None
    for piece in model.stream(prompt, cache=cache, max_tokens=REPLY, temperature=0):
        tokens += piece.tokens
        stats = piece.stats or stats
    return tokens, stats


def blocks(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*/*{kv_disk.SUFFIX}"))


def fresh(path: Path, folder: Path, **kwargs):
    """The model loaded anew (a new process would load it this way), keeping KV in folder."""
    return load(path, kv_disk=folder, **kwargs)


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "kv"


def test_a_new_load_reads_the_head_from_disk_and_replies_the_same(tiny_q4_f32, folder):
    prompt = prompt_of(1300)
    first, stats = reply(fresh(tiny_q4_f32, folder), prompt)
    assert (stats.cached_tokens, stats.disk_tokens) == (0, 0)
    finish_writes()
    # prompt and reply (the last token is never fed back): 1,305 tokens, five whole blocks
    assert len(blocks(folder)) == 5
    model = fresh(tiny_q4_f32, folder)
    cache = model.new_cache()
    again, stats = reply(model, prompt, cache)
    assert again == first
    assert (stats.cached_tokens, stats.disk_tokens, stats.prefill_tokens) == (1280, 1280, 20)
    # the first token's time counts the read, as the user waited for it
    assert 0 < cache.disk_seconds < stats.time_to_first_token
    assert "1280 cached: 0 from memory, 1280 from disk" in stats.summary()


def test_a_prompt_that_shares_only_a_head_loads_its_whole_blocks(tiny_q4_f32, folder):
    prompt = prompt_of(1300)
    reply(fresh(tiny_q4_f32, folder), prompt)
    finish_writes()
    other = prompt[:1100] + prompt_of(300, seed=1)  # the same first 1,100 tokens
    model = fresh(tiny_q4_f32, folder)
    cold, _ = reply(load(tiny_q4_f32), other)
    warm, stats = reply(model, other)
    assert warm == cold
    assert stats.disk_tokens == 1024  # four whole blocks: the fifth differs
    # the blocks of the new prompt were written too, beside the first prompt's
    finish_writes()
    assert len(blocks(folder)) == 5 + 1  # its fifth block; the first four were there


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_a_damaged_block_is_deleted_and_computed_again(tiny_q4_f32, folder, caplog, damage):
    prompt = prompt_of(1300)
    first, _ = reply(fresh(tiny_q4_f32, folder), prompt)
    finish_writes()
    model = fresh(tiny_q4_f32, folder)
    files = [model.kv_disk.path(k) for k in kv_disk.block_keys(model.kv_disk.key, prompt)]
    victim = files[2]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[-7] ^= 0x40  # a bit of the arrays
    elif damage == "truncate":
        data = data[:len(data) // 2]
    else:  # another block's file under this one's name
        data = bytearray(files[1].read_bytes())
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="qwen_mlx"):
        again, stats = reply(model, prompt)
    assert again == first
    assert stats.disk_tokens == 2 * BLOCK  # the blocks before the damaged one
    why = {"flip": "checksum mismatch", "truncate": "truncated",
           "foreign": "made for another model, KV setting or block"}[damage]
    lines = [r.getMessage() for r in caplog.records if "KV on disk" in r.getMessage()]
    assert lines == [f"KV on disk: deleted {victim.name}: {why}; its tokens are computed "
                     f"again"]
    assert not victim.exists() or victim.read_bytes() != bytes(data)  # rewritten, or gone


def test_caches_of_another_kv_setting_are_not_read(tiny_kv, folder):
    prompt = prompt_of(1300)
    quantized, _ = reply(fresh(tiny_kv, folder, kv_bits=8, kv_group_size=32), prompt)
    finish_writes()
    full, stats = reply(fresh(tiny_kv, folder), prompt)
    assert stats.disk_tokens == 0
    again, stats = reply(fresh(tiny_kv, folder, kv_bits=8, kv_group_size=32), prompt)
    assert (again, stats.disk_tokens) == (quantized, 1280)


def test_a_prefix_quantized_cache_comes_back_across_its_split(tiny_kv, folder):
    """--kv-start 300: blocks 2 holds full-precision and quantized positions both."""
    prompt = prompt_of(1300)
    options = dict(kv_bits=4, kv_group_size=32, kv_start=300)
    first, _ = reply(fresh(tiny_kv, folder, **options), prompt)
    finish_writes()
    model = fresh(tiny_kv, folder, **options)
    again, stats = reply(model, prompt)
    assert (again, stats.disk_tokens) == (first, 1280)


def test_the_cap_drops_the_least_recently_used_blocks(tiny_q4_f32, folder):
    import os

    model = fresh(tiny_q4_f32, folder)
    reply(model, prompt_of(1100, seed=1))
    finish_writes()
    old = set(blocks(folder))
    mine = folder / ("ab" * 16) / "notes.kv"  # a user's file, named unlike ours: never dropped
    mine.parent.mkdir()
    mine.write_text("mine")
    os.utime(mine, (0, 0))  # and the least recently used of all
    model.kv_disk.cap = 6 * max(f.stat().st_size for f in old)  # headers differ by a few bytes
    reply(model, prompt_of(1100, seed=2))
    finish_writes()
    kept = set(blocks(folder)) - {mine}
    assert len(kept) == 6 and len(kept & old) == 2  # the four new ones and two old ones
    assert mine.read_text() == "mine"


def test_a_full_disk_stops_writing_with_one_line(tiny_q4_f32, folder, caplog, monkeypatch):
    model = fresh(tiny_q4_f32, folder)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")  # what a full volume's write raises
    monkeypatch.setattr(kv_blocks, "write", full)
    with caplog.at_level(logging.WARNING, logger="qwen_mlx"):
        reply(model, prompt_of(1300))
        finish_writes()
        tokens, stats = reply(model, prompt_of(1300, seed=3))  # serving goes on
    assert len(tokens) == REPLY and model.kv_disk.off == "the disk is full"
    assert [r.getMessage() for r in caplog.records if "KV on disk" in r.getMessage()] == [
        f"KV on disk: writing stopped: the disk is full ({model.kv_disk.folder}); serving "
        f"goes on"]
    assert blocks(folder) == []


def test_a_restarted_server_reads_the_head_from_disk(tiny_q4_f32):
    """`qwen-mlx serve` writes its kept caches at a clean shutdown (Ctrl-C); the next server
    on the same folder answers the same long request from them, and says so in the usage
    (the OpenAI SDK's chat completions and Responses, Ollama's /api/chat)."""
    import signal

    import httpx
    import openai

    from .serving import free_port, serve_process

    words = "river stone light window paper garden morning silver engine forest".split()
    rng = random.Random(4)
    messages = [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(1400))}]
    answers = []
    for run in range(3):
        port = free_port()
        proc = serve_process(tiny_q4_f32, port)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
            if run == 2:  # the Responses API (Codex, the agents SDK), on a third server
                response = client.responses.create(
                    model=tiny_q4_f32.name, input=messages, max_output_tokens=6,
                    temperature=0)
                continue
            answers.append(client.chat.completions.create(
                model=tiny_q4_f32.name, messages=messages, max_tokens=6, temperature=0))
            if run:
                counts = httpx.get(f"http://127.0.0.1:{port}/health").json()["kv_disk"]
                ollama = httpx.post(f"http://127.0.0.1:{port}/api/chat", json={
                    "model": tiny_q4_f32.name, "messages": messages, "stream": False,
                    "options": {"temperature": 0, "num_predict": 6}}, timeout=120).json()
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(120) == 0, proc.stderr.read()
    first, second = answers
    assert second.choices[0].message.content == first.choices[0].message.content
    prompt = first.usage.prompt_tokens
    whole = (prompt + 5) // BLOCK * BLOCK  # the kept cache: prompt and reply, whole blocks
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    details = second.usage.prompt_tokens_details
    assert (details.cached_tokens, details.model_extra) == (
        whole, {"disk_cached_tokens": whole})
    assert counts == {"blocks_loaded": whole // BLOCK, "blocks_written": 0,
                      "blocks_deleted": 0, "saves_skipped": 0, "writing": True}
    # the same conversation again: its cache is in memory now, and all but one token kept
    assert (ollama["prompt_eval_count"], ollama["prompt_eval_cached_count"]) == (
        prompt, prompt - 1)
    assert "prompt_eval_disk_cached_count" not in ollama
    details = response.usage.input_tokens_details
    assert (response.output_text, details.cached_tokens, details.model_extra) == (
        first.choices[0].message.content, whole, {"disk_cached_tokens": whole})


def test_generate_file_reads_the_document_from_disk_in_a_new_process(tiny_q4_f32, tmp_path):
    """`generate --file` twice, two processes: the second question prefills only what
    follows the document's last whole block."""
    import json
    import subprocess
    import sys

    from qwen_mlx.engine.documents import with_document
    from qwen_mlx.engine.prompt_cache import common_prefix

    words = "harbour lantern copper meadow violin thunder pepper glacier".split()
    rng = random.Random(5)
    doc = tmp_path / "notes.txt"
    doc.write_text(" ".join(rng.choice(words) for _ in range(1500)) + "\n")
    questions = ["What is the first word?", "Which word comes most often?"]
    runs = []
    for question in questions:
        out = subprocess.run([sys.executable, "-m", "qwen_mlx", "generate", str(tiny_q4_f32),
                              "--file", str(doc), "-p", question, "--json", "--max-tokens",
                              "4", "--temp", "0"], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    model = load(tiny_q4_f32)
    prompts = [model.encode(with_document(doc, q)) for q in questions]
    shared = common_prefix(*prompts) // BLOCK * BLOCK
    assert shared >= 1024
    assert (runs[0]["cached_tokens"], runs[0]["disk_tokens"]) == (0, 0)
    assert (runs[1]["cached_tokens"], runs[1]["disk_tokens"], runs[1]["prefill_tokens"]) == (
        shared, shared, len(prompts[1]) - shared)


def test_kv_disk_options_are_checked(tiny_q4_f32):
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    for args, message in (
            (["--no-kv-disk", "--kv-disk-size", "1GB"], "--kv-disk-size sizes the prompt "
             "caches on disk, which --no-kv-disk turns off: drop one"),
            (["--kv-disk-size", "lots"], "cannot read 'lots' as --kv-disk-size")):
        out = CliRunner().invoke(main, ["generate", str(tiny_q4_f32), "-p", "hi", *args])
        assert out.exit_code != 0 and message in out.output, out.output


def test_two_processes_writing_the_same_blocks_leave_them_whole(tiny_q4_f32, tmp_path,
                                                                 caplog):
    """Two `generate` processes on one folder, the same document at the same time: every
    block each writes is renamed into place whole, and a third reads them all."""
    import os
    import subprocess
    import sys

    from qwen_mlx.engine.documents import with_document

    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(random.Random(6).choice(["alpha", "beta", "gamma", "delta"])
                            for _ in range(1500)))
    folder = tmp_path / "shared-kv"
    env = {**os.environ, "QWEN_MLX_KV_DISK": str(folder)}
    procs = [subprocess.Popen([sys.executable, "-m", "qwen_mlx", "generate", str(tiny_q4_f32),
                               "--file", str(doc), "-p", "Sum up.", "--max-tokens", "4",
                               "--temp", "0", "-q"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(300) == 0, proc.stderr.read()
    assert [p.name for p in folder.glob("*/.*")] == []  # no temporary left behind
    model = fresh(tiny_q4_f32, folder)
    prompt = model.encode(with_document(doc, "Sum up."))
    with caplog.at_level(logging.WARNING, logger="qwen_mlx"):
        _, stats = reply(model, prompt)
    assert stats.disk_tokens == (len(prompt) - 1) // BLOCK * BLOCK >= 1024
    assert not [r for r in caplog.records if "KV on disk" in r.getMessage()]


def test_a_new_chat_reads_the_file_an_earlier_chat_sent(tiny_q4_f32, tmp_path):
    """`chat` hands its conversation to the disk tier when it ends; the next chat that sends
    the same file prefills only what follows its last whole block."""
    import os
    import subprocess
    import sys

    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(random.Random(7).choice(["north", "south", "east", "west"])
                            for _ in range(1500)))
    env = {**os.environ, "QWEN_MLX_KV_DISK": str(tmp_path / "kv")}
    lines = []
    for question in ("Which way first?", "Which way last?"):
        proc = subprocess.run([sys.executable, "-m", "qwen_mlx", "chat", str(tiny_q4_f32),
                               "--temp", "0", "--max-tokens", "4"],
                              input=f"/file {doc} {question}\n", capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        lines.append([x for x in proc.stderr.splitlines() if "prompt tokens" in x][-1])
    assert "from disk" not in lines[0]
    assert ": 0 from memory, " in lines[1] and "from disk" in lines[1], lines[1]


def test_the_default_cap_leaves_a_small_disk_room(tmp_path, monkeypatch):
    """Without --kv-disk-size: 32 GB, or a tenth of the volume's free room if less."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    for free, cap in ((50 * 10**9, 5 * 10**9), (10**12, 32 * 10**9)):
        monkeypatch.setattr(shutil, "disk_usage", lambda path, f=free: usage(2 * f, f, f))
        assert kv_disk.KVDisk(tmp_path / "kv", "ab" * 32).cap == cap
    assert kv_disk.KVDisk(tmp_path / "kv", "ab" * 32, cap=123).cap == 123
