"""qwen-mlx: Qwen3-4B as a first-class local model on Apple Silicon, with MLX."""

__version__ = "0.1.0"

from importlib import import_module  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from .errors import QwenMlxError  # noqa: E402
from .recipes import Recipe, parse_recipe  # noqa: E402

if TYPE_CHECKING:
    from .engine import Piece, PromptCache, SamplingParams, Stats
    from .model import Completion, Model

# The engine imports mlx-lm, which imports transformers (over a second): loaded on first use,
# so `qwen-mlx --help` and `import qwen_mlx` stay fast.
_LAZY = {"Piece": "engine", "PromptCache": "engine", "SamplingParams": "engine",
         "Stats": "engine", "Completion": "model", "Model": "model"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(model: str | Path | None = None, *, recipe: str | Recipe = "q4",
         adapter: str | Path | None = None, dtype: str = "auto", convert=None) -> "Model":
    """Load a model by alias, hub repo id or folder; convert it into the cache if needed.

    ``dtype`` is the compute type: "auto" (float32 on the CPU backend, the stored type on
    Metal), "stored", or an mlx type name. ``convert`` replaces the conversion step (the CLI
    passes one that draws a progress bar); see :func:`qwen_mlx.hub.resolve`.
    """
    from . import hub, loader
    from .model import Model

    recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    folder = hub.resolve(None if model is None else str(model), recipe, convert)
    adapter = None if adapter is None else Path(adapter)
    net, tokenizer, config = loader.load_folder(folder, adapter=adapter, dtype=dtype)
    return Model(net, tokenizer, config, folder, loader.eos_ids(folder, config), adapter)


def generate(prompt, model: "Model | str | None" = None, **kwargs) -> "Completion":
    """One-shot convenience: load (if given a name) and generate."""
    from .model import Model

    model = model if isinstance(model, Model) else load(model)
    return model.generate(prompt, **kwargs)


__all__ = ["Completion", "Model", "Piece", "PromptCache", "QwenMlxError", "Recipe",
           "SamplingParams", "Stats", "generate", "load", "parse_recipe"]
