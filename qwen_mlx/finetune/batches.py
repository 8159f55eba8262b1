"""Encoded examples -> padded batches, in an order that is a pure function of (seed, epoch).

Examples are sorted by length and cut into batches once, so a batch pads little; each epoch
visits the batches in a shuffled order drawn from ``seed`` and the epoch number. The data
position of a run is therefore one number, the count of batches consumed, and a resumed
run sees exactly the batches the interrupted one would have.

Only the positions whose next token is a target reach the output layer (``select``):
Qwen3's 151,936-way output projection is most of a small model's work and, for a batch of
long rows, most of its memory; prompt, template and padding positions skip it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .tokens import Encoded

PAD_MULTIPLE = 32  # rows are padded to a multiple of this: few distinct shapes


@dataclass
class Batch:
    inputs: np.ndarray  # (B, L) int32
    targets: np.ndarray  # (B, L) int32: inputs shifted by one
    select: np.ndarray  # (N,) flat indices into B*L of the positions that are trained
    tokens: int  # real (non-padding) input tokens

    @property
    def targets_count(self) -> int:
        return len(self.select)


@dataclass
class Fitted:
    """What ``--max-seq-len`` did to the data."""

    examples: list[Encoded]
    truncated: int = 0
    dropped: int = 0
    empty: int = 0  # no trained token left after truncation: dropped too


def fit_length(examples: list[Encoded], max_seq_len: int, overlong: str) -> Fitted:
    """Truncate (or drop) examples longer than ``max_seq_len`` tokens; count what happened."""
    kept: list[Encoded] = []
    out = Fitted(kept)
    for e in examples:
        if len(e.ids) > max_seq_len:
            if overlong == "drop":
                out.dropped += 1
                continue
            e = Encoded(e.ids[:max_seq_len], e.mask[:max_seq_len], e.where)
            out.truncated += 1
        if e.targets == 0:
            out.empty += 1
            continue
        kept.append(e)
    return out


def collate(examples: list[Encoded]) -> Batch:
    longest = max(len(e.ids) for e in examples) - 1
    width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    inputs = np.zeros((len(examples), width), np.int32)
    targets = np.zeros((len(examples), width), np.int32)
    trained = np.zeros((len(examples), width), bool)
    tokens = 0
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        inputs[row, :n] = e.ids[:-1]
        targets[row, :n] = e.ids[1:]
        trained[row, :n] = e.mask[1:]
        tokens += n
    select = np.flatnonzero(trained.reshape(-1)).astype(np.int32)
    return Batch(inputs, targets, select, tokens)


class Batches:
    """Fixed, length-sorted batches of ``batch_size`` (the last may be smaller)."""

    def __init__(self, examples: list[Encoded], batch_size: int, seed: int) -> None:
        order = sorted(range(len(examples)), key=lambda i: (len(examples[i].ids), i))
        self.groups = [[examples[i] for i in order[s:s + batch_size]]
                       for s in range(0, len(order), batch_size)]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.groups)

    def epoch_order(self, epoch: int) -> list[int]:
        return list(np.random.default_rng([self.seed, epoch]).permutation(len(self.groups)))

    def at(self, position: int, share: Callable[[list], list] = list) -> Batch | None:
        """The ``position``-th batch of the run (counting across epochs); with ``share``,
        only this rank's share of its examples (None when that is empty)."""
        epoch, index = divmod(position, len(self.groups))
        mine = share(self.groups[self.epoch_order(epoch)[index]])
        return collate(mine) if mine else None

    def in_order(self, limit: int | None = None, share: Callable[[list], list] = list):
        """Every batch once, unshuffled (validation); past ``limit`` batches, ``limit`` of
        them spread evenly over the lengths. With ``share``, this rank's share of each
        (empty shares skipped)."""
        groups = self.groups
        if limit is not None and len(groups) > limit:
            groups = [groups[i * len(groups) // limit] for i in range(limit)]
        for group in groups:
            if share(group):
                yield collate(share(group))

    def longest(self) -> int:
        return max(len(e.ids) for g in self.groups for e in g)
