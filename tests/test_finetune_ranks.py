"""Training over several ranks (MLX's ring backend over loopback, 2 ranks on this machine):
the steps of one machine at the same global batch, rank 0 alone writing, a refused batch
that does not split, and a killed rank that ends the run with one error and resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import psutil
import pytest

from qwen_mlx.errors import QwenMlxError
from qwen_mlx.finetune import finetune
from qwen_mlx.finetune.launch import ENDED
from qwen_mlx.finetune.run import split_over
from qwen_mlx.finetune.ranks import Ranks

from .test_finetune import steps_of, write_data

ROWS = [(f"Code word {i}?", f"Word {i} is {w}.") for i, w in
        enumerate(["apple", "river", "stone", "cloud", "green", "sand", "rain", "moon"])]
HOST = socket.gethostname()
LOSS_RTOL = 1e-5  # float32: the ranks' partial sums are added in another order


def launch(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qwen_mlx", "finetune", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_the_global_batch_must_split_over_the_ranks():
    split_over(4, 2)
    with pytest.raises(QwenMlxError, match=r"^--batch-size 5 does not split over 2 ranks "
                                           r"\(it is the global batch\); use 4 or 6$"):
        split_over(5, 2)
    with pytest.raises(QwenMlxError, match=r"use 3$"):
        split_over(1, 3)


def test_shares_cover_a_batch_once():
    """Contiguous shares, sizes within one, none duplicated; an empty share is allowed."""
    parts = []
    for rank in range(3):
        r = Ranks()
        r.rank, r.size = rank, 3
        parts.append(r.share(list(range(7))))
    assert parts == [[0, 1], [2, 3], [4, 5, 6]]
    r.rank, r.size = 1, 3
    assert r.share([9]) == []


def test_the_launcher_line_is_read():
    assert ENDED.search("\x1b[33m[WARN] Node with rank 1 exited with code -9 \x1b[0m").groups() \
        == ("1", "-9")
    assert ENDED.search("[WARN] Node with rank 0 was killed").groups() == ("0", None)


def test_a_batch_that_does_not_split_is_refused_before_launch(tmp_path, tiny_f32):
    p = launch(tiny_f32, "--data", write_data(tmp_path / "d.jsonl", ROWS), "-o",
               tmp_path / "out", "--batch-size", 3, "--local-ranks", 2)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1 and out == ""
    assert err == ("error: --batch-size 3 does not split over 2 ranks (it is the global "
                   "batch); use 2 or 4\n")
    assert not (tmp_path / "out").exists()


def test_two_ranks_take_the_steps_of_one(tmp_path, tiny_f32):
    """Per-step loss and validation loss of 2 ranks equal 1 rank's at the same global batch
    (float32, relative 1e-5); the adapters agree and both load in mlx_lm; rank 0 alone
    printed and wrote."""
    from mlx_lm import load

    data = write_data(tmp_path / "d.jsonl", ROWS)
    common = dict(iters=4, batch_size=4, valid_split=0.25, lr=1e-3, save_every=2)
    finetune(str(tiny_f32), data, tmp_path / "one", **common)
    flags = [a for k, v in common.items() for a in (f"--{k.replace('_', '-')}", v)]
    p = launch(tiny_f32, "--data", data, "-o", tmp_path / "two", *flags, "--local-ranks", 2)
    busy = launcher_share(p)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert busy < 0.2  # mlx.launch's relay spun a core (75% of the run's time here)
    assert out == f"{tmp_path / 'two'}\n"  # one rank printed the result
    assert f"2 machines ({HOST}, {HOST}): 2 of each batch of 4 each" in err
    assert err.count("validation loss") == 2  # step 0 and the end, once each
    one, two = (steps_of(tmp_path / n) for n in ("one", "two"))
    assert [s["step"] for s in two] == [1, 2, 3, 4]
    assert [s["targets"] for s in one] == [s["targets"] for s in two]
    np.testing.assert_allclose([s["loss"] for s in two], [s["loss"] for s in one],
                               rtol=LOSS_RTOL)
    vals = [[json.loads(x)["val_loss"] for x in (tmp_path / n / "metrics.jsonl")
             .read_text().splitlines() if "val_loss" in x] for n in ("one", "two")]
    np.testing.assert_allclose(vals[1], vals[0], rtol=LOSS_RTOL)
    a, b = (mx.load(str(tmp_path / n / "adapters.safetensors")) for n in ("one", "two"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.array(b[k]), np.array(a[k]), atol=1e-5)
    for n in ("one", "two"):
        load(str(tiny_f32), adapter_path=str(tmp_path / n))


def launcher_share(p: subprocess.Popen) -> float:
    """The CPU time of the mlx.launch process under ``p`` over the time it ran, at its last
    sample (every 0.1 s) before it ended."""
    root, launcher, share = psutil.Process(p.pid), None, 0.0
    while p.poll() is None:
        try:
            launcher = launcher or next((c for c in root.children() if "mlx" in
                                         " ".join(c.cmdline())), None)
            if launcher is not None:
                used = launcher.cpu_times()
                share = (used.user + used.system) / (time.time() - launcher.create_time())
        except psutil.Error:
            pass
        time.sleep(0.1)
    return share


def _rank_process(root: psutil.Process, rank: int) -> psutil.Process | None:
    for child in root.children(recursive=True):
        try:
            if child.environ().get("MLX_RANK") == str(rank) and "qwen_mlx" in child.cmdline():
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_a_killed_rank_ends_the_run_with_one_error_and_it_resumes(tmp_path, tiny_f32):
    """SIGKILL to rank 1 after the first checkpoint: the run ends within the peer timeout
    with one error naming rank 1 and its host; the same command with --resume continues
    from the checkpoint on both ranks and finishes."""
    data = write_data(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "out"
    # enough steps that the kill lands mid-run (it follows the first checkpoint, at step 2,
    # within a fraction of a second, and the 22 steps after it take seconds), few enough
    # that the resumed run is quick
    iters = 24
    args = [tiny_f32, "--data", data, "-o", out, "--iters", iters, "--batch-size", 4,
            "--valid-split", 0, "--lr", 1e-3, "--save-every", 2, "--local-ranks", 2,
            "--peer-timeout", 20]
    p = launch(*args)
    root = psutil.Process(p.pid)
    deadline = time.time() + 240
    while not list((out / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.1)
    victim = _rank_process(root, 1)
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = p.communicate(timeout=60)
    assert time.time() - killed < 30
    assert p.returncode == 1
    assert err.rstrip().splitlines()[-1] == (
        f"error: rank 1 ({HOST}) ended (exit code -9); the other ranks were stopped. The same "
        f"command with --resume continues from the last checkpoint")
    assert "[ring]" not in err
    saved = json.loads(next((out / "checkpoints").glob("step-*/state.json")).read_text())
    assert saved["step"] >= 2
    temp = tmp_path / "temp"  # where the ranks make their temporary folders
    temp.mkdir()
    done = launch(*args, "--resume", env={**os.environ, "TMPDIR": str(temp)})
    p2_out, p2_err = done.communicate(timeout=600)
    assert done.returncode == 0, p2_err
    assert not list(temp.glob("qwen-mlx-resume-*"))  # rank 1's copy of the checkpoint went
    assert saved["step"] < iters
    assert f"resuming at step {saved['step']} of {iters}" in p2_err
    assert [s["step"] for s in steps_of(out)] == list(range(1, iters + 1))


def test_a_rank_that_hangs_stops_the_run_at_the_peer_timeout(tmp_path, tiny_f32):
    """Rank 1 frozen (SIGSTOP): rank 0's collective gets no answer; at --peer-timeout it
    ends with one line naming itself; once rank 1 runs again the launcher stops it."""
    data = write_data(tmp_path / "d.jsonl", ROWS)
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    with open(log, "w") as errors:
        p = subprocess.Popen(
            [sys.executable, "-m", "qwen_mlx", "finetune", str(tiny_f32), "--data", str(data),
             "-o", str(out), "--iters", "400", "--batch-size", "4", "--valid-split", "0",
             "--save-every", "2", "--local-ranks", "2", "--peer-timeout", "3"],
            stdout=subprocess.DEVNULL, stderr=errors, text=True)
    root = psutil.Process(p.pid)
    deadline = time.time() + 240
    while not list((out / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.1)
    frozen = _rank_process(root, 1)
    frozen.send_signal(signal.SIGSTOP)
    stopped = time.time()
    try:
        while "no answer from the other ranks" not in log.read_text() and \
                time.time() < stopped + 30:
            time.sleep(0.2)
        waited = time.time() - stopped
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert p.wait(timeout=60) == 1
    assert 3 <= waited < 15
    assert f"error: rank 0 ({HOST}): no answer from the other ranks in 3 s; stopping " \
           f"(resume with --resume)" in log.read_text()
