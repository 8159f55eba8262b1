"""Conversion recipes: how many bits, what group size, which float type for the rest.

A recipe has a short name (``q4``, ``q4-g32``, ``q8``, ``bf16``, ``q4-f32``) that names the
converted model's cache folder and appears in `qwen-mlx bench --recipes`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import QwenMlxError

DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
GROUP_SIZES = (32, 64, 128)
BITS = (2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class Recipe:
    """Affine quantization with ``bits`` per weight in groups of ``group_size`` (``bits=None``:
    no quantization); ``dtype`` is used for scales, biases and the unquantized tensors."""

    bits: int | None = 4
    group_size: int = 64
    dtype: str = "bfloat16"
    # Mixed recipes: (layer, bits, group size) for the layers that differ from ``bits`` and
    # ``group_size`` (a layer is a weight's name without ".weight", the key mlx-lm reads per
    # layer from config.json's quantization block).
    layers: tuple[tuple[str, int, int], ...] = ()
    # What replaces the "q4" part of the name: "mix-1.8gb" (mixed), "q4-dwq" (distilled).
    label: str = ""

    def __post_init__(self) -> None:
        if self.bits is not None and self.bits not in BITS:
            raise QwenMlxError(f"--bits must be one of {', '.join(map(str, BITS))}")
        if self.group_size not in GROUP_SIZES:
            raise QwenMlxError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}")
        if self.dtype not in DTYPES:
            raise QwenMlxError(f"--dtype must be one of {', '.join(DTYPES)}")

    @property
    def name(self) -> str:
        if self.bits is None:
            return DTYPES[self.dtype]
        name = self.label or f"q{self.bits}"
        name += "" if self.group_size == 64 else f"-g{self.group_size}"
        return name + ("" if self.dtype == "bfloat16" else f"-{DTYPES[self.dtype]}")

    @property
    def fitted(self) -> bool:
        """Made by measuring the model (`convert --max-size/--bpw/--dwq`): such a name can
        find a model in the cache, but not make one on the fly."""
        return self.label.startswith("mix-") or self.label.endswith("-dwq")

    def format_for(self, layer: str) -> tuple[int | None, int]:
        """(bits, group size) of one layer (its weight's name without ".weight")."""
        for name, bits, group in self.layers:
            if name == layer:
                return bits, group
        return self.bits, self.group_size

    @property
    def quantization(self) -> dict | None:
        """mlx-lm's ``quantization`` block for config.json."""
        if self.bits is None:
            return None
        block: dict = {"group_size": self.group_size, "bits": self.bits, "mode": "affine"}
        for layer, bits, group in self.layers:
            block[layer] = {"group_size": group, "bits": bits, "mode": "affine"}
        return block

    def quantizes(self, shape: tuple[int, ...]) -> bool:
        """Matrices whose rows split into whole groups are quantized (mlx-lm's rule too)."""
        return self.bits is not None and len(shape) == 2 and shape[-1] % self.group_size == 0


DEFAULT = Recipe()


def parse_recipe(name: str) -> Recipe:
    """``q4``, ``q4-g32``, ``q8-f32``, ``bf16``, and the fitted ``mix-1.8gb``, ``q4-dwq``,
    ``mix-4.5bpw-dwq-f32``... -> :class:`Recipe` (a fitted one only names a model that
    `convert` made: see :attr:`Recipe.fitted`)."""
    by_suffix = {v: k for k, v in DTYPES.items()}
    parts = name.strip().lower().split("-")
    if parts[0] in by_suffix and len(parts) == 1:
        return Recipe(bits=None, dtype=by_suffix[parts[0]])
    try:
        kw: dict = {}
        if parts[0] == "mix" and len(parts) > 1 and re.fullmatch(r"[\d.]+[a-z]+", parts[1]):
            label, rest = f"mix-{parts[1]}", parts[2:]
        elif parts[0].startswith("q"):
            kw["bits"], label, rest = int(parts[0][1:]), "", parts[1:]
        else:
            raise ValueError
        if rest[:1] == ["dwq"]:
            label, rest = (label or parts[0]) + "-dwq", rest[1:]
        for p in rest:
            if p.startswith("g"):
                kw["group_size"] = int(p[1:])
            elif p in by_suffix:
                kw["dtype"] = by_suffix[p]
            else:
                raise ValueError
    except ValueError:
        raise QwenMlxError(f"unknown recipe {name!r} (examples: q4, q4-g32, q8, bf16, q4-f32, "
                           f"mix-1.8gb, q4-dwq)") from None
    return Recipe(**kw, label=label)


# The search space of a mixed recipe: the formats the allocation may give a layer, whose
# costs the sensitivity pass measures.
LEVELS = (3, 4, 5, 6, 8)  # bits
GROUPS = (128, 64, 32)  # group sizes (those that divide a layer's input width)
Format = tuple[int, int]  # (bits, group size)


def formats(cols: int) -> list[Format]:
    """The formats a layer with ``cols`` inputs can take."""
    return [(b, g) for b in LEVELS for g in GROUPS if cols % g == 0]
