"""Bits per layer under a size budget: `convert --max-size 1.8GB` or `--bpw 3.6`.

Each quantizable layer can take any format (3, 4, 5, 6 or 8 bits, in groups of 128, 64 or
32 that divide its input width), at a measured estimated KL. Choosing one per layer for the
least summed cost within a size is the multiple-choice knapsack: it is solved exactly by
dynamic programming over a grid of the budget (each format's bytes rounded up to the grid,
so the answer fits), then what the rounding left is spent on the best upgrades that still
fit, and every uniform recipe that fits competes with the result. The exact size on disk
(:func:`qwen_mlx.models.sizes.planned_bytes`: headers and data of every file, computed from
shapes alone) is checked last. Group sizes matter as much as bits: a large layer (the
embedding) can pay for its own groups of 128 with the bits that take a small, sensitive
one to 8. The result is a
:class:`~qwen_mlx.models.recipes.Recipe` whose per-layer bits go into config.json the way mlx-lm
reads them, so ``mlx_lm.load`` loads the model unchanged.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import QwenMlxError
from ..models.sizes import planned_bytes
from ..models.recipes import Recipe
from ..models.recipes import LEVELS, Format, formats
from ..units import parse_size

@dataclass(frozen=True)
class Budget:
    """The most bytes on disk, given as a size or as bits per weight (over every parameter,
    as the model card's "bits per weight" counts them)."""

    text: str  # as the user wrote it, for the recipe's name
    max_bytes: int | None = None
    bpw: float | None = None

    @classmethod
    def size(cls, text: str) -> "Budget":
        return cls(text, max_bytes=parse_size(text, "a size"))

    @classmethod
    def bits(cls, bpw: float) -> "Budget":
        if not 3 <= bpw <= 10:
            raise QwenMlxError(f"--bpw {bpw:g} is out of range: give bits per weight between 3 "
                               f"and 10 (4.5 is uniform 4-bit with groups of 64)")
        return cls(f"{bpw:g}bpw", bpw=bpw)

    @property
    def label(self) -> str:
        """The recipe's name: mix-1.8gb, mix-3.6bpw."""
        return "mix-" + re.sub(r"[^0-9a-z.]", "", self.text.lower())

    def limit(self, tensors: list) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        params = sum(_count(t.shape) for t in tensors)
        return int(self.bpw * params / 8)


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def with_formats(base: Recipe, chosen: dict[str, Format], label: str) -> Recipe:
    """A recipe with this format per layer: the commonest bits (in ``base``'s group size)
    are the default, every other layer is named with its own bits and group size."""
    same_group = [b for b, g in chosen.values() if g == base.group_size]
    bits = Counter(same_group or [b for b, _ in chosen.values()]).most_common(1)[0][0]
    return Recipe(bits=bits, group_size=base.group_size, dtype=base.dtype,
                  layers=tuple(sorted((k, b, g) for k, (b, g) in chosen.items()
                                      if (b, g) != (bits, base.group_size))),
                  label=label)


def _quantized(tensors: list, base: Recipe) -> dict[str, tuple[int, ...]]:
    return {t.name.removesuffix(".weight"): t.shape for t in tensors if base.quantizes(t.shape)}


def _nbytes(shape: tuple[int, ...], fmt: Format, float_bytes: int) -> float:
    """Data bytes of one layer in a format: packed weights, scales and biases."""
    rows, cols = shape
    bits, group = fmt
    return rows * cols * bits / 8 + 2 * rows * cols / group * float_bytes


def smallest(tensors: list, base: Recipe) -> int:
    """The size with every layer in its smallest format (3 bits, the largest group that
    divides it): no budget can go below it."""
    fb = getattr(mx, base.dtype).size
    chosen = {n: min(formats(s[-1]), key=lambda f: _nbytes(s, f, fb))
              for n, s in _quantized(tensors, base).items()}
    return planned_bytes(tensors, with_formats(base, chosen, "mix"))


def check_budget(tensors: list, base: Recipe, budget: Budget) -> int:
    """The budget in bytes; one below the smallest possible size is refused with it."""
    limit, floor = budget.limit(tensors), smallest(tensors, base)
    if floor > limit:
        raise QwenMlxError(f"a budget of {limit / 1e9:.3f} GB is below the smallest size "
                           f"this model can have, {floor / 1e9:.3f} GB (every layer at "
                           f"{LEVELS[0]} bits, in the largest groups)")
    return limit


CELLS = 50_000  # the byte grid of the exact allocation: the budget in this many steps
HEADER_SLACK = 4096  # safetensors headers change by a few digits with other shapes (kept
# while choosing, then spent once the headers are measured)


def _knapsack(options: dict[str, list[tuple[Format, float, float]]],
              room: float) -> dict[str, Format] | None:
    """The multiple-choice knapsack, solved exactly over a byte grid: one format per layer,
    the summed cost least, the summed bytes (each rounded up to the grid, so the answer
    always fits) within ``room``. None when nothing fits."""
    cell = max(1.0, room / CELLS)
    cap = int(room // cell)
    if cap < 0:
        return None
    best = np.zeros(cap + 1)  # least cost with at most j cells, over the layers so far
    picks = []
    for name, opts in options.items():
        new = np.full(cap + 1, np.inf)
        pick = np.zeros(cap + 1, dtype=np.int16)
        for i, (_, nbytes, cost) in enumerate(opts):
            w = int(np.ceil(nbytes / cell))
            if w > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[w:] = best[:cap + 1 - w] + cost
            better = cand < new
            new[better], pick[better] = cand[better], i
        best = new
        picks.append((name, pick, [int(np.ceil(o[1] / cell)) for o in opts]))
    if not np.isfinite(best[cap]):
        return None
    chosen, j = {}, cap
    for name, pick, weights in reversed(picks):
        i = int(pick[j])
        chosen[name] = options[name][i][0]
        j -= weights[i]
    return chosen


def _fill(chosen: dict[str, Format], options: dict[str, list[tuple[Format, float, float]]],
          room: float) -> dict[str, Format]:
    """Spend what the grid's rounding left: the upgrade that saves the most cost per byte
    and still fits, until none does."""
    chosen = dict(chosen)
    table = {n: {f: (b, c) for f, b, c in opts} for n, opts in options.items()}
    used = sum(table[n][f][0] for n, f in chosen.items())
    while True:
        best = None
        for name, f in chosen.items():
            nb, cost = table[name][f]
            for g, (b, c) in table[name].items():
                if b > nb and c < cost and used + b - nb <= room:
                    rate = (cost - c) / (b - nb)
                    if best is None or rate > best[0]:
                        best = (rate, name, g, b - nb)
        if best is None:
            return chosen
        _, name, g, delta = best
        chosen[name] = g
        used += delta


def allocate(tensors: list, base: Recipe, costs: dict[str, dict[Format, float]],
             budget: Budget) -> Recipe:
    """A format per layer within the budget, the estimated KL (``costs[layer][format]``)
    least: the multiple-choice knapsack, exact over a byte grid, then filled up to the
    budget; every uniform recipe that fits competes with it, so the mix is never estimated
    worse than one of them (a greedy and a price fill once chose a mix that lost to plain
    q4). ``tensors``: the source's, in write order (name, shape); ``base``: the group size
    of the default and the float type."""
    limit = check_budget(tensors, base, budget)
    shapes = _quantized(tensors, base)
    missing = [n for n in shapes if n not in costs]
    if missing:
        raise QwenMlxError(f"no sensitivity was measured for {missing[0]}")
    fb = getattr(mx, base.dtype).size
    options = {n: [(f, _nbytes(s, f, fb), costs[n][f]) for f in formats(s[-1])]
               for n, s in shapes.items()}

    def recipe(chosen: dict[str, Format]) -> Recipe:
        return with_formats(base, chosen, budget.label)

    def total(chosen: dict[str, Format]) -> float:
        return sum(costs[n][f] for n, f in chosen.items())

    least = {n: min(opts, key=lambda o: o[1])[0] for n, opts in options.items()}
    fixed = planned_bytes(tensors, recipe(least)) - sum(
        _nbytes(shapes[n], f, fb) for n, f in least.items())
    room = limit - fixed - HEADER_SLACK
    mix = _fill(_knapsack(options, room) or least, options, room)
    # the headers' real growth is known now: solve again with the slack kept for it spent
    data = sum(_nbytes(shapes[n], f, fb) for n, f in mix.items())
    room = limit - fixed - max(0, planned_bytes(tensors, recipe(mix)) - data - fixed) - 64
    candidates = [least, mix, _fill(_knapsack(options, room) or least, options, room)]
    shared = set.intersection(*(set(costs[n]) & set(formats(s[-1])) for n, s in shapes.items()))
    candidates += [dict.fromkeys(shapes, f) for f in sorted(shared)]
    fitting = [c for c in candidates if planned_bytes(tensors, recipe(c)) <= limit]
    return recipe(min(fitting, key=total))


def summary(recipe: Recipe, tensors: list) -> str:
    """'3-bit g128 x 190, 4-bit g64 x 60 (1.800 GB)' for the conversion's log."""
    counts = Counter(recipe.format_for(n) for n in _quantized(tensors, recipe))
    parts = ", ".join(f"{b}-bit g{g} x {counts[b, g]}" for b, g in sorted(counts))
    return f"{parts} ({planned_bytes(tensors, recipe) / 1e9:.3f} GB)"
