"""Recipes fitted to the model: mixed bits under a budget, and distillation. One entry point
for `convert` and the Python API, so both validate and refuse the same way.

    from qwen_mlx.quant.fitted import Fit, fitted_convert
    fitted_convert(source, output, Recipe(dtype="float32"),
                   Fit(budget=Budget.size("1.8GB"), distil=True))
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from . import calibration
from . import distill
from . import memory as fit_memory
from . import allocate as mixed_bits
from ..evaluate import quality
from . import targets
from . import sensitivity
from ..models.checkpoint import Checkpoint
from ..errors import QwenMlxError
from .allocate import Budget
from ..models.sizes import write_order
from ..models.recipes import Format, Recipe

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Fit:
    """What to fit: a size budget for mixed bits, distillation, or both."""

    budget: Budget | None = None
    distil: bool = False
    epochs: int = distill.EPOCHS
    teacher_tokens: int = 0  # extra fit text sampled from the source
    chunk: int = quality.DEFAULT_CHUNK
    fit_tokens: int | None = None  # at most this much of the fit set (None: all of it)

    def named(self, base: Recipe) -> Recipe:
        """``base`` under the fitted recipe's name (mix-1.8gb, q4-dwq, mix-1.8gb-dwq, with
        base's group and float suffixes), known before anything is measured: the cache
        folder is named after it."""
        label = self.budget.label if self.budget else f"q{base.bits}"
        return replace(base, label=label + ("-dwq" if self.distil else ""))


@dataclass
class Hooks:
    """How the caller hears about the phases (all optional)."""

    phase: Callable[[str], None] = lambda _: None
    bar: Callable[[str], Progress] | None = None  # a progress callback per labelled pass
    step: distill.Progress | None = None
    stopping: Callable[[], bool] = lambda: False


def check(source: Path, base: Recipe, fit: Fit, memory: str | None = None) -> None:
    """Everything that can be refused before any work: a budget below the smallest size,
    a recipe that has nothing to distil, a machine without the memory."""
    if base.bits is None:
        raise QwenMlxError("a fitted recipe needs quantized weights; drop --no-quantize")
    if fit.distil and base.bits >= 8 and fit.budget is None:
        raise QwenMlxError("--dwq trains the scales of layers below 8 bits; 8-bit has none "
                           "(use --q4, --bits 3..6, or --max-size)")
    ckpt = Checkpoint.open(source)
    tensors = write_order(ckpt)
    if fit.distil and not fit.teacher_tokens and len(calibration.fit_chunks(
            source, fit.chunk, limit=fit.fit_tokens)) < 2:
        raise QwenMlxError(distill.TOO_LITTLE.format(tokens=2 * fit.chunk))
    if fit.budget is not None:
        mixed_bits.check_budget(tensors, base, fit.budget)
    fit_memory.check(fit_memory.phases(tensors, ckpt.config, base, fit.chunk,
                                       mixed=fit.budget is not None, distilled=fit.distil),
                     memory)


def layer_costs(source: Path, base: Recipe, fit: Fit,
                hooks: Hooks = Hooks()) -> dict[str, dict[Format, float]]:
    """Each layer's estimated KL in each format, measured on the fit set."""
    hooks.phase("measuring each layer's sensitivity on the fit set")
    parts = calibration.fit_chunks(source, fit.chunk, limit=fit.fit_tokens,
                                   teacher_tokens=fit.teacher_tokens)
    ref = targets.reference_of(source, parts, dtype=base.dtype,
                               progress=hooks.bar("teacher") if hooks.bar else None)
    return sensitivity.measure(source, parts, ref, group_size=base.group_size,
                               dtype=base.dtype,
                               progress=hooks.bar("sensitivity") if hooks.bar else None)


def mixed_recipe(source: Path, base: Recipe, fit: Fit, hooks: Hooks = Hooks()) -> Recipe:
    """Measure each layer's sensitivity on the fit set and spend the budget on it."""
    costs = layer_costs(source, base, fit, hooks)
    tensors = write_order(Checkpoint.open(source))
    recipe = mixed_bits.allocate(tensors, base, costs, fit.budget)
    hooks.phase(f"bits per layer: {mixed_bits.summary(recipe, tensors)}")
    return recipe


def fitted_convert(source: Path, output: Path, base: Recipe, fit: Fit, *,
                   force: bool = False, source_name: str | None = None,
                   hooks: Hooks = Hooks(), eval_tokens: int = 0,
                   eval_limit: float | None = None) -> quality.Quality | None:
    """Convert ``source`` into ``output`` with a fitted recipe; with ``eval_tokens``, measure
    the result on the held-out text (and, distilled, the plain quantization it started from)
    and record it. Returns that measurement. ``eval_limit``: the most seconds the
    measurement may take beyond the conversion's own time (:class:`quality.TooSlow` when
    the estimate is longer)."""
    import time

    from .convert import convert

    started = time.perf_counter()
    source = Path(source)

    def limit() -> float | None:
        return None if eval_limit is None else max(eval_limit, time.perf_counter() - started)

    recipe = mixed_recipe(source, base, fit, hooks) if fit.budget else base
    if not fit.distil:
        hooks.phase("writing the model")
        convert(source, output, recipe, force=force, source_name=source_name)
        return quality.measure_conversion(output, source, eval_tokens, chunk=fit.chunk,
                                          progress=hooks.bar, limit_seconds=limit()) \
            if eval_tokens else None
    name = fit.named(base).name
    student, state = distill.distill(
        source, output, recipe, chunk=fit.chunk, epochs=fit.epochs, limit=fit.fit_tokens,
        teacher_tokens=fit.teacher_tokens, dtype=base.dtype, progress=hooks.step,
        rounding=hooks.bar("rounding") if hooks.bar else None,
        stopping=hooks.stopping, on_phase=hooks.phase)
    kept = f"the scales of step {state.best_step}" if state.best_step else \
        "the error-corrected rounding's (training did not lower it)"
    hooks.phase(f"validation KL {state.valid_before:.4f} -> {state.best_loss:.4f}: keeping "
                f"{kept}; writing the model")
    distill.finish(source, output, recipe, name, state, force=force, source_name=source_name)
    try:
        return quality.measure_conversion(output, source, eval_tokens, chunk=fit.chunk,
                                          before=student, progress=hooks.bar,
                                          limit_seconds=limit()) if eval_tokens else None
    finally:
        shutil.rmtree(distill.work_folder(source, output, recipe), ignore_errors=True)
