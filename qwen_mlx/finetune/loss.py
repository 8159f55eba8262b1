"""The training loss: cross-entropy on the trained positions only, with the output layer
applied in slices.

mlx-lm's loss runs the 151,936-way output projection on every position of the padded batch
and keeps all the logits for the backward pass (batch 4 x 2,048 tokens: 5 GB in float32).
Here the hidden states of the trained positions are gathered first, so prompt, template and
padding positions never reach the output layer (on a small model that layer is most of the
work). Past ``SLICE`` rows the layer runs slice by slice, each slice checkpointed: its
logits are recomputed in the backward pass instead of kept, so one slice's logits are in
memory at a time. At or below ``SLICE`` rows there is nothing to save and no recomputation.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

SLICE = 512


def output_layer(model: nn.Module):
    """The model's output projection (Qwen3-4B ties it to the embedding)."""
    if model.args.tie_word_embeddings:
        return model.model.embed_tokens.as_linear
    return model.lm_head


def loss_sum(model: nn.Module, inputs: mx.array, targets: mx.array,
             select: mx.array) -> mx.array:
    """Summed cross-entropy of the positions ``select`` (flat indices into inputs)."""
    select = mx.stop_gradient(select)
    hidden = model.model(inputs)
    hidden = hidden.reshape(-1, hidden.shape[-1])[select]
    wanted = mx.stop_gradient(targets.reshape(-1)[select])
    head = output_layer(model)

    def slice_loss(h: mx.array, t: mx.array) -> mx.array:
        logits = head(h).astype(mx.float32)
        return nn.losses.cross_entropy(logits, mx.stop_gradient(t)).sum()

    rows = hidden.shape[0]
    if rows <= SLICE:
        return slice_loss(hidden, wanted)
    checkpointed = mx.checkpoint(slice_loss)
    total = mx.array(0.0, mx.float32)
    for s in range(0, rows, SLICE):
        total = total + checkpointed(hidden[s:s + SLICE], wanted[s:s + SLICE])
    return total
