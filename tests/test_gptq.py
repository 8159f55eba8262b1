"""Error-corrected rounding (qwen_mlx.quant.gptq): MLX's packing for every width, and rounding
that keeps a layer's outputs closer than MLX's own rounding does."""

from __future__ import annotations

import mlx.core as mx
import pytest

from qwen_mlx.quant import gptq


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_packed_codes_read_back_through_mlx(bits):
    mx.random.seed(bits)
    codes = mx.random.randint(0, 2 ** bits, (5, 128)).astype(mx.float32)
    unit = mx.ones((5, 2)), mx.zeros((5, 2))
    back = mx.dequantize(gptq.pack(codes, bits), *unit, group_size=64, bits=bits)
    assert mx.array_equal(back, codes).item()


def _output_error(w: mx.array, wq: mx.array, h: mx.array) -> float:
    d = w - wq
    return ((d @ h) * d).sum().item()


def test_rounding_and_refit_lower_the_output_error_below_mlx_rounding():
    """On correlated inputs (as a layer's are), GPTQ's codes then the refitted scales each
    lower sum((W - Wq) H (W - Wq)^T), and the result dequantizes as MLX reads it."""
    mx.random.seed(0)
    w = mx.random.normal((64, 128)) * 0.02
    mix = mx.random.normal((128, 128)) * 0.3 + mx.eye(128)
    x = mx.random.normal((512, 128)) @ mix
    h = x.T @ x
    plain = mx.dequantize(*mx.quantize(w, group_size=64, bits=4), group_size=64, bits=4)
    codes, s, b = gptq.round_columns(w, h, 4, 64)
    rounded = (codes.reshape(64, 2, 64) * s[..., None] + b[..., None]).reshape(64, 128)
    layer = gptq.quantize_layer(w, h, 4, 64, mx.float32)
    final = mx.dequantize(layer["weight"], layer["scales"], layer["biases"], group_size=64,
                          bits=4)
    errors = [_output_error(w, q, h) for q in (plain, rounded, final)]
    assert errors[1] < 0.6 * errors[0] and errors[2] < errors[1], errors


def test_the_refit_never_makes_a_row_worse():
    """Identity inputs: MLX's min-max scales are close to optimal; the refit keeps a row's
    old scales wherever its own fit is not better."""
    mx.random.seed(1)
    w = mx.random.normal((32, 64))
    codes, s, b = gptq.round_columns(w, mx.eye(64), 3, 64)
    s2, b2 = gptq.refit_scales(w, mx.eye(64), codes, s, b, 64)
    before, after = (((w - (codes * sc + bi)) ** 2).sum(axis=1) for sc, bi in ((s, b), (s2, b2)))
    assert mx.all(after <= before).item()
