"""What a training run is: one dataclass, readable from YAML or TOML, where flags win.

The same keys work in a config file, as CLI flags (``max_seq_len`` <-> ``--max-seq-len``)
and as :func:`qwen_mlx.finetune.finetune` arguments. A checkpoint stores the config, so a
resumed run trains exactly as the interrupted one would have.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QwenMlxError
from ..storage.settings_file import read_settings

# --targets names -> the Qwen3 decoder layer's linear modules.
TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
           "down": "mlp.down_proj"}
DEFAULT_EPOCHS = 3
# Settings that change what is trained: a resumed run must not change them.
TRAINING_KEYS = ("rank", "alpha", "dropout", "layers", "targets", "lr", "warmup", "batch_size",
                 "grad_accum", "max_seq_len", "overlong", "iters", "epochs", "seed",
                 "train_on_all", "valid_split", "recipe")


@dataclass
class TrainConfig:
    model: str | None = None
    data: str | None = None
    output: str | None = None
    recipe: str = "q4"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    layers: int | None = None  # the last N layers; None: all
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    lr: float = 1e-4
    warmup: int | None = None  # steps; None: 5% of the run, at most 100
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 2048
    overlong: str = "truncate"  # or "drop"
    iters: int | None = None  # optimizer steps
    epochs: float | None = None
    grad_checkpoint: bool = False
    seed: int = 0
    train_on_all: bool = False
    valid_split: float = 0.1
    val_every: int = 50
    val_batches: int = 25
    save_every: int = 50

    @property
    def scale(self) -> float:
        """LoRA's output scale, alpha / rank (mlx-lm's adapter_config calls it ``scale``)."""
        return self.alpha / self.rank

    def check(self) -> "TrainConfig":
        """Refuse impossible settings in one line each."""
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise QwenMlxError(f"unknown --targets {','.join(bad) or '(none)'}: use some of "
                               f"{','.join(TARGETS)}")
        positive = {"rank": self.rank, "batch_size": self.batch_size,
                    "grad_accum": self.grad_accum, "max_seq_len": self.max_seq_len,
                    "val_every": self.val_every, "save_every": self.save_every}
        for key, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise QwenMlxError(f"--{key.replace('_', '-')} must be a positive whole number")
        if self.iters is not None and self.epochs is not None:
            raise QwenMlxError("give --iters or --epochs, not both")
        if (self.iters is not None and self.iters < 1) or (self.epochs is not None
                                                           and self.epochs <= 0):
            raise QwenMlxError("--iters and --epochs must be above 0")
        if self.layers is not None and self.layers < 1:
            raise QwenMlxError("--layers must be at least 1")
        if not 0 <= self.dropout < 1:
            raise QwenMlxError("--dropout must be at least 0 and below 1")
        if self.lr <= 0 or self.alpha <= 0:
            raise QwenMlxError("--lr and --alpha must be above 0")
        if self.overlong not in ("truncate", "drop"):
            raise QwenMlxError("--overlong must be truncate or drop")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise QwenMlxError(f"{where}: unknown key {unknown[0]!r} (known: "
                               f"{', '.join(sorted(known))})")
        if isinstance(values.get("targets"), str):
            values["targets"] = parse_targets(values["targets"])
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k], where) for k, v in values.items()})


def _coerce(key: str, value, hint, where: str):
    """Numbers as the field wants them: YAML reads ``lr: 1e-4`` as text (PyYAML wants a
    dot in a float), and a JSON file may say ``8.0`` for a rank."""
    kinds = typing.get_args(hint) or (hint,)
    if value is None:
        return None
    if bool in kinds:
        if isinstance(value, bool):
            return value
        raise QwenMlxError(f"{where}: {key} must be true or false (got {value!r})")
    if float not in kinds and int not in kinds:
        return value
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is not None and float in kinds:
        return number
    if number is not None and number.is_integer():
        return int(number)
    kind = "a number" if float in kinds else "a whole number"
    raise QwenMlxError(f"{where}: {key} must be {kind} (got {value!r})")


def parse_targets(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def read_config_file(path: str | Path) -> dict:
    """Settings from a .yaml/.yml, .toml or .json file, checked and typed."""
    values = read_settings(path, f"config {path}")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    checked = TrainConfig.from_dict(values, f"config {path}")  # names and types, with the file
    return {k: getattr(checked, k) for k in values}
