"""Outputs that are never lost, round 2: a folder that appears at -o while convert runs, two
writers of one output, the cache key and what convert copies, -o inside the cache, outputs
checked writable before any work, a full disk naming the file written, /save to a folder.
Run as a user would (the real command, real mounts), as the rest of the fault matrix in
test_faults.py, whose fixtures these use."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_faults import TIMEOUT, _mounted, cli, hidden, one_line_error, tree
from .test_faults import deep_hf, small_disk  # noqa: F401 - fixtures


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_that_appears_at_the_output_is_never_replaced(deep_hf, tmp_path, force):
    """A user's folder made at -o while convert runs: refused at the final step (with or
    without --force: it holds the user's notes), the folder as it was, nothing left over."""
    out = tmp_path / "out"
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "qwen_mlx", "convert", str(deep_hf),
                                 "-o", str(out), *(["--force"] if force else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        partial = out.with_name(f".{out.name}.partial-{proc.pid}")
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline and \
                not (partial.is_dir() and any(partial.glob("*.safetensors"))):
            time.sleep(0.002)
        if proc.poll() is None:
            out.mkdir()
            (out / "notes.txt").write_text("mine")
            proc.wait(TIMEOUT)
            break
        proc.communicate()
        subprocess.run(["rm", "-rf", str(out)], check=True)
    else:
        pytest.fail("the conversion always finished before the folder could be made")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.read())
    line = one_line_error(result)
    assert line == f"error: {out} appeared while this ran; it was left as it is and nothing " \
                   f"was written (remove it, or choose another -o)"
    assert tree(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
    assert hidden(tmp_path) == []


def test_a_second_convert_to_the_same_output_is_refused_naming_the_first(tiny_hf, tmp_path):
    """A live writer's partial folder holds the output: another convert to it is refused at
    start naming that process (a dead one's is a leftover, cleaned, and the run goes on)."""
    out = tmp_path / "out"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        partial = out.with_name(f".{out.name}.partial-{writer.pid}")
        partial.mkdir()
        (partial / ".qwen-mlx-partial").touch()
        assert one_line_error(cli("convert", tiny_hf, "-o", out)) == \
            f"error: another qwen-mlx process (pid {writer.pid}) is writing {out}; wait " \
            f"for it to finish, or choose another -o"
        assert partial.is_dir() and not out.exists()
    finally:
        writer.kill()
        writer.wait()
    assert cli("convert", tiny_hf, "-o", out).returncode == 0  # its writer is gone
    assert (out / "config.json").is_file() and hidden(tmp_path) == []


@pytest.mark.parametrize("damage, message", [
    ("tokenizer", "tokenizer.json cannot be loaded: "),
    ("template", "the chat template in {src}/tokenizer_config.json is broken: "),
    # these two converted and failed later: at generate, or silently (ids past the rows)
    ("no config", "{src} has no chat template (tokenizer_config.json with a chat_template, "
                  "or chat_template.jinja): copy the model's own tokenizer_config.json into it"),
    ("rows", "{src}/config.json has vocab_size 151,000, fewer than the 151,669 tokens of its "
             "tokenizer: not a matching checkpoint"),
])
def test_a_tokenizer_or_template_that_cannot_load_is_refused_before_the_weights(
        tiny_hf, copy_of, tmp_path, damage, message):
    src = copy_of(tiny_hf, "src")
    if damage == "tokenizer":
        (src / "tokenizer.json").write_text('{"model": {"type": "BPE"')
    elif damage == "no config":
        (src / "tokenizer_config.json").unlink()
    elif damage == "rows":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "vocab_size": 151_000}))
    else:
        config = json.loads((src / "tokenizer_config.json").read_text())
        config["chat_template"] = "{% for m in messages %}{{ m.content }"
        (src / "tokenizer_config.json").write_text(json.dumps(config))
    line = one_line_error(cli("convert", src, "-o", tmp_path / "out"))
    if damage in ("no config", "rows"):
        assert line == "error: " + message.format(src=src)
    assert line.startswith("error: " + (f"{src}/" if damage == "tokenizer" else "")
                           + message.format(src=src)), line
    assert not (tmp_path / "out").exists() and hidden(tmp_path) == []


def test_the_cache_key_covers_every_copied_file(tiny_hf, copy_of, monkeypatch, tmp_path):
    """A conversion in the cache is redone when any file it copied changes, not only the
    weights (a fixed tokenizer once kept failing from the stale cache)."""
    from qwen_mlx.hub import resolver as hub

    monkeypatch.setenv("QWEN_MLX_HOME", str(tmp_path / "home"))
    src = copy_of(tiny_hf, "src")
    first = hub.resolve(str(src)).folder
    assert json.loads((first / "generation_config.json").read_text()).get("temperature") != 0.25
    config = json.loads((src / "generation_config.json").read_text())
    (src / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.25}))
    again = hub.resolve(str(src)).folder
    assert again == first  # the same cache entry, converted anew
    assert json.loads((again / "generation_config.json").read_text())["temperature"] == 0.25


def test_an_output_inside_the_model_cache_is_refused(tiny_hf, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("QWEN_MLX_HOME", str(home))
    entry = home / "models" / "local--x--0123456789" / "q4"
    for out, force in ((entry, True), (home / "models" / "mine", False)):
        line = one_line_error(cli("convert", tiny_hf, "-o", out, *(["--force"] * force)))
        assert line == f"error: -o {out} is inside the model cache ({home / 'models'}); " \
                       f"convert without -o to put a conversion there, or choose a folder " \
                       f"outside it"
    assert not (home / "models").exists()


@pytest.fixture
def read_only(tmp_path):
    """A read-only filesystem."""
    yield from _mounted(tmp_path / "ro", "ro,size=1m")


def test_unwritable_outputs_are_refused_before_any_work(tiny_q4_f32, tmp_path, read_only):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]})
        for i in range(8)) + "\n")
    line = one_line_error(cli("finetune", tiny_q4_f32, "--data", data, "-o",
                              read_only / "adapter", "--iters", 1))
    assert line == f"error: cannot write the adapter folder {read_only / 'adapter'}: " \
                   f"Read-only file system ({read_only})"
    line = one_line_error(cli("bench", tiny_q4_f32, "--json", read_only / "b.json",
                              "--prompt-lengths", 16, "--depths", 0, "--gen-tokens", 2))
    assert line == f"error: cannot write --json {read_only / 'b.json'}: Read-only file " \
                   f"system ({read_only})"
    assert list(read_only.iterdir()) == []


def test_disk_full_names_the_file_written(tiny_hf, small_disk):
    result = cli("convert", tiny_hf, "-o", small_disk / "out")
    line = one_line_error(result)
    assert line.startswith("error: No space left on device: ") and str(small_disk) in line
    assert str(tiny_hf) not in line  # the output, not the source


def test_save_to_a_folder_or_a_full_disk_says_why(tiny_q4_f32, tmp_path, small_disk):
    (tmp_path / "adir.safetensors").mkdir()
    (small_disk / "filler").write_bytes(b"\0" * ((4 << 20) - 8192))
    result = cli("chat", tiny_q4_f32, "--temp", "0", "--max-tokens", "4", "-q", cwd=tmp_path,
                 input=f"Hi\n/save ./adir\n/save {small_disk}/s\n/save ../beside\n")
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[0] == f"error: cannot save the session to {tmp_path}/adir.safetensors: it " \
                        f"is a folder"
    assert errors[1].startswith(f"error: cannot save the session to {small_disk}/s.safetensors:"
                                f" the disk is full (") and "MB free; the session needs" in errors[1]
    assert len(errors) == 2 and ".qwen-mlx-tmp-" not in result.stderr
    assert (tmp_path.parent / "beside.safetensors").is_file()  # a path from the cwd, as said
    (tmp_path.parent / "beside.safetensors").unlink()



def test_a_write_on_a_full_disk_names_its_file(small_disk):
    """A write() that fails names no file: the model card, bench's --json and --plot, a
    config were reported as a bare "No space left on device"."""
    from qwen_mlx.errors import os_error_line
    from qwen_mlx.storage.atomic import atomic_write_text

    (small_disk / "filler").write_bytes(b"\0" * ((4 << 20) - 4096))
    with pytest.raises(OSError) as e:
        atomic_write_text(small_disk / "README.md", "x" * 100_000)
    assert os_error_line(e.value) == f"No space left on device: {small_disk / 'README.md'}"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_convert_into_the_cache_says_if_the_entry_is_current_and_redoes_a_stale_one(
        tiny_hf, copy_of, monkeypatch, tmp_path):
    """Without -o, a second convert said "already exists (use --force)" even after the
    source changed; generate redoes a stale entry, and convert now does too."""
    monkeypatch.setenv("QWEN_MLX_HOME", str(tmp_path / "home"))
    src = copy_of(tiny_hf, "src")
    first = cli("convert", src, "--no-eval")
    assert first.returncode == 0, first.stderr
    entry = Path(first.stdout.strip())
    again = cli("convert", src, "--no-eval")
    assert (again.returncode, again.stdout.strip()) == (0, str(entry))
    assert again.stderr == f"note: {src} is already converted ({entry.name}) and current " \
                           "with its source; --force converts it again\n"
    config = json.loads((src / "generation_config.json").read_text())
    (src / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.25}))
    redone = cli("convert", src, "--no-eval")
    assert (redone.returncode, redone.stdout.strip()) == (0, str(entry)), redone.stderr
    assert redone.stderr.startswith(f"note: the cached conversion {entry} is out of date with "
                                    "its source (or incomplete): converting it again\n")
    assert json.loads((entry / "generation_config.json").read_text())["temperature"] == 0.25
