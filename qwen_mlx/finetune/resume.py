"""Training checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint is a folder ``checkpoints/step-NNNNNNN`` under the output folder, written
whole under a temporary name and renamed (``atomic_dir``), so a kill at any moment, even
SIGKILL, leaves the previous checkpoint intact; the newest complete folder wins and older
ones are removed once a newer one exists. It holds the adapter weights, the optimizer state
(Adam's moments and its step, which drives the learning-rate schedule), and ``state.json``:
the step, the data position (batches consumed), the trained-token count, the seed from which
each step's dropout key is drawn, and the run's config and data fingerprint, so a resume
with other settings or changed data is refused instead of silently training something else.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from ..storage.atomic import atomic_dir
from ..storage import safetensors
from ..errors import QwenMlxError
from .adapters import ADAPTER_FILE, adapter_weights
from .config import TrainConfig

FOLDER = "checkpoints"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
FILES = (ADAPTER_FILE, OPTIMIZER_FILE, STATE_FILE)  # a checkpoint, whole


@dataclass
class RunState:
    step: int = 0  # optimizer updates done
    position: int = 0  # batches consumed
    trained_tokens: int = 0
    seconds: float = 0.0  # training time so far

    def to_dict(self) -> dict:
        return dict(step=self.step, position=self.position,
                    trained_tokens=self.trained_tokens, seconds=self.seconds)


def fingerprint(files: list[Path]) -> str:
    """sha256 over the data files' bytes: a resume on changed data is refused."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode() + b"\0" + Path(f).read_bytes())
    return h.hexdigest()


def latest(output: Path) -> Path | None:
    found = sorted((Path(output) / FOLDER).glob("step-*"))
    return found[-1] if found else None


def save(output: Path, model: nn.Module, optimizer: optim.Optimizer, state: RunState,
         config: TrainConfig, data_fingerprint: str) -> Path:
    target = Path(output) / FOLDER / f"step-{state.step:07d}"
    with atomic_dir(target, force=True) as tmp:
        safetensors.save(str(tmp / ADAPTER_FILE), adapter_weights(model))
        safetensors.save(str(tmp / OPTIMIZER_FILE), dict(tree_flatten(optimizer.state)))
        (tmp / STATE_FILE).write_text(json.dumps({
            **state.to_dict(), "config": config.to_dict(),
            "data_fingerprint": data_fingerprint}, indent=2) + "\n")
    for old in (Path(output) / FOLDER).glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise QwenMlxError(f"checkpoint {folder} is damaged (no readable {STATE_FILE})") \
            from None


def check_data(saved: dict, data_fingerprint: str, folder: Path) -> None:
    """Refuse a resume on data that changed since the checkpoint."""
    if saved["data_fingerprint"] != data_fingerprint:
        raise QwenMlxError(f"the training data changed since the checkpoint in {folder}; "
                           f"start a new output folder to train on the new data")


def restore(folder: Path, model: nn.Module, optimizer: optim.Optimizer) -> RunState:
    saved = read_state(folder)
    try:
        model.load_weights(str(folder / ADAPTER_FILE), strict=False)
        optimizer.state = tree_unflatten(list(mx.load(str(folder / OPTIMIZER_FILE)).items()))
    except (OSError, ValueError, RuntimeError) as e:
        raise QwenMlxError(f"checkpoint {folder} is damaged ({str(e).splitlines()[0]})") \
            from None
    return RunState(saved["step"], saved["position"], saved["trained_tokens"],
                    saved["seconds"])
