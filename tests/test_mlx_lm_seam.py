"""The contract with mlx-lm's internals: every private name qwen-mlx uses is present in the
installed mlx-lm, and a missing one fails at load in one line that names it."""

from __future__ import annotations

import contextlib
import io

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models import qwen3

from qwen_mlx import load
from qwen_mlx.models import mlx_lm_seam as seam
from qwen_mlx.errors import QwenMlxError


def test_the_installed_mlx_lm_has_everything_we_use():
    assert seam.missing() == []
    seam.check()


def test_a_missing_name_fails_at_load_in_one_line(monkeypatch, tiny_q4_f32):
    monkeypatch.delattr(qwen3, "scaled_dot_product_attention")
    with pytest.raises(QwenMlxError) as e:
        load(tiny_q4_f32)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("mlx-lm 0.32.") and message.endswith(
        "lacks mlx_lm.models.qwen3.scaled_dot_product_attention, which qwen-mlx relies on; "
        "install mlx-lm>=0.32.2,<0.33")


def test_the_attention_hook_routes_only_the_caches_it_handles(monkeypatch):
    """Other caches reach mlx-lm's own attention unchanged."""
    monkeypatch.setattr(seam, "_original_attention", None)
    monkeypatch.setattr(qwen3, "scaled_dot_product_attention",
                        lambda q, k, v, cache, scale, mask, **kw: ("mlx-lm", cache))
    seam.install_attention_hook(lambda c: c == "ours", lambda c, q, scale, mask: ("hook", c))
    seam.install_attention_hook(lambda c: c == "ours", lambda c, q, scale, mask: ("hook", c))
    attention = qwen3.scaled_dot_product_attention
    assert attention(None, None, None, "ours", 1.0, None) == ("hook", "ours")
    assert attention(None, None, None, "theirs", 1.0, None) == ("mlx-lm", "theirs")


def test_the_detokenizer_keeps_the_leading_space(tiny_model):
    ids = tiny_model.tokenizer.encode(" Hello world", add_special_tokens=False)
    detok = seam.detokenizer(tiny_model.tokenizer)
    pieces = []
    for token in ids:
        detok.add_token(token)
        pieces.append(detok.last_segment)
    detok.finalize()
    pieces.append(detok.last_segment)
    assert "".join(pieces) == " Hello world" == tiny_model.decode(ids)


def test_the_generation_context_is_a_no_op_on_the_cpu(tiny_model):
    if mx.metal.is_available():
        pytest.skip("Metal: the context wires memory and yields mlx-lm's stream")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), seam.generation_context(tiny_model.net) as stream:
        assert stream is None
        with seam.on(stream):
            assert np.array(mx.array([1, 2]) + 1).tolist() == [2, 3]
    assert out.getvalue() == ""
