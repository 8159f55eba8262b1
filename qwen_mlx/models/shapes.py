"""The one description of a Qwen3 architecture's numbers: :class:`Shape` read from a config,
the tensors a checkpoint of it holds (:func:`expected_shapes`), the positions it covers, and
named configs (the real Qwen3-4B, tiny/small shapes for tests and CPU benchmarks). Numbers
only, no weights: checkpoint validation, the memory estimates, the random-weight checkpoints
of ``qwen_mlx.testing`` and ``qwen-mlx bench shape:qwen3-4b`` all read them here."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import QwenMlxError

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
    # Qwen3-0.6B's (and Qwen3-Embedding-0.6B's) numbers: the reference benchmarks' size
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, max_window_layers=28,
                 intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128),
    "4b": {},
}
ALIASES = {"qwen3-4b": "4b", "qwen3-0.6b": "0.6b"}


def config_for(shape: str) -> dict:
    """The config.json of a named shape (qwen3-4b, 4b, qwen3-0.6b, 0.6b, small, tiny)."""
    key = ALIASES.get(shape, shape)
    if key not in SHAPES:
        raise QwenMlxError(f"unknown shape {shape!r}: use one of "
                           f"{', '.join(['qwen3-4b', *[k for k in SHAPES if k != '4b']])}")
    return {**BASE_CONFIG, **SHAPES[key]}


# Qwen3's positions when a config does not say (the hybrid Qwen3-4B's value).
FALLBACK_POSITIONS = 40960


def positions(config: dict) -> int:
    """Positions a config covers (with its rope scaling, if any)."""
    return int(config.get("max_position_embeddings") or FALLBACK_POSITIONS)


@dataclass(frozen=True)
class Shape:
    """The numbers of a Qwen3 config that memory depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    positions: int

    @classmethod
    def of(cls, config: dict) -> "Shape":
        return cls(config["num_hidden_layers"], config["hidden_size"],
                   config["intermediate_size"], config["num_attention_heads"],
                   config["num_key_value_heads"], config.get("head_dim") or
                   config["hidden_size"] // config["num_attention_heads"],
                   config["vocab_size"], positions(config))


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a Hugging Face Qwen3 checkpoint must hold, with the shape its config implies."""
    H, I = config["hidden_size"], config["intermediate_size"]
    q, kv, d = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], H), "model.norm.weight": (H,)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (H,),
            p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (q * d, H),
            p + "self_attn.k_proj.weight": (kv * d, H),
            p + "self_attn.v_proj.weight": (kv * d, H),
            p + "self_attn.o_proj.weight": (H, q * d),
            p + "self_attn.q_norm.weight": (d,),
            p + "self_attn.k_norm.weight": (d,),
            p + "mlp.gate_proj.weight": (I, H),
            p + "mlp.up_proj.weight": (I, H),
            p + "mlp.down_proj.weight": (H, I),
        })
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config["vocab_size"], H)
    return shapes
