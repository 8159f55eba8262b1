"""An MLX folder (plus optional LoRA adapters) -> model, tokenizer and generation defaults.

The model class, weight loading and tokenizer are mlx-lm's, so anything ``mlx_lm.load``
reads loads here too. What we add is the compute type: on the CPU backend (Linux, CI)
bfloat16 is emulated, several times slower than float32 (bench/README.md has the figures),
so float parameters are cast to float32 there. On Metal the stored types are kept.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
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

    from . import backend, mlx_lm_seam

    mlx_lm_seam.check()  # an mlx-lm that moved what we rely on fails here, in one line
    backend.warm_up()  # before any signal handler matters (see backend.py)
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
    eos id (:attr:`qwen_mlx.models.spec.ModelSpec.eos_ids`).

    Loading one takes about a second (Python parses the 11 MB tokenizer.json, then
    transformers builds it) and every folder of one model family holds the same files, so
    a tokenizer is shared by content: a folder whose tokenizer files equal those of a
    tokenizer still in use, or of the last one loaded, gets that one (about 15 ms of
    hashing). Nothing we run changes a loaded tokenizer; each reply makes its own
    streaming detokenizer (``mlx_lm_seam.detokenizer``)."""
    from mlx_lm.utils import load_tokenizer as mlx_lm_tokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise QwenMlxError(f"{folder} has no tokenizer (tokenizer.json is missing)")
    try:
        key = _tokenizer_key(folder, eos_ids)
        with _TOKENIZERS_LOCK:
            shared = _TOKENIZERS.get(key)
        if shared is not None:
            return shared
        tokenizer = mlx_lm_tokenizer(folder, eos_token_ids=eos_ids)
    except (OSError, ValueError) as e:
        raise QwenMlxError(f"cannot load the tokenizer of {folder}: {e}") from None
    with _TOKENIZERS_LOCK:
        _TOKENIZERS[key] = tokenizer
        _LAST_TOKENIZER[:] = [tokenizer]  # kept for the next load; the rest live while used
    return tokenizer


# The files mlx-lm's tokenizer loading reads besides config.json (its download patterns).
TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                             "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                             "chat_template.jinja", "chat_template.json", "tokenizer.model",
                             "tiktoken.model"})
_TOKENIZERS: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
_LAST_TOKENIZER: list = []
_TOKENIZERS_LOCK = threading.Lock()


def _tokenizer_key(folder: Path, eos_ids: list[int]) -> str:
    """A digest of everything that shapes a folder's tokenizer: its tokenizer files, the
    eos ids, and from config.json the model type (mlx-lm's per-model tokenizer defaults), or
    all of it when tokenizer_config.json names no tokenizer class (transformers then reads
    config.json to pick one). A converted folder's other config keys (quantization) do not
    change its tokenizer."""
    digest = hashlib.blake2b(repr(sorted(eos_ids)).encode(), digest_size=20)
    for path in sorted(folder.iterdir()):
        if path.name in TOKENIZER_FILES or path.suffix in (".py", ".tiktoken"):
            data = path.read_bytes()
            digest.update(f"\0{path.name}\0{len(data)}\0".encode())
            digest.update(data)
    config = (folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b""
    try:
        named = "tokenizer_class" in json.loads(
            (folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        model_type = json.loads(config or b"{}").get("model_type")
    except (OSError, ValueError, AttributeError):
        named, model_type = False, None
    digest.update(b"\0config\0" + (repr(model_type).encode() if named else config))
    return digest.hexdigest()


def dtype_of(net: nn.Module) -> str:
    """The type a loaded model computes in ("float32", "bfloat16"): its final norm's."""
    return str(net.model.norm.weight.dtype).removeprefix("mlx.core.")


def param_bytes(model: nn.Module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))
