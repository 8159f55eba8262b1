"""The training loss: cross-entropy on the trained positions only, its gradient through the
output layer computed slice by slice in the forward pass.

mlx-lm's loss runs the 151,936-way output projection on every position of the padded batch
and keeps all the logits for the backward pass (a float32 151,936-wide row per token).
Here the hidden states of the trained positions are gathered first, so prompt, template and
padding positions never reach the output layer (on a small model that layer is most of the
work). Then, one slice of at most ``SLICE`` rows after another, the logits, the loss and the
gradient with respect to the hidden states are computed together, and the logits dropped: the
output layer is frozen, so nothing later in the graph changes that gradient. Autograd sees
a linear stand-in, ``sum(h * stop_gradient(dh))``, whose gradient is ``dh``; the value
reported is the true loss. Same two matrix products per row as plain autograd, and one
slice of logits in memory instead of all of them.

The slices are chained with ``mx.depends``: left alone, MLX may evaluate them side by side,
so memory grows with the row count; chained, one slice's working set is all there is
(bench/README.md, "finetune", has the measurements). Evaluating each slice inside the traced
function instead is worse: under ``value_and_grad`` every evaluated slice stays referenced.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

SLICE = 128


def output_layer(model: nn.Module):
    """The model's output projection (Qwen3-4B ties it to the embedding)."""
    if model.args.tie_word_embeddings:
        return model.model.embed_tokens.as_linear
    return model.lm_head


def _trained(model: nn.Module, inputs: mx.array, targets: mx.array,
             select: mx.array) -> tuple[mx.array, mx.array]:
    """Final hidden states and targets of the positions ``select`` (flat indices)."""
    select = mx.stop_gradient(select)
    hidden = model.model(inputs)
    hidden = hidden.reshape(-1, hidden.shape[-1])[select]
    return hidden, mx.stop_gradient(targets.reshape(-1)[select])


def _slices(rows: int):
    return [(s, min(s + SLICE, rows)) for s in range(0, rows, SLICE)]


def loss_sum(model: nn.Module, inputs: mx.array, targets: mx.array,
             select: mx.array) -> mx.array:
    """Summed cross-entropy of the selected positions (no gradient: validation)."""
    hidden, wanted = _trained(model, inputs, targets, select)
    head = output_layer(model)
    total = mx.array(0.0, mx.float32)
    for s, e in _slices(hidden.shape[0]):
        logits = head(mx.depends(hidden[s:e], total)).astype(mx.float32)
        total = total + nn.losses.cross_entropy(logits, wanted[s:e]).sum()
    return total


def loss_for_grad(model: nn.Module, inputs: mx.array, targets: mx.array,
                  select: mx.array) -> mx.array:
    """:func:`loss_sum`'s value, with a gradient that skips storing the logits."""
    hidden, wanted = _trained(model, inputs, targets, select)
    head = output_layer(model)
    fixed = mx.stop_gradient(hidden)
    total, grads = mx.array(0.0, mx.float32), []
    for s, e in _slices(hidden.shape[0]):
        h, t = fixed[s:e], wanted[s:e]
        if grads:  # after the slice before is done, so slices' logits never coexist
            h = mx.depends(h, [grads[-1], total])
        logits = head(h).astype(mx.float32)
        lse = mx.logsumexp(logits, axis=-1, keepdims=True)
        total = total + (lse[:, 0] - mx.take_along_axis(logits, t[:, None], -1)[:, 0]).sum()
        # d(sum CE)/d logits = softmax - one-hot; back through the frozen head to h.
        d_logits = mx.exp(logits - lse) - (mx.arange(logits.shape[-1]) == t[:, None])
        _, (dh,) = mx.vjp(lambda x: head(x).astype(mx.float32), [h], [d_logits])
        grads.append(dh)
    dh = mx.stop_gradient(mx.concatenate(grads) if len(grads) > 1 else grads[0])
    stand_in = (hidden * dh.astype(hidden.dtype)).sum().astype(mx.float32)
    return mx.stop_gradient(total) + stand_in - mx.stop_gradient(stand_in)
