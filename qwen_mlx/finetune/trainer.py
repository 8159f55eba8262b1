"""The training loop, as a plain generator of reports (like generation): the CLI draws them,
a notebook can print them, a test can collect them.

One step is one optimizer update over ``grad_accum`` batches. Gradients are of the summed
loss and divided by the step's trained-token count, so batch 8 and batch 4 x accumulation 2
take the same step. Each step's dropout key is drawn from (seed, step), which is all the
random state a resumed run needs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from .batches import Batch, Batches
from .config import TrainConfig
from .loss import loss_for_grad, loss_sum
from .ranks import SINGLE, Ranks
from .resume import RunState

FLOOR = 0.1  # cosine decay ends at this fraction of the peak learning rate


@dataclass
class StepReport:
    step: int
    steps: int
    loss: float
    lr: float
    tokens: int  # input tokens this step (padding excluded)
    targets: int  # trained tokens this step
    tokens_per_second: float  # over the run so far
    peak_bytes: int  # the largest rank's
    seconds: float  # training time so far
    rank_peaks: list[int] | None = None  # each rank's peak, on a run over several
    comm_seconds: float = 0.0  # time in collectives so far (rank 0's)

    @property
    def eta(self) -> float:
        return self.seconds / self.step * (self.steps - self.step) if self.step else 0.0

    def to_dict(self) -> dict:
        return {"step": self.step, "loss": round(self.loss, 6), "lr": self.lr,
                "tokens": self.tokens, "targets": self.targets,
                "tokens_per_second": round(self.tokens_per_second, 2),
                "peak_memory": self.peak_bytes, "seconds": round(self.seconds, 3),
                **({"rank_peaks": self.rank_peaks, "comm_seconds": round(self.comm_seconds, 3)}
                   if self.rank_peaks else {})}


@dataclass
class ValReport:
    step: int
    loss: float
    seconds: float

    def to_dict(self) -> dict:
        return {"step": self.step, "val_loss": round(self.loss, 6),
                "val_seconds": round(self.seconds, 3)}


def warmup_steps(config: TrainConfig, steps: int) -> int:
    if config.warmup is not None:
        return min(config.warmup, steps)
    return min(100, round(0.05 * steps))


def schedule(peak: float, warmup: int, steps: int) -> Callable[[mx.array], mx.array]:
    """Linear warmup to ``peak`` over ``warmup`` steps (the first step already moves), then
    cosine decay to FLOOR x peak at the last step."""
    def lr(step: mx.array) -> mx.array:
        s = step.astype(mx.float32)
        warm = peak * (s + 1) / max(warmup, 1)
        progress = mx.clip((s - warmup) / max(steps - 1 - warmup, 1), 0.0, 1.0)
        cosine = peak * (FLOOR + (1 - FLOOR) * 0.5 * (1 + mx.cos(math.pi * progress)))
        return mx.where(s < warmup, warm, cosine)
    return lr


def _checkpointed_call(self, *args, **kwargs):
    """A decoder layer whose activations are recomputed in the backward pass."""
    call = super(type(self), self).__call__

    def inner(params, *args, **kwargs):
        self.update(params)
        return call(*args, **kwargs)
    return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)


def checkpoint_layers(layers: list[nn.Module]) -> None:
    """Gradient checkpointing on these layers only: each gets a subclass of its own class,
    so parameter names (and the adapter file) do not change and no other model is touched
    (mlx-lm patches the shared class)."""
    made: dict[type, type] = {}
    for layer in layers:
        base = type(layer)
        if base not in made:
            made[base] = type(f"Checkpointed{base.__name__}", (base,),
                              {"__call__": _checkpointed_call})
        layer.__class__ = made[base]


def arrays(batch: Batch) -> tuple[mx.array, ...]:
    return mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.select)


class Trainer:
    def __init__(self, model: nn.Module, config: TrainConfig, train: Batches,
                 valid: Batches | None, steps: int, ranks: Ranks = SINGLE) -> None:
        self.model, self.config, self.train, self.valid = model, config, train, valid
        self.ranks = ranks
        self.steps = steps
        self.state = RunState()  # a resumed run replaces it with the checkpoint's
        self.optimizer = optim.Adam(learning_rate=schedule(
            config.lr, warmup_steps(config, steps), steps))
        if config.grad_checkpoint:
            checkpoint_layers(model.model.layers)
        self._value_and_grad = nn.value_and_grad(model, loss_for_grad)

    def validate(self) -> float | None:
        if not self.valid:
            return None
        self.model.eval()
        total, count = mx.array(0.0), 0
        for batch in self.valid.in_order(self.config.val_batches, self.ranks.share):
            total = total + loss_sum(self.model, *arrays(batch))
            count += batch.targets_count
            mx.eval(total)
        self.model.train()
        total, count = self.ranks.sum([total, mx.array(count)])
        return total.item() / count.item()

    def _step(self) -> tuple[float, int, int]:
        """One optimizer update; returns (loss, input tokens, trained tokens), over all
        ranks: each takes the gradient of its share's summed loss, and one collective adds
        the ranks' gradients, losses and counts before the division by the step's trained
        tokens."""
        batches = [self.train.at(self.state.position + i, self.ranks.share)
                   for i in range(self.config.grad_accum)]
        batches = [b for b in batches if b is not None]
        mx.random.seed(self.config.seed * 1_000_003 + self.state.step)
        grads = tree_map(mx.zeros_like, self.model.trainable_parameters())
        total = mx.array(0.0)
        for batch in batches:
            loss, g = self._value_and_grad(self.model, *arrays(batch))
            grads = tree_map(mx.add, grads, g)
            total = total + loss
            mx.eval(grads, total)
        counts = mx.array([sum(b.targets_count for b in batches), sum(b.tokens for b in batches)])
        peaks = mx.zeros((self.ranks.size,))
        peaks[self.ranks.rank] = mx.get_peak_memory()
        flat = tree_flatten(grads)
        summed = self.ranks.sum([total, counts, peaks, *(g for _, g in flat)])
        total, (targets, tokens) = summed[0], summed[1].tolist()
        self.rank_peaks = [int(p) for p in summed[2].tolist()]
        grads = tree_unflatten([(k, g) for (k, _), g in zip(flat, summed[3:])])
        grads = tree_map(partial(mx.multiply, 1.0 / targets), grads)
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)
        return total.item() / targets, int(tokens), int(targets)

    def run(self, on_save: Callable[[], object] | None = None) -> Iterator[StepReport | ValReport]:
        """Train from the current state to ``steps``; yield a report per step and per
        validation; call ``on_save`` every ``save_every`` steps and at the end."""
        config, state = self.config, self.state
        self.model.train()
        if state.step == 0 and self.valid:
            start = time.perf_counter()
            yield ValReport(0, self.validate(), time.perf_counter() - start)
        tokens_done = 0
        seconds_before = state.seconds
        mx.reset_peak_memory()
        while state.step < self.steps:
            start = time.perf_counter()
            loss, tokens, targets = self._step()
            lr = self.optimizer.learning_rate.item()  # the rate this step used
            state.seconds += time.perf_counter() - start
            state.step += 1
            state.position += config.grad_accum
            state.trained_tokens += targets
            tokens_done += tokens
            rate = tokens_done / max(state.seconds - seconds_before, 1e-9)
            several = self.ranks.size > 1
            yield StepReport(state.step, self.steps, loss, lr, tokens, targets, rate,
                             max(self.rank_peaks) if several else mx.get_peak_memory(),
                             state.seconds, self.rank_peaks if several else None,
                             self.ranks.comm_seconds)
            last = state.step == self.steps
            if self.valid and (state.step % config.val_every == 0 or last):
                start = time.perf_counter()
                yield ValReport(state.step, self.validate(), time.perf_counter() - start)
            if on_save is not None and (state.step % config.save_every == 0 or last):
                on_save()
