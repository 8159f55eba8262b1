"""qwen-mlx's own folder: converted models, sessions, work folders of long conversions."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$QWEN_MLX_HOME``, or ``~/.cache/qwen-mlx``."""
    return Path(os.environ.get("QWEN_MLX_HOME") or Path.home() / ".cache" / "qwen-mlx")
