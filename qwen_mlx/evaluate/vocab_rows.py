"""A model's vocabulary-sized tensors (embedding, output layer) read a slice of rows at a time,
and the exact next-token figures computed from them without ever holding them whole.

For Qwen3-4B these are its largest tensors: 151,936 x 2,560, 0.78 GB in bf16 and 1.56 GB in
the float32 the CPU computes in; the reference's alone was most of the exact quality pass's
peak. The pass needs the embedding only at the text's tokens (:meth:`VocabTensors.embed`
reads those rows) and the output layer one vocabulary slice at a time (:func:`score`): the
log-sum-exp, the KL sum, the argmax and the target's logit are all kept as running values per
position (the same rescaling as a streamed softmax), so a slice is freed before the next one
is read. Rows come straight from the safetensors file through a memory map, unmapped at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np

from ..models.checkpoint import weight_files
from ..errors import QwenMlxError
from ..storage.safetensors import TensorInfo, read_header

SLICE = 8192  # vocabulary rows per slice: 84 MB of float32 weights at Qwen3-4B's width
BLOCK = 512  # positions per matmul: 512 x SLICE x 4 bytes = 17 MB of logits per model

_NUMPY = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "U32": np.uint32,
          "I32": np.int32, "U8": np.uint8, "I8": np.int8}


def read_rows(info: TensorInfo, rows: slice | np.ndarray) -> mx.array:
    """Rows of one tensor, read from its file through a memory map dropped straight after
    (only those rows' pages are read)."""
    kind = _NUMPY.get(info.dtype)
    if kind is None or info.offset < 0:
        raise QwenMlxError(f"{info.file}: cannot read rows of {info.name} ({info.dtype})")
    table = np.memmap(info.file, dtype=kind, mode="r", offset=info.offset, shape=info.shape)
    try:
        out = mx.array(np.ascontiguousarray(table[rows]))
    finally:
        del table
    return out.view(mx.bfloat16) if info.dtype == "BF16" else out


class VocabTensors:
    """The embedding or output layer of the model in ``folder``: ``module`` is its (lazy,
    never evaluated) mlx-lm module, which says how it is quantized and the compute type."""

    def __init__(self, folder: Path, module, prefix: str) -> None:
        index: dict[str, TensorInfo] = {}
        for f in weight_files(Path(folder)):
            index.update(read_header(f)[0])
        self.parts = {p: index[f"{prefix}.{p}"] for p in ("weight", "scales", "biases")
                      if f"{prefix}.{p}" in index}
        if "weight" not in self.parts:
            raise QwenMlxError(f"{folder} has no {prefix}.weight")
        self.module = module
        self.quantized = "scales" in self.parts
        self.dtype = (module.scales if self.quantized else module.weight).dtype
        self.rows = self.parts["weight"].shape[0]

    @classmethod
    def of(cls, folder: Path, net, *, head: bool) -> "VocabTensors":
        """The embedding, or (``head``) the output layer: the embedding when tied."""
        if head and not net.args.tie_word_embeddings:
            return cls(folder, net.lm_head, "lm_head")
        return cls(folder, net.model.embed_tokens, "model.embed_tokens")

    def _read(self, rows: slice | np.ndarray) -> dict[str, mx.array]:
        return {p: read_rows(info, rows) for p, info in self.parts.items()}

    def _table(self, arrays: dict[str, mx.array]) -> mx.array:
        """Float rows in the compute type (dequantized when stored quantized)."""
        if not self.quantized:
            return arrays["weight"].astype(self.dtype)
        m = self.module
        return mx.dequantize(arrays["weight"], arrays["scales"].astype(self.dtype),
                             arrays.get("biases"), group_size=m.group_size, bits=m.bits,
                             mode=getattr(m, "mode", "affine")).astype(self.dtype)

    def embed(self, tokens: list[list[int]]) -> list[mx.array]:
        """Each token list's embeddings, shape (1, len, hidden): the rows of the distinct
        tokens only."""
        flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in tokens])
        distinct, where = np.unique(flat, return_inverse=True)
        table = self._table(self._read(distinct))[mx.array(where.astype(np.int32))]
        out, at = [], 0
        for t in tokens:
            out.append(table[at:at + len(t)][None])
            at += len(t)
        return out

    def slice_logits(self, start: int, stop: int) -> Callable[[mx.array], mx.array]:
        """x -> the logits of vocabulary rows start..stop, float32 (x: positions x hidden)."""
        arrays = self._read(slice(start, stop))
        if not self.quantized:
            w = arrays["weight"].astype(self.dtype)
            return lambda x: (x @ w.T).astype(mx.float32)
        m = self.module
        w, s = arrays["weight"], arrays["scales"].astype(self.dtype)
        b = arrays["biases"].astype(self.dtype) if "biases" in arrays else None
        return lambda x: mx.quantized_matmul(
            x, w, s, b, transpose=True, group_size=m.group_size, bits=m.bits,
            mode=getattr(m, "mode", "affine")).astype(mx.float32)


@dataclass
class Scores:
    """Per position: the reference's log-probability of the actual next token, and for each
    candidate its KL(reference || candidate) over the whole vocabulary, whether its argmax
    is the reference's, and its log-probability of the actual next token."""

    reference_target: np.ndarray
    kl: list[np.ndarray]
    same_top1: list[np.ndarray]
    target: list[np.ndarray]


class _Running:
    """One model's running figures over the slices seen so far, for one block of positions."""

    def __init__(self, rows: int) -> None:
        self.max = mx.full((rows,), -mx.inf)
        self.sum = mx.zeros((rows,))  # sum of exp(logit - max)
        self.best = mx.full((rows,), -mx.inf)
        self.arg = mx.zeros((rows,), dtype=mx.int32)
        self.target = mx.zeros((rows,))

    def add(self, logits: mx.array, start: int, targets: mx.array) -> mx.array:
        """Take one slice's logits in; returns the rescale factor of the old sums."""
        top = logits.max(-1)
        new_max = mx.maximum(self.max, top)
        scale = mx.exp(self.max - new_max)
        self.sum = self.sum * scale + mx.exp(logits - new_max[:, None]).sum(-1)
        self.max = new_max
        better = top > self.best  # strict: the first of equal maxima wins, as argmax does
        self.arg = mx.where(better, mx.argmax(logits, -1).astype(mx.int32) + start, self.arg)
        self.best = mx.where(better, top, self.best)
        inside = (targets >= start) & (targets < start + logits.shape[-1])
        picked = mx.take_along_axis(
            logits, mx.clip(targets - start, 0, logits.shape[-1] - 1)[:, None], -1)[:, 0]
        self.target = mx.where(inside, picked, self.target)
        return scale

    def logsumexp(self) -> mx.array:
        return self.max + mx.log(self.sum)


def score(finals: list[mx.array], targets: mx.array, heads: list[VocabTensors], *,
          progress: Callable[[int, int], None] | None = None) -> Scores:
    """The exact figures of ``finals`` (each model's normed last hidden states, positions x
    hidden; the first model is the reference) against the next tokens ``targets``, reading
    each output layer in slices of SLICE rows; ``progress(slices done, slices)``."""
    vocab = heads[0].rows
    if any(h.rows != vocab for h in heads):
        raise QwenMlxError("the reference and the model have different vocabularies")
    n = targets.shape[0]
    blocks = [(b, min(b + BLOCK, n)) for b in range(0, n, BLOCK)]
    running = [[_Running(stop - b) for _ in heads] for b, stop in blocks]
    kl_sums = [[mx.zeros((stop - b,)) for _ in heads[1:]] for b, stop in blocks]
    slices = list(range(0, vocab, SLICE))
    for done, start in enumerate(slices):
        layers = [h.slice_logits(start, min(start + SLICE, vocab)) for h in heads]
        for i, (b, stop) in enumerate(blocks):
            logits = [f(x[b:stop]) for f, x in zip(layers, finals)]
            ref = running[i][0]
            scale = ref.add(logits[0], start, targets[b:stop])
            weights = mx.exp(logits[0] - ref.max[:, None])
            for c, lq in enumerate(logits[1:]):
                running[i][c + 1].add(lq, start, targets[b:stop])
                kl_sums[i][c] = kl_sums[i][c] * scale + (weights * (logits[0] - lq)).sum(-1)
            mx.eval([vars(r) for r in running[i]], kl_sums[i])
        del layers
        if progress:
            progress(done + 1, len(slices))
    ref_target, kl, same, target = [], [[] for _ in heads[1:]], [[] for _ in heads[1:]], \
        [[] for _ in heads[1:]]
    for i in range(len(blocks)):
        ref = running[i][0]
        ref_lse = ref.logsumexp()
        ref_target.append(np.array(ref.target - ref_lse, dtype=np.float64))
        for c, cand in enumerate(running[i][1:]):
            # sum p (a - b) over the vocabulary, less the two normalisers: KL(p || q)
            value = kl_sums[i][c] / ref.sum - ref_lse + cand.logsumexp()
            kl[c].append(np.maximum(np.array(value, dtype=np.float64), 0.0))
            same[c].append(np.array(cand.arg == ref.arg))
            target[c].append(np.array(cand.target - cand.logsumexp(), dtype=np.float64))
    join = np.concatenate
    return Scores(join(ref_target), [join(k) for k in kl], [join(s) for s in same],
                  [join(t) for t in target])
