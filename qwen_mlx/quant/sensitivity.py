"""How much each layer's quantization costs, measured on the fit set against the source.

mlx-lm's dynamic quantization (``mlx_lm.quant.dynamic_quant``) scores a layer by the
gradient of the KL to the source, taken at the low-bit weights, dotted with the step from
the low-bit to the high-bit weights: a first-order estimate of the KL a layer gives back
when it gets more bits. It computes that with the float model, a dequantized copy and a
float32 gradient for every weight resident at once: about 10 bytes a parameter, 40 GB for
Qwen3-4B. The same number needs much less: with each layer computing
``y = low(x) + e * (low(x) - high(x))`` and ``e = 0``, the gradient of the loss with respect
to the one scalar ``e`` *is* that dot product. So each layer holds its weights quantized
twice (low and high bits), the gradient is one scalar per layer, and the teacher's side is
the top-k log-probabilities of :func:`qwen_mlx.quant.targets.reference_pass`, computed before
with the source alone: about 1 byte a parameter for Qwen3-4B at 3 and 5 bits.

The estimate is then spread over every format (bits and group size) by each layer's own
quantization error: KL_l(f) ~ k_l * mse_l(f), with k_l fitted so that KL_l(low) - KL_l(high)
is the measured gradient. :mod:`qwen_mlx.quant.allocate` spends a size budget on that table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..models.recipes import Format, formats
from .targets import Reference, kl_to_reference

LOW, HIGH = 3, 5
Progress = Callable[[int, int], None]


class _Probe(nn.Module):
    """A layer quantized twice; ``e`` moves it from the low-bit to the high-bit weights."""

    def __init__(self, low: nn.Module, high: nn.Module) -> None:
        super().__init__()
        self.low, self.high = low, high
        self.e = mx.zeros((1,))
        self.low.freeze()
        self.high.freeze()

    def __call__(self, x: mx.array) -> mx.array:
        y = self.low(x)
        return y + self.e * (y - self.high(x))

    def as_linear(self, x: mx.array) -> mx.array:  # a tied embedding as the output layer
        y = self.low.as_linear(x)
        return y + self.e * (y - self.high.as_linear(x))


def _mse(w: mx.array, bits: int, group_size: int) -> mx.array:
    q = mx.quantize(w, group_size=group_size, bits=bits)
    return mx.mean(mx.square(mx.dequantize(*q, group_size=group_size, bits=bits) - w))


def _probe(net: nn.Module, group_size: int) -> dict[str, dict[Format, float]]:
    """Replace every quantizable layer of the lazily loaded ``net`` by a probe, one layer at a
    time (so only that layer's float weight is ever read); return each layer's
    quantization error per format."""
    layers = {k: m for k, m in tree_flatten(net.leaf_modules(), is_leaf=nn.Module.is_module)
              if hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0}
    errors = {}
    for name, layer in layers.items():
        w = layer.weight
        mse = {(b, g): _mse(w, b, g) for b, g in formats(w.shape[-1])}
        probe = _Probe(layer.to_quantized(group_size=group_size, bits=LOW),
                       layer.to_quantized(group_size=group_size, bits=HIGH))
        mx.eval(mse, probe.parameters())
        errors[name] = {f: v.item() for f, v in mse.items()}
        net.update_modules(tree_unflatten([(name, probe)]))
    return errors


def measure(source: Path, parts: list[list[int]], ref: Reference, *, group_size: int,
            dtype: str, progress: Progress | None = None) -> dict[str, dict[Format, float]]:
    """Every quantizable layer's estimated KL per format for the model in ``source`` on the
    chunks, against ``ref`` (the source's own reference pass over the same chunks)."""
    from ..models.loader import load_weights

    net, _ = load_weights(Path(source), dtype=dtype, lazy=True)
    errors = _probe(net, group_size)
    net.freeze()
    net.apply_to_modules(lambda _, m: m.unfreeze(keys=["e"], recurse=False)
                         if isinstance(m, _Probe) else None)

    def loss(model, n: int) -> mx.array:
        return kl_to_reference(model, parts[n], mx.array(ref.ids[n]), mx.array(ref.logp[n]))

    grad = nn.value_and_grad(net, loss)
    total: dict[str, mx.array] = {}
    for n in range(len(parts)):
        _, g = grad(net, n)
        for k, v in tree_flatten(g):
            total[k] = total.get(k, 0) + v
        mx.eval(total)
        if progress:
            progress(n + 1, len(parts))
    return {key.removesuffix(".e"): _spread(value.item() / len(parts),
                                            errors[key.removesuffix(".e")], group_size)
            for key, value in total.items()}


def _spread(step: float, mse: dict[Format, float], group: int) -> dict[Format, float]:
    """KL_l(f) = k * mse(f), with k * (mse(LOW) - mse(HIGH)) = the measured step; a step at
    or below zero (noise: the layer did not matter to first order) keeps a tiny k, so
    smaller errors still rank above larger ones."""
    k = max(step, 1e-12) / max(mse[LOW, group] - mse[HIGH, group], 1e-30)
    return {f: k * e for f, e in mse.items()}
