"""The fault matrix, run as a user would: the real command (in a subprocess where signals are
sent, in-process through click otherwise), real signals, a real full disk. Each case checks
the exit code, that the error is one line with no traceback, and which files must still be
there (and which must not)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from qwen_mlx.testing import make_checkpoint

TIMEOUT = 120
DEAD_PID = 999_999_999  # above any pid_max


def cli(*args, cwd=None, input=None) -> subprocess.CompletedProcess:
    """A qwen-mlx command run in this process (click's CliRunner) -> its exit code, stdout
    and stderr. An exception that escaped the command goes into stderr as the traceback the
    process would print, so every "no traceback" check holds (the signal tests here and
    test_cli's console-script test run real processes)."""
    from click.testing import CliRunner

    from qwen_mlx.cli import main

    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(main, list(map(str, args)), input=input)
    finally:
        os.chdir(here)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["qwen-mlx", *map(str, args)], result.exit_code,
                                       result.stdout, stderr)


def one_line_error(result, code=1) -> str:
    """The error of a refused command: the exit code, a single stderr line, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def tree(folder: Path) -> dict[str, str]:
    """Every file below a folder with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def deep_hf(tmp_path_factory, tokenizer_bytes) -> Path:
    """Many small shards: a conversion that takes long enough to be interrupted."""
    return make_checkpoint(tmp_path_factory.mktemp("deep-hf"), "tiny", shard_bytes=8 << 20,
                           config_overrides={"num_hidden_layers": 48, "max_window_layers": 48,
                                             "hidden_size": 256, "intermediate_size": 1024},
                           tokenizer_json_bytes=tokenizer_bytes)


def convert_interrupted(source: Path, out: Path, sig: int, *extra) -> subprocess.Popen:
    """Start `qwen-mlx convert`, and send ``sig`` once its partial folder holds a shard.
    A run that finishes before it is caught is retried (the window is about a second)."""
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "qwen_mlx", "convert", str(source), "-o", str(out), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # a runner started in the background ignores SIGINT; the user's shell does not
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        partial = out.with_name(f".{out.name}.partial-{proc.pid}")
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if partial.is_dir() and any(partial.glob("*.safetensors")):
                proc.send_signal(sig)
                proc.wait(TIMEOUT)
                return proc
            time.sleep(0.002)
        proc.communicate()
        if "--force" not in extra:
            subprocess.run(["rm", "-rf", str(out)], check=True)
    pytest.fail("the conversion always finished before it could be interrupted")


def test_sigkill_mid_convert_leaves_a_partial_that_the_rerun_removes(deep_hf, tmp_path):
    out = tmp_path / "out"
    proc = convert_interrupted(deep_hf, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert hidden(tmp_path) == [f".out.partial-{proc.pid}"]
    source = tree(deep_hf)
    rerun = cli("convert", deep_hf, "-o", out)
    assert rerun.returncode == 0, rerun.stderr
    assert f"note: removed partial folder {tmp_path}/.out.partial-{proc.pid} (left by process " \
           f"{proc.pid})" in rerun.stderr
    assert hidden(tmp_path) == []
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
    assert tree(deep_hf) == source


def test_sigint_mid_convert_exits_130_and_leaves_nothing(deep_hf, tmp_path):
    out = tmp_path / "out"
    proc = convert_interrupted(deep_hf, out, signal.SIGINT)
    assert one_line_error(subprocess.CompletedProcess([], proc.returncode, "",
                                                      proc.stderr.read()), 130) == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_mid_convert_leaves_nothing(deep_hf, tmp_path):
    out = tmp_path / "out"
    proc = convert_interrupted(deep_hf, out, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigkill_during_force_keeps_the_old_model(deep_hf, tmp_path):
    out = tmp_path / "out"
    assert cli("convert", deep_hf, "-o", out, "--q8").returncode == 0
    before = tree(out)
    proc = convert_interrupted(deep_hf, out, signal.SIGKILL, "--force")
    assert proc.returncode == -signal.SIGKILL
    assert tree(out) == before  # the replacement is written beside it, not over it
    rerun = cli("convert", deep_hf, "-o", out, "--force")
    assert rerun.returncode == 0 and "note: removed partial folder" in rerun.stderr
    assert hidden(tmp_path) == []
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4


def test_a_swap_cut_between_its_two_renames_is_put_back(tiny_q4, tiny_hf, tmp_path):
    """Killed after the old folder was moved aside but before the new one arrived: the next
    run puts the old one back (and, without --force, does not replace it)."""
    import shutil

    aside = tmp_path / f".out.old-{DEAD_PID}"
    shutil.copytree(tiny_q4, aside)
    result = cli("convert", tiny_hf, "-o", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"note: restored {tmp_path}/out from an interrupted replacement (process {DEAD_PID})",
        f"error: output {tmp_path}/out already exists (use --force to replace it)"]
    assert tree(tmp_path / "out") == tree(tiny_q4)
    assert hidden(tmp_path) == []


def _mounted(folder: Path, options: str):
    """A tmpfs mounted at ``folder`` with ``options``, where this machine lets us mount
    one (the test is skipped otherwise); unmounted after."""
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a filesystem here: {made.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB filesystem."""
    yield from _mounted(tmp_path / "disk", "size=4m")


def test_disk_full_convert_is_one_line_and_leaves_nothing(tiny_hf, small_disk):
    result = cli("convert", tiny_hf, "-o", small_disk / "out")
    assert one_line_error(result).startswith("error: No space left on device")
    assert list(small_disk.iterdir()) == []


def test_disk_full_save_keeps_the_chat_going(tiny_q4_f32, small_disk):
    (small_disk / "filler").write_bytes(b"\0" * ((4 << 20) - 4096))
    result = cli("chat", tiny_q4_f32, "--temp", "0", "--max-tokens", "4", "-q",
                 input=f"Hi\n/save {small_disk}/s\nHello\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2  # both replies
    assert f"error: cannot save the session to {small_disk}/s.safetensors" in result.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


@pytest.mark.parametrize("where", ["parent", "source", "cwd", "dot", "home"])
def test_force_never_replaces_a_source_its_parent_the_cwd_or_home(tiny_hf, tmp_path, where):
    import shutil

    work = tmp_path / "work"
    source = work / "ck" / "tiny"
    shutil.copytree(tiny_hf, source)
    (work / "notes.txt").write_text("mine")
    target, cwd = {"parent": (work / "ck", work), "source": (source, work),
                   "cwd": (work, work), "dot": (".", work / "ck"),
                   "home": (Path.home(), work)}[where]
    before = tree(work)
    message = one_line_error(cli("convert", source, "-o", target, "--force", cwd=cwd))
    expected = {
        "parent": f"error: output {work}/ck contains the model being read ({source}); choose "
                  "another -o",
        "source": f"error: output {source} is the model being read ({source}); choose another "
                  "-o",
        "cwd": f"error: output {work} contains the model being read ({source}); choose another "
               "-o",
        "dot": f"error: output {work}/ck contains the model being read ({source}); choose "
               "another -o",
        "home": f"error: will not replace {Path.home()}: it is your home folder"}[where]
    assert message == expected
    assert tree(work) == before


def test_force_refuses_the_current_folder_even_without_the_source_in_it(tiny_hf, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    message = one_line_error(cli("convert", tiny_hf, "-o", ".", "--force", cwd=tmp_path))
    assert message == f"error: will not replace {tmp_path}: it is the current folder"
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_unwritable_save_and_a_corrupt_session_keep_the_chat_going(tiny_q4_f32, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    result = cli("chat", tiny_q4_f32, "--temp", "0", "--max-tokens", "4", "-q",
                 input=f"Hi\n/save /proc/x\n/load {corrupt}\nHello\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2
    assert result.stderr.splitlines() == [
        "error: cannot save the session to /proc/x.safetensors: cannot write in /proc",
        f"error: {corrupt} is not a readable qwen-mlx session"]
    assert corrupt.read_bytes().startswith(b"\x10")
    # At start-up there is no chat to keep: one line and exit 1.
    assert one_line_error(cli("chat", tiny_q4_f32, "--load", str(corrupt))) == \
        f"error: {corrupt} is not a readable qwen-mlx session"


def test_bad_jsonl_is_refused_before_anything_is_written(tiny_q4_f32, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "unterminated\n')
    message = one_line_error(cli("finetune", tiny_q4_f32, "--data", data, "-o",
                                 tmp_path / "adapter"))
    assert message == f"error: {data}:2: not valid JSON (Unterminated string starting at " \
                      f"column 10)"
    assert not (tmp_path / "adapter").exists() and hidden(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["convert", "{hf}", "-o", "{tmp}/o", "--q4", "--q8"],
     "--q4 and --q8 contradict each other; give one"),
    (["convert", "{hf}", "-o", "{tmp}/o", "--no-quantize", "--bits", "4"],
     "--bits 4 contradicts --no-quantize; give one"),
    (["convert", "{hf}", "-o", "{tmp}/o", "--no-quantize", "--group-size", "32"],
     "--group-size needs quantized weights; drop --no-quantize or it"),
    (["convert", "{mlx}"], "{mlx} is already an MLX model; nothing to convert"),
    (["generate", "{mlx}", "-p", "Hi", "--recipe", "q8"],
     "--recipe applies when MODEL must be converted; {mlx} is already an MLX model (convert "
     "its source to change the recipe)"),
    (["chat", "{mlx}", "--kv-start", "16"],
     "--kv-start applies to a quantized KV cache: add --kv-bits 8 or 4, or drop it"),
    (["generate", "{mlx}", "-p", "Hi", "--kv-group-size", "32"],
     "--kv-group-size applies to a quantized KV cache: add --kv-bits 8 or 4, or drop it"),
    (["bench", "{mlx}", "--recipes", "q4,q8"],
     "--recipes applies to models that must be converted; {mlx} is already an MLX model and "
     "would be measured as it is"),
    (["plan", "{mlx}", "--recipe", "q8"],
     "--recipe applies when MODEL must be converted; {mlx} is already an MLX model (convert "
     "its source to change the recipe)"),
])
def test_contradicting_or_idle_flags_are_refused(tiny_hf, tiny_q4, tmp_path, args, message):
    fill = dict(hf=tiny_hf, mlx=tiny_q4, tmp=tmp_path)
    result = cli(*[a.format(**fill) for a in args])
    assert one_line_error(result) == "error: " + message.format(**fill)
    assert sorted(tmp_path.iterdir()) == []


def test_the_context_plan_suggests_a_value_the_parser_accepts(tiny_q4):
    message = one_line_error(cli("plan", tiny_q4, "--context", "99999999", "--memory", "4GB"))
    suggested = message.rsplit("--context ", 1)[1].split()[0]
    assert suggested.endswith("k") and suggested[:-1].isdigit()
    assert cli("plan", tiny_q4, "--context", suggested, "--memory", "4GB").returncode == 0


def test_an_mlx_folder_that_does_not_match_its_config_names_the_tensors(tiny_q4, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_q4, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    message = one_line_error(cli("generate", model, "-p", "Hi"))
    assert message.startswith(f"error: cannot load {model} (qwen3, 1 layers of width 64, "
                              f"4-bit): Received 25 parameters not in model: "
                              f"model.layers.1.input_layernorm.weight; ")
    assert message.endswith(" and 22 more")


def test_only_our_own_leftovers_are_cleaned(tmp_path, caplog):
    """A dead writer's temporary file and marked partial folder go; a user's look-alikes (an
    unmarked folder with content, a hidden file of another pattern) stay."""
    from qwen_mlx.storage.atomic import atomic_write_text

    ours_file = tmp_path / f".out.qwen-mlx-tmp-{DEAD_PID}.json"
    ours_file.write_text("half")
    ours_dir = tmp_path / f".model.partial-{DEAD_PID}"
    ours_dir.mkdir()
    (ours_dir / ".qwen-mlx-partial").touch()
    (ours_dir / "model.safetensors").write_bytes(b"x")
    users_dir = tmp_path / f".thesis.partial-{DEAD_PID}"
    users_dir.mkdir()
    (users_dir / "chapter1.tex").write_text("mine")
    users_file = tmp_path / f".notes.tmp-{DEAD_PID}.txt"
    users_file.write_text("mine")
    log = logging.getLogger("qwen_mlx")  # the CLI, once run in this process, stops propagation
    log.addHandler(caplog.handler)
    propagate, log.propagate = log.propagate, False  # each record once, run alone or not
    try:
        atomic_write_text(tmp_path / "out.json", "{}")
    finally:
        log.removeHandler(caplog.handler)
        log.propagate = propagate
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [users_dir.name, users_file.name, "out.json"])
    assert [r.getMessage() for r in caplog.records] == [
        f"removed partial folder {ours_dir} (left by process {DEAD_PID}), 0.0 MB",
        f"removed temporary file {ours_file} (left by process {DEAD_PID}), 0.0 MB"]

