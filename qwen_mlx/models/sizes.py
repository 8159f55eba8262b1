"""How big a conversion is before it runs: the tensors each source tensor becomes under a
recipe, the output files they are grouped into, and the exact bytes on disk. A size budget,
the memory plan of a model not yet converted and the conversion itself all count with these.
"""

from __future__ import annotations

from .checkpoint import Checkpoint
from .recipes import Recipe
from ..storage.safetensors import TensorInfo, file_nbytes, plan_shards, tensor_nbytes

SHARD_BYTES = 2 << 30  # output files of at most ~2 GiB (a tensor is never split)
METADATA = {"format": "mlx"}  # what mlx-lm's own files carry


def converted_tensors(info: TensorInfo,
                      recipe: Recipe) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of what one source tensor becomes."""
    dtype = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[recipe.dtype]
    if not recipe.quantizes(info.shape):
        return [(info.name, dtype, info.shape)]
    rows, cols = info.shape
    base = info.name.removesuffix(".weight")
    bits, group = recipe.format_for(base)
    groups = (rows, cols // group)
    return [(f"{base}.weight", "U32", (rows, cols * bits // 32)),
            (f"{base}.scales", dtype, groups), (f"{base}.biases", dtype, groups)]


def write_order(ckpt: Checkpoint) -> list[TensorInfo]:
    """Files in order and tensors in on-disk order, so reads stay sequential."""
    file_order = {f: i for i, f in enumerate(ckpt.files)}
    return sorted(ckpt.tensors.values(), key=lambda t: (file_order[t.file], t.name))


def output_shards(tensors: list, recipe: Recipe) -> list[list]:
    """The source tensors (in write order) grouped into output files of <= SHARD_BYTES."""
    return plan_shards(tensors, lambda info: sum(
        tensor_nbytes(d, shape) for _, d, shape in converted_tensors(info, recipe)), SHARD_BYTES)


def planned_bytes(tensors: list, recipe: Recipe) -> int:
    """The exact size on disk of the weights ``convert`` writes for ``tensors`` (anything with
    ``name`` and ``shape``, in write order): headers and data of every shard. A size budget is
    checked against this, before anything is computed."""
    return sum(file_nbytes([e for info in shard for e in converted_tensors(info, recipe)],
                           METADATA) for shard in output_shards(tensors, recipe))
