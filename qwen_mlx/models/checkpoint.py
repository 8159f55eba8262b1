"""Read and validate a Qwen3 checkpoint folder without loading its weights.

Everything here works from config.json and the safetensors headers (a few kilobytes), so a
bad download is reported in milliseconds, before a conversion spends minutes on it. Weights
are read later, one shard at a time, by :mod:`qwen_mlx.quant.convert`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import QwenMlxError
from ..storage.safetensors import TensorInfo, read_header
from .shapes import expected_shapes

ARCHITECTURE = "Qwen3ForCausalLM"
# Qwen3-Embedding: the same network without the output layer, saved under the names of
# transformers' Qwen3Model ("layers.0...", not "model.layers.0...")
EMBEDDING = "Qwen3Model"
# sentence-transformers' files beside an embedding model, kept by a conversion
SENTENCE_FILES = ("modules.json", "config_sentence_transformers.json",
                  "sentence_bert_config.json", "1_Pooling/config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
_CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps")
# Buffers some exporters add; they are recomputed by the model and never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise QwenMlxError(f"{folder} has no config.json: not a model folder")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QwenMlxError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        raise QwenMlxError(f"{path} is not a JSON object")
    return config


def check_tokenizer(folder: Path, vocab_size: int | None = None, chat: bool = True) -> None:
    """The tokenizer and the chat template must load, and fit the model's ``vocab_size``
    output rows: a conversion copies them as they are, and a broken or missing one made
    every later command on the converted model fail (a missing template only at generate;
    rows fewer than the tokens generated ids the tokenizer cannot read, silently). A model
    that does not chat (``chat`` false: an embedding model) needs no template."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    from ..errors import one_line

    path = folder / "tokenizer.json"
    try:
        tokens = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # noqa: BLE001 - the tokenizers library's own words, in one line
        raise QwenMlxError(f"{path} cannot be loaded: {one_line(str(e))}") from None
    if vocab_size is not None and vocab_size < tokens:
        raise QwenMlxError(f"{folder}/config.json has vocab_size {vocab_size:,}, fewer than "
                           f"the {tokens:,} tokens of its tokenizer: not a matching "
                           "checkpoint")
    templates = []
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise QwenMlxError(f"cannot read {config}: {e}") from None
        if isinstance(data, dict) and isinstance(data.get("chat_template"), str):
            templates.append((config, data["chat_template"]))
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            templates.append((jinja, jinja.read_text()))
        except (OSError, UnicodeDecodeError) as e:
            raise QwenMlxError(f"cannot read {jinja}: {e}") from None
    if not templates and chat:
        raise QwenMlxError(f"{folder} has no chat template (tokenizer_config.json with a "
                           "chat_template, or chat_template.jinja): copy the model's own "
                           "tokenizer_config.json into it")
    for where, text in templates:
        try:
            ImmutableSandboxedEnvironment().parse(text)
        except TemplateSyntaxError as e:
            raise QwenMlxError(f"the chat template in {where} is broken: {e.message} "
                               f"(line {e.lineno})") from None


def is_embedding(config: dict) -> bool:
    """An embedding model (Qwen3-Embedding): it has no output layer of its own."""
    return EMBEDDING in (config.get("architectures") or [])


def check_architecture(config: dict, folder: Path) -> None:
    arch = config.get("architectures") or [config.get("model_type", "unknown")]
    if ARCHITECTURE not in arch and EMBEDDING not in arch and config.get("model_type") != "qwen3":
        raise QwenMlxError(f"{folder} is a {', '.join(map(str, arch))} model; "
                           f"qwen-mlx supports {ARCHITECTURE} and {EMBEDDING} only")
    missing = [k for k in _CONFIG_KEYS if not isinstance(config.get(k), (int, float))]
    if missing:
        raise QwenMlxError(f"{folder}/config.json lacks {', '.join(missing)}")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards of a folder, in index order when there is an index."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise QwenMlxError(f"cannot read {index}: {e}") from None
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise QwenMlxError(f"{folder} is incomplete: missing {', '.join(missing)}")
        return files
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise QwenMlxError(f"{folder} has no model*.safetensors weights")
    return files


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())


@dataclass
class Checkpoint:
    """A validated Hugging Face-format Qwen3 checkpoint: config and tensor table, no weights."""

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]

    @property
    def files(self) -> list[Path]:
        return list(dict.fromkeys(t.file for t in self.tensors.values()))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @classmethod
    def open(cls, folder: Path) -> "Checkpoint":
        folder = Path(folder)
        if not folder.is_dir():
            raise QwenMlxError(f"model folder {folder} does not exist")
        config = read_config(folder)
        check_architecture(config, folder)
        if "quantization" in config:
            raise QwenMlxError(f"{folder} is already converted to MLX; load it directly")
        if not has_tokenizer(folder):
            raise QwenMlxError(f"{folder} has no tokenizer (tokenizer.json is missing)")
        check_tokenizer(folder, config.get("vocab_size"), chat=not is_embedding(config))
        found: dict[str, TensorInfo] = {}
        for f in weight_files(folder):
            found.update(read_header(f)[0])
        if is_embedding(config):  # Qwen3Model's names, and no output layer
            found = {(n if n.startswith("model.") else "model." + n):
                     (i if i.name.startswith("model.") else
                      replace(i, name="model." + i.name, stored=i.name))
                     for n, i in found.items()}
            config = {**config, "tie_word_embeddings": True}
        expected = expected_shapes(config)
        for name, info in found.items():
            if name not in expected and not name.endswith(_IGNORED_SUFFIXES) and not (
                    name == "lm_head.weight" and config.get("tie_word_embeddings")):
                raise QwenMlxError(f"{folder}: unexpected tensor {name} for a Qwen3 checkpoint")
        tensors = {}
        for name, shape in expected.items():
            info = found.get(name)
            if info is None:
                raise QwenMlxError(f"{folder}: tensor {name} is missing")
            if info.shape != shape:
                raise QwenMlxError(f"{folder}: tensor {name} has shape {list(info.shape)}, "
                                   f"config implies {list(shape)}")
            tensors[name] = info
        return cls(folder, config, tensors)


def is_mlx_folder(folder: Path) -> bool:
    """True for a folder already in MLX layout (ours or mlx-lm's), False for Hugging Face layout."""
    config = read_config(folder)
    if "quantization" in config:
        return True
    files = sorted(Path(folder).glob("model*.safetensors"))
    return bool(files) and read_header(files[0])[1].get("format") == "mlx"
