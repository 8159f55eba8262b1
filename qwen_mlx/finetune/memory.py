"""Will this training run fit? Weights, adapter and optimizer state, activations, measured
against the machine's budget before anything trains.

Activations dominate: every decoder layer keeps its inputs, projections, MLP intermediates
and attention probabilities for the backward pass, per token of the widest batch. Gradient
checkpointing keeps only each layer's input and recomputes the rest, one layer at a time.
The loss keeps one slice of logits (see :mod:`qwen_mlx.finetune.loss`). A run that will not
fit is refused with the first of (checkpointing, smaller batches with accumulation, shorter
sequences) that would, unless forced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import QwenMlxError
from ..system.machine import GIB, Machine
from ..models.shapes import Shape
from ..system.memory import RUNTIME_BYTES, training_activation_bytes
from .config import TrainConfig
from .loss import SLICE

ADAM_BYTES = 4 * 4  # float32 parameter, gradient, and Adam's two moments
# Slice-sized float32 arrays alive at the loss's peak: logits, softmax, gradient and MLX's
# temporaries; fitted to the measured peak (bench/finetune.py), not derived.
LOGIT_COPIES = 11


@dataclass
class TrainingMemory:
    weights: int
    adapter: int
    activations: int
    logits: int
    budget: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + RUNTIME_BYTES

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def describe(self) -> str:
        return (f"{self.total / GIB:.2f} GiB (weights {self.weights / GIB:.2f}, adapter and "
                f"optimizer {self.adapter / GIB:.2f}, activations {self.activations / GIB:.2f}, "
                f"logits {self.logits / GIB:.2f}) of a {self.budget / GIB:.2f} GiB budget")


def estimate(shape: Shape, *, weights: int, trainable: int, config: TrainConfig, width: int,
             dtype_bytes: int, machine: Machine) -> TrainingMemory:
    """``width`` is the widest batch's sequence length (after --max-seq-len)."""
    return TrainingMemory(
        weights, trainable * ADAM_BYTES,
        training_activation_bytes(shape, config.batch_size, width, dtype_bytes,
                                  config.grad_checkpoint),
        min(SLICE, config.batch_size * width) * shape.vocab * 4 * LOGIT_COPIES,
        machine.budget_bytes)


def suggestion(shape: Shape, config: TrainConfig, width: int, **kwargs) -> str | None:
    """The first change that makes the run fit, as flags, or None."""
    tries: list[tuple[str, TrainConfig, int]] = []
    c = config
    if not c.grad_checkpoint:
        c = dataclasses.replace(c, grad_checkpoint=True)
        tries.append(("--grad-checkpoint", c, width))
    while c.batch_size > 1:
        c = dataclasses.replace(c, batch_size=c.batch_size // 2, grad_accum=c.grad_accum * 2)
        flags = (" --grad-checkpoint" if not config.grad_checkpoint else "") + \
            f" --batch-size {c.batch_size} --grad-accum {c.grad_accum}"
        tries.append((flags.strip(), c, width))
    w = width
    while w > 256:
        w //= 2
        tries.append((f"{tries[-1][0] if tries else ''} --max-seq-len {w}".strip(),
                      dataclasses.replace(c, max_seq_len=w), w))
    for flags, candidate, w in tries:
        if estimate(shape, config=candidate, width=w, **kwargs).fits:
            return flags
    return None


def check(shape: Shape, config: TrainConfig, width: int, force: bool,
          where: str | None = None, **kwargs) -> TrainingMemory:
    """Refuse (one line, with a suggestion) a run that will not fit, unless ``force``;
    ``where`` names the machine of a run over several (``config`` then holds its share of
    the batch)."""
    need = estimate(shape, config=config, width=width, **kwargs)
    if need.fits or force:
        return need
    hint = suggestion(shape, config, width, **kwargs)
    advice = f"try {hint}" if hint else "no setting fits: use a smaller model or --recipe"
    raise QwenMlxError(f"{where + ': ' if where else ''}training needs about "
                       f"{need.describe()}; {advice} "
                       f"(or --force to try anyway)")
