"""What a model is, read once from its files: the object every command resolves to.

:func:`qwen_mlx.hub.resolver.resolve` turns what the user typed into a :class:`ModelSpec`; load,
convert, plan, fuse, bench, finetune and serve take it from there. Facts that used to be
worked out in several places live here and nowhere else: the end-of-sequence ids, the
sampling defaults of generation_config.json, the positions the model covers, the recipe a
folder was converted with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..models.checkpoint import read_config
from ..models.recipes import DTYPES, Recipe
from ..models.shapes import positions

def read_generation_config(folder: Path | None) -> dict:
    """generation_config.json, or {} when there is none (or it cannot be read: the defaults
    then are ours, which a damaged file should not stop)."""
    path = None if folder is None else Path(folder) / "generation_config.json"
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recipe_of(folder: Path, config: dict | None = None) -> Recipe | None:
    """The recipe an MLX folder was converted with: the name qwen-mlx recorded (q4,
    mix-1.8gb, q4-dwq), else a uniform quantization config.json describes; None for a
    Hugging Face folder, or a mixed one from elsewhere (its default bits are not its
    recipe: a mix at q4's size once read as "q3")."""
    from ..models.provenance import PROVENANCE
    from ..models.recipes import parse_recipe

    try:
        name = json.loads((Path(folder) / PROVENANCE).read_text()).get("recipe")
        if isinstance(name, str):
            return parse_recipe(name)
    except (OSError, ValueError, AttributeError):
        pass
    config = read_config(Path(folder)) if config is None else config
    quant = config.get("quantization")
    dtype = config.get("torch_dtype", "bfloat16")
    dtype = dtype if dtype in DTYPES else "bfloat16"
    if isinstance(quant, dict) and quant.get("bits"):
        if any(isinstance(v, dict) for v in quant.values()):
            return None
        return Recipe(quant["bits"], quant.get("group_size", 64), dtype)
    return None


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: where it is (``folder`` None while it is only planned: not
    converted or downloaded yet), its config and generation config, and the recipe its
    weights have (or will have)."""

    name: str  # what to call it: the repo id, or the folder
    config: dict
    recipe: Recipe | None
    folder: Path | None = None
    generation_config: dict = field(default_factory=dict)

    @classmethod
    def of_folder(cls, folder: Path, name: str | None = None,
                  recipe: Recipe | None = None) -> "ModelSpec":
        """Read an MLX folder's facts (config.json, generation_config.json)."""
        config = read_config(folder)
        return cls(name or str(folder), config, recipe_of(folder, config) or recipe,
                   Path(folder),
                   read_generation_config(folder))

    @property
    def eos_ids(self) -> list[int]:
        """Every end-of-sequence id: generation_config's list (151645 and 151643 for Qwen3),
        else config.json's."""
        ids = self.generation_config.get("eos_token_id", self.config.get("eos_token_id"))
        if ids is None:
            return []
        return [ids] if isinstance(ids, int) else list(ids)

    @property
    def positions(self) -> int:
        return positions(self.config)

    @property
    def head_dim(self) -> int:
        c = self.config
        return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])

    def sampling_defaults(self):
        """The model's recommended sampling (generation_config.json), ours where it has none."""
        from ..engine.sampling import SamplingParams

        return SamplingParams.from_generation_config(self.generation_config)
