"""LoRA layers on the model, and adapters on disk in mlx-lm's format.

The layers are mlx-lm's (``LoRALinear`` over ``nn.Linear`` or ``nn.QuantizedLinear``, the
latter being QLoRA), placed with ``linear_to_lora_layers``; the files are what
``mlx_lm.load(model, adapter_path=...)`` reads: ``adapters.safetensors`` with the
``lora_a``/``lora_b`` tensors and ``adapter_config.json`` with ``num_layers`` and
``lora_parameters`` (rank, scale, dropout, keys). Our own keys ride along in the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .. import __version__
from ..storage.atomic import atomic_path, atomic_write_text
from ..storage import safetensors
from .config import TARGETS, TrainConfig

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"


def adapter_config(config: TrainConfig, num_layers: int, base_model: str) -> dict:
    layers = config.layers or num_layers
    return {
        "fine_tune_type": "lora",
        "num_layers": min(layers, num_layers),
        "lora_parameters": {"rank": config.rank, "scale": config.scale,
                            "dropout": config.dropout,
                            "keys": [TARGETS[t] for t in config.targets]},
        "alpha": config.alpha,
        "base_model": base_model,
        "qwen_mlx_version": __version__,
        "training": config.to_dict(),
    }


def add_lora(model: nn.Module, settings: dict) -> int:
    """Freeze the model and put LoRA layers where ``settings`` (an adapter config) says;
    return the number of trainable parameters."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    linear_to_lora_layers(model, settings["num_layers"], settings["lora_parameters"])
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapter(folder: Path, model: nn.Module, settings: dict) -> None:
    """Write the adapter (weights first, then the config that makes it loadable)."""
    folder = Path(folder)
    with atomic_path(folder / ADAPTER_FILE) as tmp:
        safetensors.save(str(tmp), adapter_weights(model))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
