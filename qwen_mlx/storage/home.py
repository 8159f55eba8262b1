"""qwen-mlx's own folder: converted models, sessions, work folders of long conversions."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$QWEN_MLX_HOME``, or ``~/.cache/qwen-mlx``."""
    return Path(os.environ.get("QWEN_MLX_HOME") or Path.home() / ".cache" / "qwen-mlx")


def kv_folder() -> Path:
    """Where prompt caches are kept on disk: ``$QWEN_MLX_KV_DISK``, or ``home()/kv``."""
    return Path(os.environ.get("QWEN_MLX_KV_DISK") or home() / "kv")
