"""Will a fitted recipe fit this machine? Checked before anything is computed.

A fitted recipe (`--max-size`/`--bpw`, `--dwq`) has phases with different peaks:

* the teacher pass: the source model resident in the compute type, alone;
* the sensitivity pass: every layer quantized twice (3 and 5 bits), plus the activations
  kept for one chunk's backward pass and its logits;
* the distillation: the student, its trainable scales and biases four times over in float32
  (weights, gradients, Adam's two moments), the same activations and logits.

The largest phase is compared with the machine's budget (:func:`qwen_mlx.system.machine.this_machine`,
``$QWEN_MLX_MEMORY`` to plan for another amount), the way `plan` and `finetune` refuse.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..models.shapes import Shape
from ..system import memory
from ..system.machine import this_machine
from ..models.recipes import Recipe
from .sensitivity import HIGH, LOW



def _params(tensors: list, recipe: Recipe) -> tuple[int, int]:
    """(all parameters, quantizable ones)."""
    total = sum(math.prod(t.shape) for t in tensors)
    quant = sum(math.prod(t.shape) for t in tensors if recipe.quantizes(t.shape))
    return total, quant


def phases(tensors: list, config: dict, recipe: Recipe, chunk: int, *, mixed: bool,
           distilled: bool) -> dict[str, int]:
    """Peak bytes of each phase the recipe runs."""
    total, quant = _params(tensors, recipe)
    float_bytes = getattr(mx, recipe.dtype).size
    groups = quant // recipe.group_size
    backward = memory.backward_bytes(Shape.of(config), chunk, float_bytes)  # one chunk's
    out = {"teacher pass": total * float_bytes}
    if mixed:
        out["sensitivity pass"] = (quant * (LOW + HIGH) // 8 + 4 * groups * float_bytes
                                   + (total - quant) * float_bytes
                                   + backward)
    if distilled:
        out["error-corrected rounding"] = rounding_bytes(tensors, recipe)
        bits = max(recipe.format_for(t.name.removesuffix(".weight"))[0] or 0
                   for t in tensors)
        out["distillation"] = (quant * bits // 8 + (total - quant) * float_bytes
                               + 2 * groups * (float_bytes + 16)
                               + backward)
    return out


def rounding_bytes(tensors: list, recipe: Recipe) -> int:
    """The GPTQ pass (:mod:`qwen_mlx.quant.gptq`): the student, the source's embedding, and the
    larger of one decoder layer (its float weights, each linear layer's float32 input
    second moment and working copies, and the largest scale-refit block's normal
    equations) and the output layer (float32 working copies)."""
    from .gptq import refit_bytes

    float_bytes = getattr(mx, recipe.dtype).size
    student = sum(math.prod(t.shape) * (recipe.format_for(t.name.removesuffix(".weight"))[0]
                                        or 8 * float_bytes) // 8 for t in tensors)
    embed = next(math.prod(t.shape) for t in tensors if "embed_tokens" in t.name)
    layers: dict[str, int] = {}
    refits: dict[str, int] = {}
    for t in tensors:
        if ".layers." in t.name:
            key = t.name.split(".layers.")[1].split(".")[0]
            work = t.shape[-1] ** 2 * 4 + 3 * math.prod(t.shape) * 4 if len(t.shape) == 2 else 0
            layers[key] = layers.get(key, 0) + math.prod(t.shape) * float_bytes + work
            if len(t.shape) == 2 and recipe.quantizes(t.shape):
                group = recipe.format_for(t.name.removesuffix(".weight"))[1]
                refits[key] = max(refits.get(key, 0), refit_bytes(t.shape[-1], group))
    layers = {k: v + refits.get(k, 0) for k, v in layers.items()}
    head = 3 * embed * 4
    return student + embed * float_bytes + max([head, *layers.values()])


def check(needed: dict[str, int], memory_option: str | None = None) -> None:
    """Refuse, naming the largest phase, when it exceeds the machine's budget."""
    memory.check_phases(needed, this_machine(memory_option), "this recipe",
                        "use a plain recipe (--q4), or run it on a Mac with more memory")
