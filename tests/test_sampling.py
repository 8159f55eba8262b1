"""The sampler keeps exactly the tokens its settings allow."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

from qwen_mlx.engine.sampling import SamplingParams, make_sampler
from qwen_mlx.errors import QwenMlxError

# Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1, hidden among 100 ids.
PROBS = {7: 0.5, 42: 0.3, 3: 0.15, 99: 0.05}


def logits() -> mx.array:
    values = [-1e9] * 100
    for i, p in PROBS.items():
        values[i] = math.log(p)
    return mx.array([values])


def draws(n=400, **settings) -> dict[int, int]:
    mx.random.seed(1)
    sample = make_sampler(SamplingParams(**settings))
    counts: dict[int, int] = {}
    for _ in range(n):
        t = sample(logits()).item()
        counts[t] = counts.get(t, 0) + 1
    return counts


def test_greedy_is_argmax():
    assert make_sampler(SamplingParams(temperature=0))(logits()).item() == 7


def test_temperature_one_follows_the_distribution():
    counts = draws(1000, temperature=1.0, top_p=1.0, top_k=0)
    assert set(counts) == set(PROBS)
    for token, p in PROBS.items():
        assert abs(counts[token] / 1000 - p) < 0.05


def test_top_k_keeps_the_k_likeliest():
    assert set(draws(temperature=1.0, top_p=1.0, top_k=2)) == {7, 42}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    assert set(draws(temperature=1.0, top_p=0.8, top_k=0)) == {7, 42}  # 0.5 + 0.3 reaches 0.8
    assert set(draws(temperature=1.0, top_p=0.81, top_k=0)) == {7, 42, 3}


def test_top_p_is_judged_after_top_k_renormalizes():
    # Within the top 3 (mass 0.95) the first two hold 0.8 / 0.95 = 0.84 >= 0.82.
    assert set(draws(temperature=1.0, top_p=0.82, top_k=3)) == {7, 42}


def test_temperature_applies_before_top_p():
    # At temperature 0.5 probabilities square and renormalize: 7 alone holds 0.69.
    assert set(draws(temperature=0.5, top_p=0.65, top_k=0)) == {7}


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    assert set(draws(temperature=1.0, top_p=1.0, top_k=0, min_p=0.25)) == {7, 42, 3}
    assert set(draws(temperature=1.0, top_p=1.0, top_k=0, min_p=0.5)) == {7, 42}


@pytest.mark.parametrize("settings, message", [
    (dict(temperature=-1), "temperature must be >= 0"),
    (dict(top_p=0), "top_p must be in (0, 1]"),
    (dict(top_k=-2), "top_k must be >= 0 (0 turns it off)"),
    (dict(max_tokens=0), "max_tokens must be >= 1"),
])
def test_bad_settings(settings, message):
    with pytest.raises(QwenMlxError) as e:
        SamplingParams(**settings)
    assert str(e.value) == message
