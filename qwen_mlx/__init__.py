"""qwen-mlx: Qwen3-4B as a first-class local model on Apple Silicon, with MLX."""

__version__ = "0.1.0"

from importlib import import_module  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from .errors import QwenMlxError  # noqa: E402
from .models.recipes import Recipe, parse_recipe  # noqa: E402

if TYPE_CHECKING:
    from .engine import Constraint, Piece, PromptCache, Request, SamplingParams, Stats
    from .model import ChatResult, Completion, Model
    from .tools import FunctionTool, McpServers, Toolbox

# The engine imports mlx-lm, which imports transformers (over a second): loaded on first use,
# so `qwen-mlx --help` and `import qwen_mlx` stay fast.
_LAZY = {"Constraint": "engine", "Piece": "engine", "PromptCache": "engine", "Request": "engine",
         "SamplingParams": "engine",
         "Stats": "engine", "ChatResult": "model", "Completion": "model", "Model": "model",
         "FunctionTool": "tools", "McpServers": "tools", "Toolbox": "tools"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(model: str | Path | None = None, *, recipe: str | Recipe = "q4",
         adapter: str | Path | None = None, dtype: str = "auto", convert=None,
         context: int | str | None = None, kv_bits: int | None = None, kv_group_size: int = 64,
         kv_start: int = 0, prefill_step: int = 512, memory: str | int | None = None,
         force: bool = False, draft: "Model | None" = None, kv_disk: str | Path | None = None,
         kv_disk_size: int | str | None = None) -> "Model":
    """Load a model by alias, hub repo id or folder; convert it into the cache if needed.

    ``dtype`` is the compute type: "auto" (float32 on the CPU backend, the stored type on
    Metal), "stored", or an mlx type name. ``convert`` replaces the conversion step (the CLI
    passes one that draws a progress bar); see :func:`qwen_mlx.hub.resolver.resolve`.

    Memory is planned before anything is loaded (see :mod:`qwen_mlx.engine.memory_plan`):
    ``context`` ("32k", "1m", a number; past the native 256k this turns on YaRN) is refused
    with a suggestion if it will not fit, unless ``force``; without it, the context is capped
    at what fits. ``kv_bits`` 8 or 4 quantizes the KV cache (``kv_group_size`` must divide the
    head size; the first ``kv_start`` tokens stay full precision). ``memory`` plans for less
    RAM than the machine has ("12GB"). A ``draft`` model (loaded first, for speculative
    decoding) is counted in the plan: its weights, and its cache beside every cache.
    ``kv_disk`` (a folder) keeps prompt caches there too, up to ``kv_disk_size`` bytes
    (by default 32 GB, or a tenth of the volume's free room if less), so a long prompt's
    head is read back instead of computed again, in this process or the next
    (:mod:`qwen_mlx.engine.kv_disk`).
    """
    from .hub import resolver as hub
    from .models import loader
    from .models.context import parse_context, rope_overrides
    from .engine import KVSpec
    from .engine.memory_plan import plan_for, weight_bytes_of_folder
    from .model import Model

    recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    spec = hub.resolve(None if model is None else str(model), recipe, convert)
    folder = spec.folder
    wanted = None if context is None else parse_context(context)
    overrides = rope_overrides(spec.config, wanted)
    config = {**spec.config, **overrides}
    kv = KVSpec(kv_bits, kv_group_size, kv_start).check(spec.head_dim)
    cast = loader.compute_dtype(dtype)
    compute_bytes = cast.size if cast else None
    plan = plan_for(config, weights=weight_bytes_of_folder(folder, compute_bytes),
                    compute_bytes=compute_bytes, kv=kv, prefill_step=prefill_step,
                    memory=memory, draft=draft.plan if draft is not None else None)
    limit = wanted if wanted is not None else plan.largest_context()
    if not limit:  # not even the weights fit: refused (with the numbers) unless forced
        plan.check(plan.shape.positions, force)
        limit = plan.shape.positions
    plan.check(limit, force)
    adapter = None if adapter is None else Path(adapter)
    net, config = loader.load_weights(folder, adapter=adapter, dtype=dtype, overrides=overrides)
    tokenizer = loader.load_tokenizer(folder, spec.eos_ids)
    out = Model(net, tokenizer, config, folder, spec.eos_ids, adapter, kv=kv,
                context_limit=limit, prefill_step=prefill_step, plan=plan,
                defaults=spec.sampling_defaults())
    if kv_disk is not None:
        out.keep_kv_on_disk(kv_disk, kv_disk_size)
    return out


def generate(prompt, model: "Model | str | None" = None, **kwargs) -> "Completion":
    """One-shot convenience: load (if given a name) and generate."""
    from .model import Model

    model = model if isinstance(model, Model) else load(model)
    return model.generate(prompt, **kwargs)


__all__ = ["ChatResult", "Completion", "FunctionTool", "McpServers", "Model", "Piece",
           "PromptCache", "QwenMlxError", "Recipe", "Request", "SamplingParams", "Stats",
           "Toolbox", "generate", "load", "parse_recipe"]
