"""From what a user types to a local MLX folder: aliases, repo ids, folders, download, cache.

Every command resolves its model argument here, so `chat`, `generate`, `bench` and `serve`
accept the same things and share one cache of converted models:

    qwen3-4b-instruct-2507 (default) -> Qwen/Qwen3-4B-Instruct-2507 -> download -> convert
    ./some/folder (Hugging Face layout) -> convert once into the cache
    ./some/folder (MLX layout, ours or mlx-lm's) -> used as it is

Converted models live in ``$QWEN_MLX_HOME/models`` (default ``~/.cache/qwen-mlx``). Downloads
go through huggingface_hub, which honours HF_HOME and HF_HUB_OFFLINE.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .checkpoint import is_mlx_folder, read_config
from .errors import QwenMlxError
from .recipes import DEFAULT, Recipe

ALIASES = {
    "qwen3-4b-instruct-2507": "Qwen/Qwen3-4B-Instruct-2507",
    "qwen3-4b": "Qwen/Qwen3-4B",
}
DEFAULT_MODEL = "qwen3-4b-instruct-2507"
# Only what a conversion reads: no original PyTorch .bin files, no ONNX, no images.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "LICENSE"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def home() -> Path:
    """qwen-mlx's own folder: converted models, sessions."""
    return Path(os.environ.get("QWEN_MLX_HOME") or Path.home() / ".cache" / "qwen-mlx")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model argument: a local folder or a hub repo id."""

    text: str
    folder: Path | None = None
    repo_id: str | None = None

    @property
    def display(self) -> str:
        return self.repo_id or str(self.folder)


def parse_spec(text: str | None) -> ModelSpec:
    """Classify a model argument without touching the network."""
    text = (text or DEFAULT_MODEL).strip()
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise QwenMlxError(f"{text} is a file; a model is a folder")
        return ModelSpec(text, folder=path)
    alias = ALIASES.get(text.lower())
    if alias:
        return ModelSpec(text, repo_id=alias)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise QwenMlxError(f"model folder {text} does not exist")
    if not _REPO_ID.match(text):
        raise QwenMlxError(f"model {text!r} not found: not a folder, an alias "
                           f"({', '.join(ALIASES)}) or a Hugging Face repo id")
    return ModelSpec(text, repo_id=text)


def cache_dir(spec: ModelSpec, recipe: Recipe) -> Path:
    """Where the converted form of ``spec`` with ``recipe`` is kept."""
    if spec.repo_id:
        name = spec.repo_id.replace("/", "--")
    else:
        folder = spec.folder.resolve()
        name = f"local--{folder.name}--{hashlib.sha256(str(folder).encode()).hexdigest()[:10]}"
    return home() / "models" / name / recipe.name


def offline() -> bool:
    """True when the user turned downloads off (huggingface_hub's HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _not_here(repo_id: str, what: str) -> QwenMlxError:
    """Why a hub model cannot be had right now, and the two ways out."""
    if offline():
        return QwenMlxError(
            f"{repo_id}{what} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"unset it to download once, or pass a local model folder (`qwen-mlx models "
            f"sources` lists what the cache holds)")
    return QwenMlxError(
        f"cannot reach the Hugging Face hub for {repo_id}{what}, and it is not in the cache: "
        f"go online once to download it, or pass a local model folder (`qwen-mlx models "
        f"sources` lists what the cache holds)")


def download(repo_id: str) -> Path:
    """Fetch a repo's config, tokenizer and safetensors files (progress bars from the hub)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=DOWNLOAD_PATTERNS))
    except LocalEntryNotFoundError:
        raise _not_here(repo_id, "") from None
    except HfHubHTTPError as e:
        raise QwenMlxError(f"cannot download {repo_id}: {str(e).splitlines()[0]}") from None


def source_folder(spec: ModelSpec) -> Path:
    """The Hugging Face-layout folder a conversion reads: the local one, or the download."""
    return spec.folder if spec.folder is not None else download(spec.repo_id)


ConvertFn = Callable[[Path, Path, Recipe, str], None]


def _is_current(converted: Path, source: Path | None) -> bool:
    """A cached conversion is used if complete and, for a local source, not stale."""
    from .quantize import PROVENANCE, fingerprint

    marker = converted / PROVENANCE
    if not marker.is_file():
        return False
    if source is None:
        return True
    try:
        return json.loads(marker.read_text()).get("source_fingerprint") == fingerprint(source)
    except (OSError, ValueError):
        return False


def _mark_used(converted: Path) -> None:
    """`qwen-mlx models` shows when a cached model was last used: the marker's mtime."""
    from .quantize import PROVENANCE

    try:
        os.utime(converted / PROVENANCE)
    except OSError:
        pass  # a read-only cache still serves


def locate(text: str | None, recipe: Recipe = DEFAULT) -> tuple[Path | None, dict]:
    """(MLX folder, config) if the model is here in MLX form, else (None, its config): read
    from a local checkpoint or fetched alone from the hub. Nothing is converted, and no
    weights are downloaded; the memory planner uses this."""
    spec = parse_spec(text)
    if spec.folder is not None and is_mlx_folder(spec.folder):
        return spec.folder, read_config(spec.folder)
    target = cache_dir(spec, recipe)
    if _is_current(target, spec.folder):
        return target, read_config(target)
    if spec.folder is not None:
        return None, read_config(spec.folder)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        config_file = Path(hf_hub_download(spec.repo_id, "config.json"))
    except LocalEntryNotFoundError:
        raise _not_here(spec.repo_id, "'s config") from None
    except HfHubHTTPError as e:
        raise QwenMlxError(f"cannot fetch {spec.repo_id}'s config: "
                           f"{str(e).splitlines()[0]}") from None
    folder = config_file.parent
    return (folder if is_mlx_folder(folder) else None), read_config(folder)


def resolve(text: str | None, recipe: Recipe = DEFAULT,
            convert: ConvertFn | None = None) -> Path:
    """A local MLX folder for ``text``: as it is, from the cache, or downloaded and converted.

    ``convert(source, output, recipe, source_name)`` performs a conversion; the default is
    :func:`qwen_mlx.quantize.convert` without progress output.
    """
    spec = parse_spec(text)
    if spec.folder is not None and is_mlx_folder(spec.folder):
        return spec.folder
    target = cache_dir(spec, recipe)
    if _is_current(target, spec.folder):
        _mark_used(target)
        return target
    source = source_folder(spec)
    if spec.folder is None and is_mlx_folder(source):
        return source  # an MLX repo (mlx-community's, say): nothing to convert
    if convert is None:
        from .quantize import convert as _convert

        def convert(src, out, rec, name):
            _convert(src, out, rec, force=True, source_name=name)
    convert(source, target, recipe, spec.display)
    return target
