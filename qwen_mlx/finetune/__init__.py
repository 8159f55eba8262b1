"""LoRA and QLoRA fine-tuning, and fusing adapters into a model.

``finetune(model, data, output, **settings)`` trains; :func:`prepare` and :class:`Run` give
the same run step by step (the CLI draws its progress bar from them); ``fuse`` merges an
adapter into the weights and checks the result. Imports the public API and every layer below
it, never another verb.
"""

from importlib import import_module

from .config import TARGETS, TrainConfig

# The run imports the engine (and through it mlx-lm and transformers, over a second): loaded
# on first use, so `qwen-mlx --help` stays fast.
_LAZY = {"Run": "run", "Stopped": "run", "finetune": "run", "prepare": "run", "fuse": "fuse"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TARGETS", "Run", "Stopped", "TrainConfig", "finetune", "fuse", "prepare"]
