"""LoRA and QLoRA fine-tuning, and fusing adapters into a model.

``finetune(model, data, output, **settings)`` trains; :func:`prepare` and :class:`Run` give
the same run step by step (the CLI draws its progress bar from them); ``fuse`` merges an
adapter into the weights and checks the result.
"""

from .config import TARGETS, TrainConfig
from .run import Run, Stopped, finetune, prepare

__all__ = ["TARGETS", "Run", "Stopped", "TrainConfig", "finetune", "prepare"]
