"""Merge a LoRA adapter into the model's weights, write an MLX folder, and check it.

Each adapted matrix becomes W + scale * (A B)^T, computed on the dequantized weights (mlx-lm's
``LoRALinear.fuse``). A 4-bit base is requantized with its own bits and group size, so the
fused model is as small as the base; ``q4`` quantizes a float base; ``dequantize`` keeps
everything in the stored float type (base plus adapter up to that type's rounding, at twice
the size or more). Requantizing can round away part of a small update, so the result is
checked, not assumed: greedy replies of the fused model are compared token by token with
base plus adapter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from .. import __version__
from ..hub import resolver as hub
from ..models import loader
from ..storage.atomic import atomic_dir
from ..errors import QwenMlxError
from ..storage.outputs import check_target
from ..quant.convert import copy_side_files, write_config
from ..models.recipes import Recipe, parse_recipe

PROMPTS = ("Write a haiku about the sea.", "What is the capital of France?",
           "Explain recursion to a child in two sentences.", "List three prime numbers.")


@dataclass
class Agreement:
    """Greedy tokens of the fused model against base plus adapter."""

    matched: int = 0  # positions where both chose the same token
    total: int = 0  # positions compared (the longer reply of each pair)
    identical: int = 0  # prompts whose replies are the same
    prompts: int = 0
    first_difference: list[int | None] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.matched / self.total if self.total else 1.0

    def add(self, fused: list[int], reference: list[int]) -> None:
        same = [a == b for a, b in zip(fused, reference)]
        self.matched += sum(same)
        self.total += max(len(fused), len(reference))
        self.prompts += 1
        differs = fused != reference
        self.identical += not differs
        self.first_difference.append(
            (same.index(False) if False in same else min(len(fused), len(reference)))
            if differs else None)


@dataclass
class FuseReport:
    output: Path
    format: str
    layers: int  # matrices merged
    seconds: float
    agreement: Agreement | None


def _output_recipe(config: dict, q4: bool, dequantize: bool) -> Recipe:
    """What the fused folder holds: the base's quantization unless told otherwise."""
    if q4 and dequantize:
        raise QwenMlxError("give --q4 or --dequantize, not both")
    base = config.get("quantization")
    dtype = config.get("torch_dtype", "bfloat16")
    dtype = dtype if dtype in ("bfloat16", "float16", "float32") else "bfloat16"
    if q4:
        return Recipe(4, 64, dtype)
    if dequantize or not base:
        return Recipe(None, 64, dtype)
    return Recipe(base["bits"], base["group_size"], dtype)


def merge(model: nn.Module, recipe: Recipe) -> int:
    """Replace every LoRA layer by its merged matrix, quantized as ``recipe`` says; return
    how many were merged."""
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.utils import dequantize_model

    fused = [(name, m.fuse(dequantize=True)) for name, m in model.named_modules()
             if isinstance(m, LoRALinear)]
    if not fused:
        raise QwenMlxError("the adapter has no LoRA layers to merge")
    model.update_modules(tree_unflatten(fused))
    model = dequantize_model(model)
    if recipe.bits is not None:
        nn.quantize(model, group_size=recipe.group_size, bits=recipe.bits,
                    class_predicate=lambda _, m: hasattr(m, "to_quantized")
                    and recipe.quantizes(tuple(m.weight.shape)))
    mx.eval(model.parameters())
    return len(fused)


def verify(fused: Path, base: Path, adapter: Path, prompts, max_tokens: int) -> Agreement:
    from .. import load

    out = Agreement()
    fused_model = load(fused)
    replies = [fused_model.generate(p, temperature=0.0, max_tokens=max_tokens).tokens
               for p in prompts]
    del fused_model
    reference = load(base, adapter=adapter)
    for prompt, reply in zip(prompts, replies):
        out.add(reply, reference.generate(prompt, temperature=0.0, max_tokens=max_tokens).tokens)
    return out


def fuse(model: str | None, adapter: str | Path, output: str | Path, *, q4: bool = False,
         dequantize: bool = False, recipe: str = "q4", force: bool = False,
         prompts=PROMPTS, verify_tokens: int = 32, convert=None) -> FuseReport:
    """Merge ``adapter`` into ``model`` (default: the model it was trained on) and write the
    result to ``output`` (appears only when complete); then compare greedy replies to
    ``prompts`` unless ``verify_tokens`` is 0."""
    start = time.perf_counter()
    adapter, output = Path(adapter), Path(output)
    loader.check_adapter(adapter)
    spec = hub.resolve(model if model is not None else loader.base_model_of(adapter),
                       parse_recipe(recipe), convert)
    folder = spec.folder
    check_target(output, force=force, protect=[folder, adapter])
    target = _output_recipe(spec.config, q4, dequantize)
    net, config = loader.load_weights(folder, adapter=adapter, dtype="stored")
    merged = merge(net, target)
    from mlx_lm.utils import save_model

    with atomic_dir(output, force=force, protect=[folder, adapter]) as tmp:
        save_model(tmp, net)
        write_config(tmp, config, target)
        copy_side_files(folder, tmp)
        (tmp / "fused_from.json").write_text(json.dumps({
            "base": str(folder), "adapter": str(adapter.resolve()), "format": target.name,
            "qwen_mlx_version": __version__}, indent=2) + "\n")
    del net
    seconds = time.perf_counter() - start
    agreement = verify(output, folder, adapter, prompts, verify_tokens) if verify_tokens else None
    return FuseReport(output, target.name, merged, seconds, agreement)
