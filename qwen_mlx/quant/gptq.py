"""Error-corrected rounding (GPTQ) with refitted scales, one layer at a time: how `--dwq`
starts.

Plain quantization rounds every weight to its nearest level on its own. GPTQ rounds the
input columns one after another and pushes each rounding error onto the columns not yet
rounded, weighted by the inverse of the layer's input second moment ``H = X^T X`` on the fit
set, so the errors cancel in the layer's output instead of adding up
(https://arxiv.org/abs/2210.17323). With the codes fixed, each row's scales and biases are
then refitted to the float weights by least squares under the same ``H``: a closed form
that never ships scales worse than the rounding's own.

mlx-lm has GPTQ (``mlx_lm.quant.gptq``) but it holds every layer's ``H`` and the float model
at once (for Qwen3-4B's down projections alone, 36 x 9728^2 floats: 13.6 GB) and packs 2, 4
and 8 bits only. Here the source is read lazily and walked layer by layer: the fit set's
hidden states (a few MB) go through one decoder layer at a time, its ``H`` are taken, its
linear layers rounded and written to the work folder (so a stopped run resumes at the next
layer), and its weights dropped. An untied output layer comes last, with ``H`` from the
final hidden states.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ..storage import safetensors

DAMP = 0.1  # of H's mean diagonal, added before inverting (mlx-lm: 0.01; 0.1 generalised
# better from the small fit set, bench/README)
ROWS = 8192  # rows packed at once
Progress = Callable[[int, int], None]
REFIT_BYTES = 256 << 20  # the scale refit's working memory for one row block, at most
REFIT_COPIES = 4  # (2G x 2G) float32 matrices per row alive at once: the stacked blocks,
# the system, the system with its ridge, the solver's copy


def _refit_row_bytes(cols: int, group: int) -> int:
    """Working bytes of one row's refit: its normal equations (REFIT_COPIES of 2G x 2G) and
    the G partial products (cols each) they are summed from, float32."""
    side = 2 * cols // group
    return (side * side * REFIT_COPIES + cols // group * cols) * 4


def refit_rows(cols: int, group: int) -> int:
    """Rows whose scales are refitted at once: as many as fit in REFIT_BYTES. For Qwen3-4B's
    down_proj (9,728 inputs) in groups of 32 that is 15 rows, where all 2,560 at once took
    3.8 GB for each copy of the normal equations alone."""
    return max(1, REFIT_BYTES // _refit_row_bytes(cols, group))


def refit_bytes(cols: int, group: int) -> int:
    """The working memory of one refit block (what fit_memory counts for a layer)."""
    return refit_rows(cols, group) * _refit_row_bytes(cols, group)


class _Catch(nn.Module):
    """A linear layer that adds its inputs' second moment (float32) to ``h`` as it runs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.h = inner, None

    def __call__(self, x: mx.array) -> mx.array:
        flat = x.reshape(-1, x.shape[-1]).astype(mx.float32)
        self.h = flat.T @ flat if self.h is None else self.h + flat.T @ flat
        return self.inner(x)


def pack(codes: mx.array, bits: int) -> mx.array:
    """Integer codes (rows, cols) as MLX's packed uint32 words: a little-endian bit stream,
    which is MLX's layout for every width (8 three-bit codes in 3 bytes, 8 four-bit in 4)."""
    rows, cols = codes.shape
    out = []
    for start in range(0, rows, ROWS):
        c = codes[start:start + ROWS].astype(mx.uint32)
        stream = (c[..., None] >> mx.arange(bits, dtype=mx.uint32)) & 1
        words = stream.reshape(c.shape[0], cols * bits // 32, 32)
        out.append(mx.sum(words << mx.arange(32, dtype=mx.uint32), axis=-1).astype(mx.uint32))
        mx.eval(out[-1])
    return mx.concatenate(out)


def _inverse_factor(h: mx.array) -> mx.array:
    """The upper Cholesky factor of the damped ``H``'s inverse, which GPTQ's column updates
    read (linear algebra runs on the CPU stream in MLX)."""
    with mx.stream(mx.cpu):
        n = h.shape[0]
        h = h + DAMP * mx.mean(mx.diag(h)) * mx.eye(n)
        inv = mx.linalg.cholesky_inv(mx.linalg.cholesky(h))
        return mx.linalg.cholesky(inv, upper=True)


def round_columns(w: mx.array, h: mx.array, bits: int, group: int
                  ) -> tuple[mx.array, mx.array, mx.array]:
    """GPTQ: (codes, scales, biases) of ``w`` (rows, cols), each group's scale and bias set
    from the range of its error-corrected weights when the group is reached (as the paper;
    MLX's own quantizer also makes zero exact, which did worse here)."""
    top = 2 ** bits - 1
    hinv = _inverse_factor(h)
    w = w.astype(mx.float32)
    codes, scales, biases = [], [], []
    for i in range(0, w.shape[1], group):
        j = i + group
        block = w[:, i:j]
        lo, hi = block.min(axis=1, keepdims=True), block.max(axis=1, keepdims=True)
        s, b = mx.maximum((hi - lo) / top, 1e-12), lo  # the group's range, as the paper
        errs, qs = [], []
        for k in range(group):
            col = block[:, k:k + 1]
            q = mx.clip(mx.round((col - b) / s), 0, top)
            e = (col - (s * q + b)) / hinv[i + k, i + k]
            block = mx.concatenate([block[:, :k + 1],
                                    block[:, k + 1:] - e * hinv[i + k, i + k + 1:j]], axis=1)
            errs.append(e)
            qs.append(q)
        err = mx.concatenate(errs, axis=1)
        w = mx.concatenate([w[:, :j], w[:, j:] - err @ hinv[i:j, j:]], axis=1)
        codes.append(mx.concatenate(qs, axis=1))
        scales.append(s)
        biases.append(b)
        mx.eval(w, codes[-1], s, b)
    return mx.concatenate(codes, axis=1), mx.concatenate(scales, axis=1), \
        mx.concatenate(biases, axis=1)


def _error(w: mx.array, h: mx.array, codes: mx.array, s: mx.array, b: mx.array,
           group: int) -> mx.array:
    """Each row's output error (w - w_q) H (w - w_q)^T."""
    rows, cols = w.shape
    d = w - (codes.reshape(rows, -1, group) * s[..., None] + b[..., None]).reshape(rows, cols)
    return ((d @ h) * d).sum(axis=1)


def refit_scales(w: mx.array, h: mx.array, codes: mx.array, scales: mx.array,
                 biases: mx.array, group: int) -> tuple[mx.array, mx.array]:
    """Least-squares scales and biases for fixed codes: per row, minimise
    (w - w_q) H (w - w_q)^T over the 2G unknowns (G groups), whose normal equations are
    built from H's blocks; a row keeps its old scales where the fit is not better."""
    rows, cols = w.shape
    g = cols // group
    w = w.astype(mx.float32)
    block_sums = h.reshape(g, group, g, group).sum(axis=(1, 3))  # 1_g^T H 1_h
    col_sums = h.reshape(cols, g, group).sum(axis=2)  # H 1_h, (cols, G)
    out_s, out_b = [], []
    block = refit_rows(cols, group)
    for start in range(0, rows, block):
        q, wr = codes[start:start + block], w[start:start + block]
        n = q.shape[0]
        qq = mx.stack([(q * (q[:, k * group:(k + 1) * group] @ h[k * group:(k + 1) * group]))
                       .reshape(n, g, group).sum(-1) for k in range(g)], axis=2)
        q1 = mx.stack([(q * col_sums[:, k]).reshape(n, g, group).sum(-1) for k in range(g)],
                      axis=2)
        m = mx.concatenate([mx.concatenate([qq, q1], axis=2),
                            mx.concatenate([q1.transpose(0, 2, 1),
                                            mx.broadcast_to(block_sums, (n, g, g))], axis=2)],
                           axis=1)
        wh = wr @ h
        v = mx.concatenate([(q * wh).reshape(n, g, group).sum(-1),
                            wh.reshape(n, g, group).sum(-1)], axis=1)
        ridge = 1e-6 * mx.diagonal(m, axis1=1, axis2=2) + 1e-12
        m = m + ridge[:, :, None] * mx.eye(2 * g)
        with mx.stream(mx.cpu):
            theta = mx.linalg.solve(m, v[..., None])[..., 0]
        s_new, b_new = theta[:, :g], theta[:, g:]
        s_old, b_old = scales[start:start + block], biases[start:start + block]
        better = (_error(wr, h, q, s_new, b_new, group)
                  < _error(wr, h, q, s_old, b_old, group))[:, None]
        out_s.append(mx.where(better, s_new, s_old))
        out_b.append(mx.where(better, b_new, b_old))
        mx.eval(out_s[-1], out_b[-1])
    return mx.concatenate(out_s), mx.concatenate(out_b)


def quantize_layer(w: mx.array, h: mx.array, bits: int, group: int,
                   dtype: mx.Dtype) -> dict[str, mx.array]:
    """One layer's weight, scales and biases as an MLX quantized layer holds them."""
    codes, s, b = round_columns(w, h, bits, group)
    s, b = refit_scales(w, h, codes, s, b, group)
    return {"weight": pack(codes, bits), "scales": s.astype(dtype), "biases": b.astype(dtype)}


def run(source: Path, student: nn.Module, parts: list[list[int]], folder: Path, *,
        dtype: str, progress: Progress | None = None,
        stopping: Callable[[], bool] = lambda: False) -> dict[str, mx.array] | None:
    """Round every linear layer of ``student`` below 8 bits (its formats decide bits and
    groups) against ``source`` on the chunks ``parts``, one decoder layer at a time, each
    layer's result kept in ``folder`` as it is done; return the arrays to update the student
    with. ``stopping()`` is asked between layers: True returns None, what is done is kept.

    A tied embedding keeps its plain rounding: rounded for the output layer's inputs, its
    rows lose more as the input embeddings they also are, and on the bench that cost more
    than it gained (bench/README); an untied output layer is rounded last."""
    from mlx_lm.models.base import create_attention_mask

    from ..storage.atomic import atomic_path
    from ..models.loader import load_weights

    folder.mkdir(parents=True, exist_ok=True)
    formats = {path: (m.bits, m.group_size) for path, m in student.named_modules()
               if hasattr(m, "scales") and m.bits < 8}
    scale_type = next(m.scales.dtype for _, m in student.named_modules() if hasattr(m, "scales"))
    net, _ = load_weights(source, dtype=dtype, lazy=True)
    layers = net.model.layers
    steps = len(layers) + 1
    hidden = [net.model.embed_tokens(mx.array(p)[None]) for p in parts]
    mask = create_attention_mask(hidden[0], None)

    def rounded(prefix: str, catches: dict[str, _Catch]) -> dict[str, mx.array]:
        out = {}
        for path, c in catches.items():
            bits, group = formats[prefix + path]
            out.update({f"{prefix}{path}.{k}": v for k, v in
                        quantize_layer(c.inner.weight, c.h, bits, group, scale_type).items()})
            c.h = None
        return out

    for n in range(len(layers)):
        prefix, block, file = f"model.layers.{n}.", layers[n], folder / f"layer-{n:03d}.safetensors"
        catches = {} if file.is_file() else {
            path: _Catch(m) for path, m in block.named_modules()
            if isinstance(m, nn.Linear) and prefix + path in formats}
        block.update_modules(tree_unflatten(list(catches.items())))
        hidden = [block(x, mask) for x in hidden]
        mx.eval(hidden, [c.h for c in catches.values()])
        if catches:
            with atomic_path(file) as tmp:
                safetensors.save(str(tmp), rounded(prefix, catches))
        layers[n] = None  # its weights go; only the hidden states carry on
        gc.collect()
        mx.clear_cache()
        if progress:
            progress(n + 1, steps)
        if stopping():
            return None
    head = folder / "head.safetensors"
    if not head.is_file():
        catches = {}
        if "lm_head" in formats:
            catches = {"lm_head": _Catch(net.lm_head)}
            for x in hidden:
                catches["lm_head"](net.model.norm(x))
        with atomic_path(head) as tmp:
            safetensors.save(str(tmp), rounded("", catches) or {"none": mx.zeros((1,))})
    if progress:
        progress(steps, steps)
    del net, hidden
    gc.collect()
    arrays: dict[str, mx.array] = {}
    for f in sorted(folder.glob("*.safetensors")):
        arrays.update({k: v for k, v in mx.load(str(f)).items() if k != "none"})
    return arrays
