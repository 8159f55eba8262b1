"""Bits per layer under a size budget: `convert --max-size 1.8GB` or `--bpw 3.6`.

Each quantizable layer can take any format (3, 4, 5, 6 or 8 bits, in groups of 128, 64 or
32 that divide its input width); only the formats on the lower convex hull of its (bytes,
estimated KL) points are worth taking. Every layer starts at its smallest; then, greedily,
the layer whose next hull step removes the most estimated KL per byte takes it, as long as
the exact size on disk (:func:`qwen_mlx.quantize.planned_bytes`: headers and data of every
file, computed from shapes alone) stays within the budget. Group sizes matter as much as
bits: a large layer (the embedding) can pay for its own groups of 128 with the bits that
take a small, sensitive one to 8. The result is a
:class:`~qwen_mlx.recipes.Recipe` whose per-layer bits go into config.json the way mlx-lm
reads them, so ``mlx_lm.load`` loads the model unchanged.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass

import mlx.core as mx

from .errors import QwenMlxError
from .quantize import planned_bytes
from .recipes import Recipe
from .sensitivity import LEVELS, Format, formats
from .units import parse_size

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


def _hull(points: list[tuple[float, float, Format]]) -> list[tuple[float, float, Format]]:
    """The lower convex hull of (bytes, cost) from the smallest format up: the formats worth
    taking, each step paying less per byte than the one before."""
    hull: list[tuple[float, float, Format]] = []
    for p in sorted(points):
        if hull and p[1] >= hull[-1][1]:
            continue  # bigger and no better
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()  # the middle point pays more per byte than going straight on
            else:
                break
        hull.append(p)
    return hull


def allocate(tensors: list, base: Recipe, costs: dict[str, dict[Format, float]],
             budget: Budget) -> Recipe:
    """A format per layer within the budget, the estimated KL (``costs[layer][format]``)
    least. ``tensors``: the source's, in write order (name, shape); ``base``: the group size
    of the default and the float type."""
    limit = check_budget(tensors, base, budget)
    shapes = _quantized(tensors, base)
    missing = [n for n in shapes if n not in costs]
    if missing:
        raise QwenMlxError(f"no sensitivity was measured for {missing[0]}")
    fb = getattr(mx, base.dtype).size
    hulls = {n: _hull([(_nbytes(shapes[n], f, fb), costs[n][f], f) for f in formats(s[-1])])
             for n, s in shapes.items()}

    def fill(start: dict[str, int]) -> dict[str, int]:
        """Greedy from ``start``: the next hull step paying the most per byte, while the
        exact size stays within the limit."""
        step = dict(start)
        heap: list[tuple[float, str]] = []

        def offer(name: str) -> None:
            hull, i = hulls[name], step[name]
            if i + 1 < len(hull):
                (x1, y1, _), (x2, y2, _) = hull[i], hull[i + 1]
                heapq.heappush(heap, (-(y1 - y2) / (x2 - x1), name))

        for name in shapes:
            offer(name)
        while heap:
            _, name = heapq.heappop(heap)
            step[name] += 1
            if size(step) > limit:
                step[name] -= 1  # too big: this layer stays; a smaller step may still fit
                continue
            offer(name)
        return step

    def at(price: float) -> dict[str, int]:
        """Each layer's best point when a byte costs ``price`` in KL (a Lagrange multiplier):
        big layers are weighed whole, which the greedy steps alone cannot do."""
        return {n: min(range(len(h)), key=lambda i: h[i][1] + price * h[i][0])
                for n, h in hulls.items()}

    def size(step: dict[str, int]) -> int:
        return planned_bytes(tensors, recipe(step))

    def recipe(step: dict[str, int]) -> Recipe:
        return with_formats(base, {n: hulls[n][step[n]][2] for n in shapes}, budget.label)

    def total(step: dict[str, int]) -> float:
        return sum(hulls[n][i][1] for n, i in step.items())

    # The cheapest price whose choices fit, by bisection on a log scale, then filled up.
    lo, hi = -40.0, 40.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if size(at(10 ** mid)) <= limit else (mid, hi)
    candidates = [fill(dict.fromkeys(shapes, 0))]
    if size(at(10 ** hi)) <= limit:
        candidates.append(fill(at(10 ** hi)))
    best = recipe(min(candidates, key=total))
    assert planned_bytes(tensors, best) <= limit
    return best


def summary(recipe: Recipe, tensors: list) -> str:
    """'3-bit g128 x 190, 4-bit g64 x 60 (1.800 GB)' for the conversion's log."""
    counts = Counter(recipe.format_for(n) for n in _quantized(tensors, recipe))
    parts = ", ".join(f"{b}-bit g{g} x {counts[b, g]}" for b, g in sorted(counts))
    return f"{parts} ({planned_bytes(tensors, recipe) / 1e9:.3f} GB)"
