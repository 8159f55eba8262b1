"""The model cache as a user manages it: what is there, how big, from where, last used when;
removing a model; pruning what interrupted runs and deleted sources left behind; and the
Qwen3 downloads in the Hugging Face cache. `qwen-mlx models` is a thin layer over this.

Converted models live in ``$QWEN_MLX_HOME/models/<source>/<recipe>`` (see
:func:`qwen_mlx.hub.resolver.cache_dir`), each with a ``qwen-mlx.json`` that records its source and
whose mtime is refreshed whenever the model is used. The Hugging Face cache is only read
here, and changed only when the user asks (``--source``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from . import resolver as hub
from ..storage import leftovers
from ..errors import QwenMlxError
from ..storage.outputs import absolute, foreign_entries
from ..models.provenance import PROVENANCE, QUALITY


@dataclass
class CachedModel:
    """One converted model in the cache."""

    path: Path
    name: str  # the repo id, or the local source folder
    recipe: str
    source_path: str | None  # where it was converted from
    revision: str | None  # the hub commit, for a download
    nbytes: int
    last_used: float  # seconds since the epoch
    complete: bool  # False: a folder without our record (an old interrupted run)
    orphaned: bool  # its local source folder is gone, so it can never be refreshed
    kl: float | None = None  # mean KL against its source, when convert measured it

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def models_root() -> Path:
    return hub.home() / "models"


def _entry(path: Path) -> CachedModel:
    marker = path / PROVENANCE
    record: dict = {}
    if marker.is_file():
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            record = {}
    folder = path.parent.name
    local = folder.startswith("local--")
    source_path = record.get("source_path")
    if local:
        name = source_path or record.get("source") or folder.split("--")[1]
    else:
        name = folder.replace("--", "/", 1)  # the repo id, as hub.cache_dir spelled it
    return CachedModel(
        path=path, name=name, recipe=record.get("recipe", path.name), source_path=source_path,
        revision=record.get("revision"), nbytes=leftovers.size_of(path),
        last_used=(marker if marker.is_file() else path).stat().st_mtime,
        complete=bool(record), orphaned=local and bool(source_path) and not Path(
            source_path).is_dir(), kl=_measured_kl(path))


def _measured_kl(path: Path) -> float | None:
    """The mean KL `qwen-mlx convert` wrote into quality.json, if it measured one."""
    try:
        value = json.loads((path / QUALITY).read_text()).get("kl_mean")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, (int, float)) else None


def recipe_name(folder: Path) -> str:
    """How a model folder was quantized, for people: its recipe's name (q4, mix-1.8gb,
    q4-dwq; :func:`qwen_mlx.models.spec.recipe_of`), else what config.json says (a mixed
    MLX folder from elsewhere)."""
    from .spec import recipe_of

    try:
        recipe = recipe_of(Path(folder))
    except QwenMlxError:
        return "unknown recipe"
    if recipe is not None:
        return recipe.name
    block = json.loads((Path(folder) / "config.json").read_text()).get("quantization")
    if not isinstance(block, dict):
        return "not quantized"
    return f"mixed, mostly {block.get('bits')}-bit, groups of {block.get('group_size')}"


def describe(folder: Path) -> str:
    """'q4-dwq, KL 0.0123 against its source' for the lines chat, generate and bench print."""
    kl = _measured_kl(Path(folder))
    return recipe_name(folder) + ("" if kl is None else f", KL {kl:.4f} against its source")


def list_models() -> list[CachedModel]:
    """Every converted model (and incomplete conversion) in the cache, by name and recipe."""
    root = models_root()
    if not root.is_dir():
        return []
    found = [_entry(recipe) for source in sorted(root.iterdir()) if source.is_dir()
             and not source.name.startswith(".") for recipe in sorted(source.iterdir())
             if recipe.is_dir() and not recipe.name.startswith(".")]
    return sorted(found, key=lambda m: (m.name.lower(), m.recipe))


def find(model: str, recipe: str | None = None) -> list[CachedModel]:
    """The cached conversions of MODEL (alias, repo id, local source folder, or a cache path),
    of one recipe or of all."""
    text = model.strip()
    repo = hub.ALIASES.get(text.lower(), text)
    path = str(absolute(text))
    found = [m for m in list_models()
             if path in (str(m.path), str(m.path.parent), m.source_path)
             or m.name.lower() == repo.lower()]
    if recipe is not None:
        found = [m for m in found if m.recipe == recipe]
    if not found:
        what = f" with recipe {recipe}" if recipe else ""
        raise QwenMlxError(f"no converted model {model!r}{what} in {models_root()} "
                           f"(`qwen-mlx models` lists them)")
    return found


def remove(model: CachedModel) -> int:
    """Delete one converted model; returns the bytes freed. Only a folder inside the cache
    that holds nothing but a model's files is removed."""
    path = model.path
    if models_root().resolve() not in path.resolve().parents:
        raise QwenMlxError(f"{path} is not in the model cache")
    foreign = foreign_entries(path)
    if foreign:
        raise QwenMlxError(f"{path} holds {', '.join(foreign[:4])}, which qwen-mlx did not "
                           f"write; remove it by hand if you mean to")
    size = model.nbytes
    shutil.rmtree(path)
    remove_empty_folders()
    return size


def stale_leftovers() -> list[leftovers.Leftover]:
    """Partial folders and temporary files of interrupted runs, anywhere in our home."""
    return leftovers.find_below(hub.home())


def remove_empty_folders() -> None:
    """Model folders left empty once their last recipe or leftover is gone."""
    root = models_root()
    for folder in (root.iterdir() if root.is_dir() else []):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


def orphans(models: list[CachedModel] | None = None) -> list[CachedModel]:
    """Conversions that cannot be used again as they are: their local source is gone, or
    they were never completed (of ``models``, or of the whole cache)."""
    return [m for m in (list_models() if models is None else models)
            if m.orphaned or not m.complete]


# -- the Hugging Face cache -------------------------------------------------------------------

@dataclass
class Source:
    """A Qwen3 repo downloaded into the Hugging Face cache."""

    repo_id: str
    nbytes: int
    revisions: list[str]
    path: Path
    last_accessed: float

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def _hf_cache():
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir()
    except CacheNotFound:
        return None


def sources() -> list[Source]:
    """Qwen3 model repos in the Hugging Face cache (the sources conversions read)."""
    info = _hf_cache()
    if info is None:
        return []
    return sorted((Source(r.repo_id, r.size_on_disk, sorted(v.commit_hash for v in r.revisions),
                          Path(r.repo_path), r.last_accessed)
                   for r in info.repos if r.repo_type == "model"
                   and "qwen3" in r.repo_id.lower()), key=lambda s: s.repo_id.lower())


def remove_source(repo_id: str) -> int:
    """Delete a repo's download from the Hugging Face cache; returns the bytes freed.

    The repo's folder goes whole, as huggingface_hub's own deletion does for a repo with no
    revision left (its ``delete_revisions`` matches commit hashes across every repo, so a
    hash two repos share could take the wrong one)."""
    info = _hf_cache()
    repos = [r for r in (info.repos if info else []) if r.repo_type == "model"
             and r.repo_id.lower() == repo_id.lower()]
    for r in repos:
        shutil.rmtree(r.repo_path)
    return sum(r.size_on_disk for r in repos)
