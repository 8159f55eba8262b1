"""What a converted folder records about its making, beside its weights: where it came
from (qwen-mlx.json: source, recipe, the source's fingerprint), how good it is
(quality.json), and which of the source's side files it carries. The cache, `models`, `eval`
and the distillation all read these; only a conversion writes them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import __version__
from .checkpoint import TOKENIZER_FILES

PROVENANCE = "qwen-mlx.json"
QUALITY = "quality.json"  # written after a measurement (qwen_mlx.evaluate)
# What a conversion copies from its source as it is, besides config.json and the weights.
SIDE_FILES = TOKENIZER_FILES + ("generation_config.json", "LICENSE")


def record(source: Path, source_name: str, recipe_name: str) -> dict:
    """What `qwen-mlx models` shows and the cache checks: where a conversion came from."""
    real = Path(source).resolve()
    return {"source": source_name, "source_path": str(real),
            # a hub download sits in the Hugging Face cache at .../snapshots/<revision>
            "revision": real.name if real.parent.name == "snapshots" else None,
            "recipe": recipe_name, "qwen_mlx_version": __version__,
            "converted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source_fingerprint": fingerprint(real)}


def read(folder: Path) -> dict | None:
    """The folder's qwen-mlx.json, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(folder) / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fingerprint(folder: Path) -> list:
    """Names, sizes and modification times of every source file a conversion reads or
    copies (weights, config, tokenizer, template): changes when any of them changes, so a
    fixed tokenizer is converted anew rather than served stale from the cache."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) + [
        folder / name for name in ("config.json", "model.safetensors.index.json", *SIDE_FILES)
        if (folder / name).is_file()]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def source_of(folder: Path) -> Path | None:
    """The checkpoint a qwen-mlx conversion was made from, when it is still there."""
    path = (read(folder) or {}).get("source_path")
    return Path(path) if path and Path(path).is_dir() else None
