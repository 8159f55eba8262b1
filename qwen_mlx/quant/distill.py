"""Distilled weight quantization (DWQ): `convert --dwq`.

The student starts as the plain quantization, rounded again layer by layer with error
correction (:mod:`qwen_mlx.quant.gptq`: the codes, scales and biases that best keep each layer's
outputs on the fit set). Its scales and biases (not the packed weights, so the size does not
change) are then trained with Adam to bring its next-token distributions back to the
source's on the fit set (:mod:`qwen_mlx.quant.calibration`). This is mlx-lm's DWQ idea
(``mlx_lm.quant.dwq``), arranged so it fits a small Mac and survives being stopped:

* the teacher runs once, alone: its top-k log-probabilities per position are kept in the
  work folder (:func:`qwen_mlx.quant.targets.reference_pass`), so the two models are never
  resident together, and the loss is the same top-k-plus-tail KL `eval` reports;
* everything lives in a work folder under ``$QWEN_MLX_HOME/work/`` named after the source,
  recipe and output: the student, the targets, and a checkpoint (trained scales and
  biases, Adam's state, the step) replaced whole every SAVE_SECONDS and when stopped, and
  the rounding's layers as each is done. The same command resumes from there; the output
  folder appears only when training is done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from . import gptq
from ..storage.atomic import atomic_dir, atomic_path
from ..storage import safetensors
from ..storage.home import home
from ..errors import QwenMlxError
from . import targets
from .targets import Reference, kl_to_reference
from ..models.recipes import Recipe

LEARNING_RATE = 1e-5
EPOCHS = 2
TEMPERATURE = 2.0  # both distributions softened while training, as mlx-lm's DWQ does
SAVE_SECONDS = 60.0
SEED = 0
TARGETS = "targets.safetensors"
CHECKPOINT = "checkpoint"
TOO_LITTLE = ("--dwq needs at least two chunks of fit text (one to train on, one to "
              "validate); give --fit-tokens of at least {tokens}")
ROUNDED = "gptq"  # the error-corrected rounding's layers, one file each
BEST = "best.safetensors"  # the scales with the lowest validation KL so far

Progress = Callable[[int, int, float], None]  # (step, steps, loss)


class Stopped(QwenMlxError):
    """Ctrl-C: the checkpoint is saved; the same command resumes."""


@dataclass
class DistillState:
    step: int = 0
    steps: int = 0
    learning_rate: float = LEARNING_RATE
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # training loss per step
    valid_before: float | None = None  # validation KL of the rounding, before training
    valid_after: float | None = None  # ... after the last epoch
    best_loss: float | None = None  # the lowest, and the step that reached it (0: plain)
    best_step: int = 0


def work_folder(source: Path, output: Path, recipe: Recipe) -> Path:
    """Where one distillation keeps its state: the same source, student recipe and output
    resume."""
    from ..models.provenance import fingerprint

    key = json.dumps([str(Path(source).resolve()), fingerprint(Path(source).resolve()),
                      recipe.name, str(Path(output).resolve())])
    return home() / "work" / f"dwq-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def trainable(net: nn.Module) -> None:
    """Freeze all but the scales and biases of the quantized layers below 8 bits (the
    embedding's included, as mlx-lm's DWQ does: with a tied embedding they also shape the
    output layer, where most of the loss arises)."""
    net.freeze()
    net.apply_to_modules(lambda _, m: m.unfreeze(keys=["scales", "biases"], recurse=False)
                         if getattr(m, "bits", 8) < 8 and hasattr(m, "scales") else None)


def _targets(work: Path, student: Path, source: Path, chunk: int, limit: int | None,
             teacher_tokens: int, dtype: str) -> tuple[list[list[int]], Reference]:
    """The fit chunks and the teacher's top-k on them, computed once and kept."""
    from . import calibration

    path = work / TARGETS
    if not path.is_file():
        parts = calibration.fit_chunks(student, chunk, limit=limit,
                                       teacher_tokens=teacher_tokens, source=source)
        ref = targets.reference_of(source, parts, dtype=dtype)
        arrays = {"tokens": mx.array(parts, dtype=mx.int32)}
        for n in range(len(parts)):
            arrays[f"ids.{n}"] = mx.array(ref.ids[n])
            arrays[f"logp.{n}"] = mx.array(ref.logp[n])
            arrays[f"target.{n}"] = mx.array(ref.target[n])
        with atomic_path(path) as tmp:
            safetensors.save(str(tmp), arrays)
    saved = mx.load(str(path))
    parts = np.array(saved["tokens"]).tolist()
    ref = Reference(*[[np.array(saved[f"{k}.{n}"]) for n in range(len(parts))]
                      for k in ("ids", "logp", "target")])
    return parts, ref


def distill(source: Path, output: Path, student_recipe: Recipe, *, chunk: int,
            epochs: int = EPOCHS, limit: int | None = None,
            learning_rate: float = LEARNING_RATE, temperature: float = TEMPERATURE,
            teacher_tokens: int = 0,
            dtype: str = "float32", progress: Progress | None = None,
            rounding: Callable[[int, int], None] | None = None,
            stopping: Callable[[], bool] = lambda: False,
            on_phase: Callable[[str], None] = lambda _: None) -> tuple[Path, DistillState]:
    """Train the scales and biases of ``student_recipe``'s quantization of ``source`` against
    it, in the work folder; return that folder's student as quantized (the "before"; the
    output is written by :func:`finish`) and the run's state. ``stopping()`` is asked after
    each step: True saves a checkpoint and raises :class:`Stopped`.

    The last fifth of the fit chunks (at least one) is kept for validation: its KL is taken
    before training and after every epoch, and the scales with the lowest one are what
    :func:`finish` writes, so a distillation that does not generalise falls back to the
    error-corrected rounding's instead of shipping worse ones."""
    from ..models.loader import load_weights
    from .convert import convert

    work = work_folder(source, output, student_recipe)
    work.mkdir(parents=True, exist_ok=True)
    student = work / "student"
    if not student.is_dir():
        on_phase("quantizing the student")
        convert(source, student, student_recipe, source_name=str(source))
    on_phase("teacher targets")
    parts, ref = _targets(work, student, Path(source), chunk, limit, teacher_tokens, dtype)
    if len(parts) < 2:
        raise QwenMlxError(TOO_LITTLE.format(tokens=2 * chunk))
    held = max(1, len(parts) // 5)
    train, valid = list(range(len(parts) - held)), list(range(len(parts) - held, len(parts)))
    net, _ = load_weights(student, dtype=dtype)
    on_phase("error-corrected rounding (GPTQ), layer by layer")
    rounded = gptq.run(Path(source), net, [parts[n] for n in train], work / ROUNDED,
                       dtype=dtype, progress=rounding, stopping=stopping)
    if rounded is None:
        raise Stopped(f"stopped during the error-corrected rounding; the same command resumes "
                      f"from the next layer ({work})")
    net.update(tree_unflatten(list(rounded.items())))
    trainable(net)
    params = tree_map(lambda x: x.astype(mx.float32), net.trainable_parameters())
    opt = optim.Adam(learning_rate=learning_rate)
    opt.init(params)
    state = DistillState(steps=epochs * len(train), learning_rate=learning_rate)
    best = params
    if (work / CHECKPOINT / "state.json").is_file():
        params, best, state = _restore(work / CHECKPOINT, opt)
        on_phase(f"resuming at step {state.step} of {state.steps}")
    compute = getattr(mx, dtype)

    def loss_fn(p, n: int, t: float = temperature) -> mx.array:
        net.update(tree_map(lambda x: x.astype(compute), p))
        return kl_to_reference(net, parts[n], mx.array(ref.ids[n]), mx.array(ref.logp[n]),
                               temperature=t)

    def validate() -> float:
        return float(np.mean([loss_fn(params, n, 1.0).item() for n in valid]))

    if state.best_loss is None:
        state.best_loss = state.valid_before = validate()
    step_fn = mx.value_and_grad(loss_fn)
    saved_at = start = time.perf_counter()
    seconds0 = state.seconds
    while state.step < state.steps:
        epoch, i = divmod(state.step, len(train))
        n = train[int(np.random.default_rng(SEED + epoch).permutation(len(train))[i])]
        loss, grads = step_fn(params, n)
        params = opt.apply_gradients(grads, params)
        mx.eval(loss, params, opt.state)
        state.step += 1
        state.losses.append(loss.item())
        if state.step % len(train) == 0:  # an epoch ends: keep the best scales so far
            state.valid_after = validate()
            if state.valid_after < state.best_loss:
                best, state.best_loss, state.best_step = params, state.valid_after, state.step
        state.seconds = seconds0 + time.perf_counter() - start
        if progress:
            progress(state.step, state.steps, state.losses[-1])
        if stopping():
            _save(work / CHECKPOINT, params, best, opt, state)
            raise Stopped(f"stopped at step {state.step} of {state.steps}; the same command "
                          f"resumes from there ({work})")
        if time.perf_counter() - saved_at > SAVE_SECONDS:
            _save(work / CHECKPOINT, params, best, opt, state)
            saved_at = time.perf_counter()
    _save(work / CHECKPOINT, params, best, opt, state)
    return student, state


def _save(folder: Path, params: dict, best: dict, opt: optim.Optimizer,
          state: DistillState) -> None:
    with atomic_dir(folder, force=True) as tmp:
        safetensors.save(str(tmp / "params.safetensors"), dict(tree_flatten(params)))
        safetensors.save(str(tmp / BEST), dict(tree_flatten(best)))
        safetensors.save(str(tmp / "optimizer.safetensors"), dict(tree_flatten(opt.state)))
        (tmp / "state.json").write_text(json.dumps(asdict(state)) + "\n")


def _restore(folder: Path, opt: optim.Optimizer) -> tuple[dict, dict, DistillState]:
    try:
        params, best = (tree_unflatten(list(mx.load(str(folder / f)).items()))
                        for f in ("params.safetensors", BEST))
        opt.state = tree_unflatten(list(mx.load(str(folder / "optimizer.safetensors")).items()))
        state = DistillState(**json.loads((folder / "state.json").read_text()))
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise QwenMlxError(f"the distillation checkpoint {folder} is damaged "
                           f"({str(e).splitlines()[0]}); remove it to start over") from None
    return params, best, state


def finish(source: Path, output: Path, student_recipe: Recipe, name: str,
           state: DistillState, *, force: bool = False, source_name: str | None = None) -> None:
    """Write the output folder: the student's files with the trained scales and biases, the
    recipe's ``name`` and the run's figures in qwen-mlx.json and the model card."""
    from ..models import card
    from ..models.provenance import PROVENANCE
    from .convert import recipe_text

    work = work_folder(source, output, student_recipe)
    student = work / "student"
    trained = {k: v for f in sorted((work / ROUNDED).glob("*.safetensors"))
               for k, v in mx.load(str(f)).items()}
    trained.update(mx.load(str(work / CHECKPOINT / BEST)))
    dtype = getattr(mx, student_recipe.dtype)
    with atomic_dir(Path(output), force=force, protect=[Path(source)]) as tmp:
        for f in sorted(student.iterdir()):
            if f.suffix == ".safetensors":
                arrays = mx.load(str(f))
                arrays.update({k: v if v.dtype == mx.uint32 else v.astype(dtype)
                               for k, v in trained.items() if k in arrays})
                safetensors.save(str(tmp / f.name), arrays, metadata={"format": "mlx"})
            elif f.is_file():
                shutil.copyfile(f, tmp / f.name)
        record = json.loads((student / PROVENANCE).read_text())
        record.update(recipe=name, source=source_name or record["source"],
                      distilled={"rounding": "gptq", "steps": state.step, "seconds": round(state.seconds, 1),
                                 "validation_kl_before": state.valid_before,
                                 "validation_kl_after": state.valid_after,
                                 "kept_step": state.best_step,
                                 "learning_rate": state.learning_rate})
        (tmp / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
        card.set_recipe(tmp, name, f"error-corrected rounding (GPTQ) and distilled scales "
                        f"and biases, both fitted to the source on qwen-mlx's fit set (those of "
                        f"step {state.best_step} of {state.step} kept, the lowest validation "
                        f"KL), {recipe_text(student_recipe)}")
