"""An MLX folder (plus optional LoRA adapters) -> model, tokenizer and generation defaults.

The model class, weight loading and tokenizer are mlx-lm's, so anything ``mlx_lm.load``
reads loads here too. What we add is the compute type: on the CPU backend (Linux, CI)
bfloat16 is emulated, several times slower than float32 (bench/README.md has the figures),
so float parameters are cast to float32 there. On Metal the stored types are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .checkpoint import check_architecture, read_config
from ..errors import QwenMlxError, one_line


def compute_dtype(choice: str = "auto") -> mx.Dtype | None:
    """The float type to run in: None keeps what the files hold."""
    if choice == "auto":
        return mx.float32 if mx.default_device().type == mx.DeviceType.cpu else None
    if choice == "stored":
        return None
    try:
        return getattr(mx, choice)
    except AttributeError:
        raise QwenMlxError(f"unknown compute dtype {choice!r}") from None


def load_weights(folder: Path, *, adapter: Path | None = None, dtype: str = "auto",
                 overrides: dict | None = None, lazy: bool = False):
    """(mlx-lm model, config) of an MLX folder, with adapters and in the compute type;
    ``overrides`` replace config keys (rope scaling for a longer context); ``lazy`` reads
    no weight until it is used (a recipe that replaces layers one by one)."""
    from mlx_lm.utils import load_adapters, load_model

    from . import mlx_lm_seam

    mlx_lm_seam.check()  # an mlx-lm that moved what we rely on fails here, in one line
    folder = Path(folder)
    config = read_config(folder)
    check_architecture(config, folder)
    try:
        model, config = load_model(folder, lazy=lazy, model_config=overrides or None)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise QwenMlxError(f"cannot load {folder} ({describe(config)}): {one_line(str(e))}") \
            from None
    if adapter is not None:
        adapter = Path(adapter)
        check_adapter(adapter)
        try:
            model = load_adapters(model, str(adapter))
        except (FileNotFoundError, ValueError, KeyError) as e:
            base = base_model_of(adapter)
            origin = f"trained on {base}" if base else "trained on another model?"
            raise QwenMlxError(f"cannot load adapter {adapter} ({origin}) onto {folder} "
                               f"({describe(config)}): {one_line(str(e))}") from None
        model.eval()
    cast = compute_dtype(dtype)
    if cast is not None:
        model.set_dtype(cast)
        if not lazy:
            mx.eval(model.parameters())
    return model, config


def check_adapter(adapter: Path) -> None:
    """An adapter folder, checked before any model is resolved (a folder without one once
    gave a hub error about the default model instead)."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise QwenMlxError(f"adapter folder {adapter} does not exist")
    if not (adapter / "adapter_config.json").is_file():
        raise QwenMlxError(f"{adapter} holds no adapter (no adapter_config.json)")


def base_model_of(adapter: Path) -> str | None:
    """The model an adapter was trained on, as `qwen-mlx finetune` recorded it."""
    try:
        return json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model")
    except (OSError, ValueError, AttributeError):
        return None  # loading the adapter reports what is wrong with it


def describe(config: dict) -> str:
    """A folder's model in a few words, for errors: 'qwen3, 2 layers of width 64, 4-bit'."""
    quant = config.get("quantization") or {}
    bits = f", {quant['bits']}-bit" if isinstance(quant, dict) and quant.get("bits") else ""
    return (f"{config.get('model_type', 'unknown type')}, {config.get('num_hidden_layers', '?')}"
            f" layers of width {config.get('hidden_size', '?')}{bits}")


def load_tokenizer(folder: Path, eos_ids: list[int]):
    """mlx-lm's tokenizer wrapper (streaming detokenizer, chat template) stopping at every
    eos id (:attr:`qwen_mlx.models.spec.ModelSpec.eos_ids`)."""
    from mlx_lm.utils import load_tokenizer as mlx_lm_tokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise QwenMlxError(f"{folder} has no tokenizer (tokenizer.json is missing)")
    try:
        return mlx_lm_tokenizer(folder, eos_token_ids=eos_ids)
    except (OSError, ValueError) as e:
        raise QwenMlxError(f"cannot load the tokenizer of {folder}: {e}") from None


def dtype_of(net: nn.Module) -> str:
    """The type a loaded model computes in ("float32", "bfloat16"): its final norm's."""
    return str(net.model.norm.weight.dtype).removeprefix("mlx.core.")


def param_bytes(model: nn.Module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))
