"""`qwen-mlx serve --models FILE`: per-model options in a small TOML (or YAML, JSON) file,
as llama.cpp's presets give them. Every key is checked here, at the edge, and an unknown one
is refused by name::

    [models.coder]                       # the name requests use
    model = "Qwen/Qwen3-4B-Instruct-2507"  # what to load (default: the name); a folder works
    recipe = "q4"                         # its conversion (the cache's, made if missing)
    context = "32k"
    kv_bits = 8                           # with kv_group_size, kv_start
    parallel = 4
    draft = "Qwen/Qwen3-0.6B"             # or lookup = 4; draft_tokens = 3
    aliases = ["claude-*"]
    keep_alive = "1h"                     # after its last request ("-1": for ever)
    pinned = true                         # loaded at start, never unloaded
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QwenMlxError
from ..storage.settings_file import read_settings

# key: (type(s) it takes, what it says)
KEYS = {"model": (str, "a model name, hub id or folder"), "recipe": (str, "a recipe name"),
        "context": ((str, int), "a context length"), "kv_bits": (int, "8 or 4"),
        "kv_group_size": (int, "a group size"), "kv_start": (int, "a token count"),
        "parallel": (int, "a count from 1 to 64"), "draft": (str, "a model"),
        "draft_tokens": (int, "a count from 1 to 16"), "lookup": (int, "a count from 1 to 16"),
        "aliases": (list, "a list of names"), "keep_alive": ((str, int, float), "a duration"),
        "pinned": (bool, "true or false")}


@dataclass
class ModelEntry:
    """One model of the file, validated."""

    name: str
    model: str
    recipe: str | None = None
    load: dict = field(default_factory=dict)  # context, kv_bits, kv_group_size, kv_start
    parallel: int | None = None
    speculation: dict = field(default_factory=dict)  # draft, draft_tokens, lookup
    aliases: tuple[str, ...] = ()
    keep_alive: float | None | str = "default"
    pinned: bool = False


def read_models_file(path: Path) -> list[ModelEntry]:
    """The file's models, each key checked; a mistake is one line naming the file, the
    model and the key."""
    data = read_settings(path, f"--models {path}")
    extra = set(data) - {"models"}
    if extra:
        raise QwenMlxError(f"--models {path}: '{sorted(extra)[0]}' is not a section here "
                           f"(each model is a [models.NAME] table)")
    tables = data.get("models")
    if not isinstance(tables, dict) or not tables:
        raise QwenMlxError(f"--models {path}: no [models.NAME] tables")
    return [_entry(path, name, table) for name, table in tables.items()]


def _entry(path: Path, name: str, table) -> ModelEntry:
    where = f"--models {path}: [models.{name}]"
    if not isinstance(table, dict):
        raise QwenMlxError(f"{where} must be a table of options")
    for key, value in table.items():
        if key not in KEYS:
            raise QwenMlxError(f"{where}: '{key}' is not an option (the options: "
                               f"{', '.join(KEYS)})")
        kind, what = KEYS[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise QwenMlxError(f"{where}: '{key}' must be {what}")
    def count(key: str, low: int, high: int) -> int | None:
        value = table.get(key)
        if value is not None and not low <= value <= high:
            raise QwenMlxError(f"{where}: '{key}' must be from {low} to {high}")
        return value

    if table.get("kv_bits") not in (None, 4, 8):
        raise QwenMlxError(f"{where}: 'kv_bits' must be 8 or 4")
    if table.get("draft") is not None and table.get("lookup") is not None:
        raise QwenMlxError(f"{where}: choose 'draft' or 'lookup', not both")
    if table.get("draft_tokens") is not None and table.get("draft") is None:
        raise QwenMlxError(f"{where}: 'draft_tokens' needs 'draft'")
    aliases = table.get("aliases", [])
    if not all(isinstance(a, str) and a for a in aliases):
        raise QwenMlxError(f"{where}: 'aliases' must be a list of names")
    keep = table.get("keep_alive", "default")
    if keep != "default":
        from ..serve.fleet import parse_keep_alive
        from ..serve.server import RequestError

        try:
            keep = parse_keep_alive(keep, "keep_alive")
        except RequestError as e:
            raise QwenMlxError(f"{where}: {e.message}") from None
    count("parallel", 1, 64), count("draft_tokens", 1, 16), count("lookup", 1, 16)
    count("kv_start", 0, 1 << 30), count("kv_group_size", 1, 1024)
    return ModelEntry(
        name=name, model=table.get("model", name), recipe=table.get("recipe"),
        load={k: table[k] for k in ("context", "kv_bits", "kv_group_size", "kv_start")
              if k in table},
        parallel=table.get("parallel"),
        speculation={k: table[k] for k in ("draft", "draft_tokens", "lookup") if k in table},
        aliases=tuple(aliases), keep_alive=keep, pinned=bool(table.get("pinned", False)))
