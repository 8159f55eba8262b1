"""The model card (README.md) of a converted folder, in one format owned here: a header and a
table written by the conversion, then named sections ("## Quality") that whoever measured or
changed the model sets, each replacing only its own section or table row."""

from __future__ import annotations

import re
from pathlib import Path

from .. import __version__
from ..storage.atomic import atomic_path

CARD = "README.md"


def render(folder: Path, source: str, recipe_name: str, recipe_text: str, parameters: int,
           bytes_on_disk: int) -> str:
    """The card a conversion writes: ``recipe_text`` says what the recipe does."""
    return f"""---
library_name: mlx
pipeline_tag: text-generation
base_model: {source}
tags: [mlx, qwen3, qwen-mlx]
---
# {Path(source).name} ({recipe_name}, MLX)

Converted by qwen-mlx {__version__} from `{source}`.

| | |
|---|---|
| recipe | `{recipe_name}`: {recipe_text} |
| parameters | {parameters:,} |
| size on disk | {bytes_on_disk / 1e9:.3f} GB |
| bits per weight | {bytes_on_disk * 8 / parameters:.3f} |

Use it with `qwen-mlx chat {folder}` or `mlx_lm.load("{folder}")`.
"""


def _replace(folder: Path, change) -> None:
    card = Path(folder) / CARD
    if not card.is_file():
        return
    text = change(card.read_text())
    with atomic_path(card) as tmp:
        tmp.write_text(text)


def set_section(folder: Path, title: str, body: str) -> None:
    """Set the card's ``## title`` section to ``body`` (added at the end, or replacing the
    one there); the file is replaced whole. A folder without a card is left as it is."""
    def change(text: str) -> str:
        head, _, rest = text.partition(f"\n## {title}\n")
        after = re.search(r"\n## ", rest)
        tail = rest[after.start():] if rest and after else ""
        return f"{head.rstrip(chr(10))}\n\n## {title}\n\n{body.strip()}\n{tail}"
    _replace(folder, change)


def set_recipe(folder: Path, recipe_name: str, recipe_text: str) -> None:
    """Name another recipe in the title and the table (a distillation keeps the student's
    card and says what it did)."""
    def change(text: str) -> str:
        text = re.sub(r"^(# .*) \([^()]*, MLX\)$", lambda m: f"{m.group(1)} ({recipe_name}, MLX)",
                      text, count=1, flags=re.M)
        return re.sub(r"^\| recipe \| .* \|$", lambda _: f"| recipe | `{recipe_name}`: "
                      f"{recipe_text} |", text, count=1, flags=re.M)
    _replace(folder, change)
