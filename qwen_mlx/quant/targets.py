"""What the fitted recipes train and measure against: the reference's top-k next-token
log-probabilities per chunk (kept on disk between steps, so the two models are never resident
together) and the differentiable KL to them. The exact figures of a finished model are
evaluate/'s; these are a training target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..evaluate.quality import Progress, scored_rows, output_head

TOP_K = 64


def kl_to_reference(net, chunk: list[int], ids: mx.array, ref_logp: mx.array, *,
                    temperature: float = 1.0) -> mx.array:
    """Differentiable mean KL(reference || net) over one chunk's positions, from the
    reference's top-k (``ids``/``ref_logp``, as :func:`reference_pass` keeps them). What a
    recipe that fits on the reference minimises, and its minimum is the reference itself:

    * at temperature 1, over the top-k plus one bucket for the rest of each side's mass;
    * above 1 (softer, so a peaked teacher still says which wrong tokens are nearly right),
      both sides are renormalised over the same support, the reference's top-k, as mlx-lm's
      DWQ does. (Renormalising the reference alone, as this once did, made the minimum a
      student with no mass outside those k tokens, not the teacher.)"""
    logits = output_head(net)(net.model(mx.array(chunk[:-1])[None]))[0].astype(mx.float32)
    if temperature != 1.0:
        q = mx.take_along_axis(logits / temperature, ids, axis=-1)
        q = q - mx.logsumexp(q, axis=-1, keepdims=True)
        p_log = ref_logp / temperature
        p_log = p_log - mx.logsumexp(p_log, axis=-1, keepdims=True)
        return (mx.exp(p_log) * (p_log - q)).sum(-1).mean()
    q = mx.take_along_axis(logits, ids, axis=-1) - mx.logsumexp(logits, axis=-1,
                                                                 keepdims=True)
    p = mx.exp(ref_logp)
    p_tail = mx.maximum(1 - p.sum(-1), 0.0)
    q_tail = mx.maximum(1 - mx.exp(q).sum(-1), 1e-12)
    tail = p_tail * (mx.log(mx.maximum(p_tail, 1e-12)) - mx.log(q_tail))
    return ((p * (ref_logp - q)).sum(-1) + tail).mean()


@dataclass
class Reference:
    """What the reference leaves behind, per chunk: its top-k ids and log-probabilities,
    and the log-probability of the actual next token."""

    ids: list[np.ndarray]
    logp: list[np.ndarray]
    target: list[np.ndarray]


def reference_pass(net, parts: list[list[int]], progress: Progress | None = None) -> Reference:
    slices: list[list[tuple]] = [[] for _ in parts]
    for n, _, lp, tgt in scored_rows(net, parts, progress):
        top = mx.argpartition(-lp, kth=TOP_K - 1, axis=-1)[:, :TOP_K]
        picked = mx.take_along_axis(lp, top, axis=-1)
        mx.eval(top, picked, tgt)
        slices[n].append((np.array(top, dtype=np.int32), np.array(picked, dtype=np.float32),
                          np.array(tgt, dtype=np.float32)))
    # per chunk, its slices' (ids, log-probs, targets) joined column by column
    columns = [[np.concatenate(column) for column in zip(*chunk)] for chunk in slices]
    return Reference(*(list(part) for part in zip(*columns)))


def reference_of(folder: Path, parts: list[list[int]], *, dtype: str = "auto",
                 progress: Progress | None = None) -> Reference:
    """Load the model in ``folder`` alone, keep its :func:`reference_pass` over the chunks,
    and free it before anything else loads: how `eval`, the sensitivity pass and the
    distillation's teacher keep two models from ever being resident together."""
    import gc

    from ..models.loader import load_weights

    net, _ = load_weights(Path(folder), dtype=dtype)
    ref = reference_pass(net, parts, progress)
    del net
    gc.collect()
    mx.clear_cache()
    return ref
