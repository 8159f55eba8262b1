"""The arithmetic of memory that every estimate shares: `plan` and the engine's context
limits (engine/memory_plan.py), the fitted recipes' phases (quant/memory.py) and a training
run (finetune/memory.py) all count with these, from one :class:`~qwen_mlx.models.shapes.Shape`,
and refuse through one check against this machine's budget.

Activations are counted per token of one decoder layer, in widths of the hidden size; the
three ways a layer is run keep different things alive, so they have three formulas here,
side by side:

* prefill (no gradient): residual, norms, q/k/v/o and the MLP's three projections;
* training with LoRA: the same plus what the backward pass keeps of attention, and the
  scores and probabilities of every head (float32);
* a quantization phase's backward pass through every layer (sensitivities, distillation).
"""

from __future__ import annotations

import math

from ..errors import QwenMlxError
from ..models.shapes import Shape
from ..storage.safetensors import DTYPE_BYTES
from .machine import GIB, Machine

RUNTIME_BYTES = 512 << 20  # MLX, Python, tokenizer: a measured figure, rounded up
FLOAT_TYPES = ("BF16", "F16", "F32")


def tensor_bytes(dtype: str, shape: tuple[int, ...], compute_bytes: int | None) -> int:
    """One stored tensor once loaded: floats cast to the compute type (``compute_bytes``),
    quantized codes as they are."""
    size = compute_bytes if dtype in FLOAT_TYPES and compute_bytes else DTYPE_BYTES[dtype]
    return size * math.prod(shape)


def kv_bytes_per_token(shape: Shape, element_bytes: float) -> float:
    """Keys and values of every layer for one token, ``element_bytes`` each (scales and
    biases included for a quantized cache)."""
    return shape.layers * 2 * shape.kv_heads * shape.head_dim * element_bytes


def prefill_activation_bytes(shape: Shape, rows: int, dtype_bytes: int) -> int:
    """One prefill chunk of ``rows`` positions through one layer, plus the float32 logits of
    the last position."""
    s = shape
    per_token = 4 * s.hidden + 2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim + \
        3 * s.intermediate
    return rows * per_token * dtype_bytes + s.vocab * 4


def training_activation_bytes(shape: Shape, batch: int, width: int, dtype_bytes: int,
                              checkpointed: bool) -> int:
    """What a LoRA training step keeps for its backward pass: every layer's activations, or
    with gradient checkpointing each layer's input and one layer recomputed."""
    s = shape
    per_token = (5 * s.hidden + 3 * s.heads * s.head_dim + 4 * s.kv_heads * s.head_dim
                 + 4 * s.intermediate) * dtype_bytes
    scores = batch * s.heads * width * width * 4 * 2  # scores and probabilities, float32
    one_layer = batch * width * per_token + scores
    if checkpointed:
        return batch * width * s.layers * s.hidden * dtype_bytes + one_layer
    return s.layers * one_layer


def backward_bytes(shape: Shape, chunk: int, dtype_bytes: int) -> int:
    """Activations one chunk's backward pass through the whole model keeps (about 12
    hidden-widths and 3 intermediate-widths a layer and position) plus its float32 logits,
    their softmax and gradient."""
    width = 12 * shape.hidden + 3 * shape.intermediate
    return chunk * width * shape.layers * dtype_bytes + 3 * chunk * shape.vocab * 4


def check_phases(needed: dict[str, int], machine: Machine, what: str, advice: str) -> None:
    """Refuse, naming the largest phase of ``what``, when it exceeds the machine's budget."""
    phase, peak = max(needed.items(), key=lambda kv: kv[1])
    if peak > machine.budget_bytes:
        raise QwenMlxError(
            f"{what}'s {phase} needs about {peak / GIB:.1f} GiB, more than this machine's "
            f"{machine.budget_bytes / GIB:.1f} GiB budget ({machine.budget_source}); {advice}")
