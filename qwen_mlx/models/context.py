"""Context length: parsing "256k"/"1m", and YaRN rope scaling past the native 256k.

Qwen documents context extension with static YaRN: ``rope_scaling = {rope_type: yarn,
factor: F, original_max_position_embeddings: 262144}`` where F is the target over the native
length (4 for 1M). mlx-lm's Qwen3 honours that block (its ``initialize_rope`` builds a
``YarnRoPE``, attention factor included), so extending is a config override at load time;
the converted files are untouched. Static YaRN slightly changes short-text behaviour too,
which is why it is only switched on when a context beyond the native one is asked for.
"""

from __future__ import annotations

import re

from ..errors import QwenMlxError

SUFFIX = {"": 1, "k": 1024, "m": 1024 * 1024}  # 256k = 262,144 and 1m = 1,048,576, as Qwen


def parse_count(text: str) -> int | None:
    """'32k' -> 32768, '1m' -> 1048576, '40000' -> 40000; None if it is not a token count."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([km]?)\s*", str(text).lower())
    return int(float(m.group(1)) * SUFFIX[m.group(2)]) if m else None


def parse_context(text: str | int) -> int:
    """A context length: a token count of at least 1."""
    value = text if isinstance(text, int) else parse_count(text)
    if value is None:
        raise QwenMlxError(f"cannot read {text!r} as a context length (try 32k, 256k or 1m)")
    if value < 1:
        raise QwenMlxError("the context length must be at least 1 token")
    return value


def native_context(config: dict) -> int:
    """Positions the model was trained for, before any rope scaling."""
    from .shapes import positions

    scaling = config.get("rope_scaling") or {}
    return int(scaling.get("original_max_position_embeddings") or positions(config))


def rope_overrides(config: dict, context: int | None) -> dict:
    """Config keys to override so the model covers ``context`` positions: nothing within the
    native length, YaRN with factor context/native beyond it."""
    native = native_context(config)
    if context is None or context <= native:
        return {}
    factor = context / native
    return {"max_position_embeddings": context,
            "rope_scaling": {"rope_type": "yarn", "type": "yarn", "factor": factor,
                             "original_max_position_embeddings": native}}
