"""What every bench runner starts with: options for the checkpoint and the result file, and
random-weight checkpoints converted with the recipes under test (offline, in a temp folder)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from qwen_mlx.quant.convert import convert
from qwen_mlx.models.recipes import parse_recipe
from qwen_mlx.testing import make_checkpoint

RESULTS = Path(__file__).parent / "results"


def parser(doc: str, result_name: str, recipes: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--shape", default="small", help="random checkpoint shape: tiny, small")
    ap.add_argument("--recipes", default=recipes, help="comma-separated conversion recipes")
    ap.add_argument("--out", type=Path, default=RESULTS / result_name)
    return ap


def converted(shape: str, recipes: str) -> dict[str, Path]:
    """{recipe: MLX folder} for one random checkpoint of ``shape``."""
    work = Path(tempfile.mkdtemp(prefix="qwen-mlx-bench-"))
    source = make_checkpoint(work / "hf", shape)
    folders = {}
    for name in recipes.split(","):
        folders[name] = work / name
        convert(source, folders[name], parse_recipe(name))
    return folders
