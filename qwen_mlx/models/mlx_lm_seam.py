"""Every touch of mlx-lm's internals, in one place.

qwen-mlx builds on mlx-lm's public API (``load_model``, ``load_adapters``, the caches, the
Qwen3 model). A few things we need are not promised by it, and they are all here:

* ``mlx_lm.models.qwen3.scaled_dot_product_attention``: the module-level function Qwen3's
  attention calls after ``cache.update_and_fetch``. The prefix-quantized KV cache (full
  precision for the first N tokens, quantized after) routes attention through it;
  :func:`install_attention_hook` replaces it, explicitly and idempotently, when such a cache
  is made.
* ``BPEStreamingDetokenizer.tokenmap`` and ``_maybe_trim_space``, and
  ``TokenizerWrapper._detokenizer``: our streaming detokenizer shares mlx-lm's token table and
  drops its leading-space trim, so the pieces add up to exactly ``tokenizer.decode(ids)``.
* ``mlx_lm.generate.wired_limit`` and ``generation_stream``: the Metal loop wires the model's
  memory (so macOS does not page it out mid-generation) and runs on a dedicated stream.
* ``mlx_lm.generate.BatchGenerator``'s ``insert`` (per-sequence samplers, processors and
  caches), ``next`` and ``remove(..., return_prompt_caches=True)``: the server's continuous
  batch (:mod:`qwen_mlx.engine.batch`). Its server uses them; they are not documented API.
* ``mlx_lm.generate.TextStateMachine`` (``make_state``, ``split``, ``flush``): one pass over
  each new piece of text for every stop string at once (:func:`text_machine`).

:func:`check` verifies all of them and fails with one line naming the mlx-lm version, so an
upgrade that moves one of them fails here, at load, and not deep inside a generation.
"""

from __future__ import annotations

import contextlib
import sys
from importlib.metadata import version
from typing import Callable, Iterator

import mlx.core as mx

from ..errors import QwenMlxError

SUPPORTED = ">=0.32.2,<0.33"  # pyproject.toml pins the same range

# (module, attribute path) of every private or unpromised name used.
CONTRACT = (
    ("mlx_lm.models.qwen3", "scaled_dot_product_attention"),
    ("mlx_lm.tokenizer_utils", "BPEStreamingDetokenizer._maybe_trim_space"),
    ("mlx_lm.tokenizer_utils", "BPEStreamingDetokenizer.reset"),
    ("mlx_lm.tokenizer_utils", "TokenizerWrapper"),
    ("mlx_lm.generate", "wired_limit"),
    ("mlx_lm.generate", "generation_stream"),
    ("mlx_lm.generate", "BatchGenerator.insert"),
    ("mlx_lm.generate", "BatchGenerator.next"),
    ("mlx_lm.generate", "BatchGenerator.remove"),
    ("mlx_lm.generate", "TextStateMachine.make_state"),
    ("mlx_lm.generate", "TextStateMachine.split"),
    ("mlx_lm.generate", "TextStateMachine.flush"),
)


def text_machine(transitions: dict):
    """mlx-lm's TextStateMachine over ``transitions`` (state -> [(text, next state)]; a
    next state of None ends the text)."""
    from mlx_lm.generate import TextStateMachine

    return TextStateMachine(transitions)


def missing() -> list[str]:
    """The names of :data:`CONTRACT` this mlx-lm lacks."""
    import importlib

    gone = []
    for module, path in CONTRACT:
        try:
            obj = importlib.import_module(module)
            for part in path.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            gone.append(f"{module}.{path}")
    return gone


def check() -> None:
    """Fail in one line if this mlx-lm lacks something qwen-mlx relies on."""
    gone = missing()
    if gone:
        raise QwenMlxError(f"mlx-lm {version('mlx-lm')} lacks {', '.join(gone)}, which "
                           f"qwen-mlx relies on; install mlx-lm{SUPPORTED}")


# -- attention ---------------------------------------------------------------------------

_original_attention: Callable | None = None


def install_attention_hook(handles: Callable[[object], bool],
                           attend: Callable[..., mx.array]) -> None:
    """Make Qwen3's attention call ``attend(cache, queries, scale, mask)`` for caches that
    ``handles(cache)`` accepts, and mlx-lm's own function for every other cache."""
    from mlx_lm.models import qwen3

    global _original_attention
    if _original_attention is None:
        _original_attention = qwen3.scaled_dot_product_attention
    original = _original_attention

    def attention(queries, keys, values, cache, scale, mask, **kwargs):
        if handles(cache):
            return attend(cache, queries, scale, mask)
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, **kwargs)

    qwen3.scaled_dot_product_attention = attention


# -- detokenizer -------------------------------------------------------------------------

def detokenizer(tokenizer):
    """A fresh streaming detokenizer for mlx-lm's tokenizer wrapper whose pieces add up to
    exactly ``tokenizer.decode(ids)`` (mlx-lm's trims a leading space)."""
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    class Exact(BPEStreamingDetokenizer):
        def __init__(self, template: BPEStreamingDetokenizer) -> None:
            self.tokenmap = template.tokenmap  # shared, not rebuilt per reply
            self.reset()

        def _maybe_trim_space(self, current_text: str) -> str:
            return current_text

    return Exact(tokenizer._detokenizer)


# -- the Metal loop ----------------------------------------------------------------------

@contextlib.contextmanager
def generation_context(model) -> Iterator[mx.Stream | None]:
    """On Metal: the model's memory wired for the duration, and the dedicated stream to run
    each step on (mlx-lm's loop does both). Elsewhere (the CPU backend): nothing, None."""
    stream = decode_stream()
    if stream is None:
        yield None
        return
    from mlx_lm.generate import wired_limit

    # wired_limit warns with print(); stdout carries the reply, so the warning goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        limit = wired_limit(model, [stream])
        limit.__enter__()
    try:
        yield stream
    finally:
        limit.__exit__(None, None, None)


def decode_stream() -> mx.Stream | None:
    """mlx-lm's dedicated generation stream on Metal (where its batch runs too); None on
    the CPU backend."""
    if not (mx.metal.is_available() and mx.default_device().type == mx.DeviceType.gpu):
        return None
    from mlx_lm.generate import generation_stream

    return generation_stream


def on(stream: mx.Stream | None):
    """``with on(stream):`` runs on ``stream``, or where it is when None."""
    return contextlib.nullcontext() if stream is None else mx.stream(stream)
