"""Qwen3 architectures by name: the real Qwen3-4B, and tiny/small shapes for tests and CPU
benchmarks. Numbers only (no weights): the memory planner, the random-weight checkpoints of
``qwen_mlx.testing`` and ``qwen-mlx bench shape:qwen3-4b`` build on them."""

from __future__ import annotations

from .errors import QwenMlxError

# Qwen3-4B's architecture; the small shapes shrink the width and depth only.
BASE_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 5000000,
    "sliding_window": None, "use_sliding_window": False, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 151936,
    "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "max_window_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128,
}
SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, max_window_layers=2, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "small": dict(hidden_size=256, num_hidden_layers=4, max_window_layers=4,
                  intermediate_size=768, num_attention_heads=8, num_key_value_heads=2,
                  head_dim=32),
    "4b": {},
}
ALIASES = {"qwen3-4b": "4b"}


def config_for(shape: str) -> dict:
    """The config.json of a named shape (qwen3-4b, 4b, small, tiny)."""
    key = ALIASES.get(shape, shape)
    if key not in SHAPES:
        raise QwenMlxError(f"unknown shape {shape!r}: use one of "
                           f"{', '.join(['qwen3-4b', *[k for k in SHAPES if k != '4b']])}")
    return {**BASE_CONFIG, **SHAPES[key]}
