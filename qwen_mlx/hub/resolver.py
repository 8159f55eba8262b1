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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..models.checkpoint import is_mlx_folder
from ..storage.home import home
from ..storage.outputs import broken_link
from ..errors import QwenMlxError
from .spec import ModelSpec
from ..models.recipes import DEFAULT, Recipe

ALIASES = {
    "qwen3-4b-instruct-2507": "Qwen/Qwen3-4B-Instruct-2507",
    "qwen3-4b": "Qwen/Qwen3-4B",
    # for retrieval beside it: embeddings (`embed`, /v1/embeddings) and reranking (`rerank`)
    **{f"qwen3-{kind}-{size.lower()}": f"Qwen/Qwen3-{kind.title()}-{size}"
       for kind in ("embedding", "reranker") for size in ("0.6B", "4B", "8B")},
}
DEFAULT_MODEL = "qwen3-4b-instruct-2507"
# Only what a conversion reads: no original PyTorch .bin files, no ONNX, no images.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "LICENSE"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelArg:
    """A parsed model argument: a local folder or a hub repo id."""

    text: str
    folder: Path | None = None
    repo_id: str | None = None

    @property
    def display(self) -> str:
        return self.repo_id or str(self.folder)


def parse_arg(text: str | None) -> ModelArg:
    """Classify a model argument without touching the network."""
    text = (text or DEFAULT_MODEL).strip()
    path = Path(text).expanduser()
    link = broken_link(path)
    if link:
        raise QwenMlxError(f"model folder {text} {link}")
    if path.exists():
        if not path.is_dir():
            raise QwenMlxError(f"{text} is a file; a model is a folder")
        return ModelArg(text, folder=path)
    alias = ALIASES.get(text.lower())
    if alias:
        return ModelArg(text, repo_id=alias)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise QwenMlxError(f"model folder {text} does not exist")
    if not _REPO_ID.match(text):
        raise QwenMlxError(f"model {text!r} not found: not a folder, an alias "
                           f"({', '.join(ALIASES)}) or a Hugging Face repo id")
    return ModelArg(text, repo_id=text)


def cache_dir(spec: ModelArg, recipe: Recipe) -> Path:
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


def source_folder(spec: ModelArg) -> Path:
    """The Hugging Face-layout folder a conversion reads: the local one, or the download."""
    return spec.folder if spec.folder is not None else download(spec.repo_id)


ConvertFn = Callable[[Path, Path, Recipe, str], None]


def is_current(converted: Path, source: Path | None) -> bool:
    """A cached conversion is used if complete and, for a local source, not stale."""
    from ..models.provenance import PROVENANCE, fingerprint

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
    from ..models.provenance import PROVENANCE

    try:
        os.utime(converted / PROVENANCE)
    except OSError:
        pass  # a read-only cache still serves


def _config_only(repo_id: str) -> Path:
    """The folder of a hub repo's config.json, fetched alone (no weights)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "config.json")).parent
    except LocalEntryNotFoundError:
        raise _not_here(repo_id, "'s config") from None
    except HfHubHTTPError as e:
        raise QwenMlxError(f"cannot fetch {repo_id}'s config: {str(e).splitlines()[0]}") \
            from None


def resolve(text: str | None, recipe: Recipe = DEFAULT, convert: ConvertFn | None = None,
            *, weights: bool = True) -> ModelSpec:
    """What ``text`` names, as a :class:`~qwen_mlx.models.spec.ModelSpec`: an MLX folder as
    it is, a conversion from the cache, or a download converted now. Every command resolves
    its model argument here.

    ``convert(source, output, recipe, source_name)`` performs a conversion; the default is
    :func:`qwen_mlx.quant.convert.convert` without progress output. With ``weights=False`` (the
    memory planner) nothing is converted or downloaded: a model not yet here in MLX form is
    described by its source's config (a hub repo's config.json alone) and ``folder`` is None.
    """
    arg = parse_arg(text)
    if arg.folder is not None and is_mlx_folder(arg.folder):
        return ModelSpec.of_folder(arg.folder, str(arg.folder))
    target = cache_dir(arg, recipe)
    if is_current(target, arg.folder):
        if weights:
            _mark_used(target)
        return ModelSpec.of_folder(target, arg.display, recipe)
    if recipe.fitted:
        raise QwenMlxError(f"{recipe.name} is a fitted recipe and {arg.display} has no such "
                           f"conversion yet; make it with `qwen-mlx convert` (--max-size, "
                           f"--bpw, --dwq)")
    if not weights:
        source = arg.folder if arg.folder is not None else _config_only(arg.repo_id)
        spec = ModelSpec.of_folder(source, arg.display, recipe)
        mlx_repo = arg.folder is None and is_mlx_folder(source)
        return spec if mlx_repo else replace(spec, folder=None, recipe=recipe)
    source = source_folder(arg)
    if arg.folder is None and is_mlx_folder(source):
        return ModelSpec.of_folder(source, arg.display)  # an MLX repo: nothing to convert
    if convert is None:
        from ..quant.convert import convert as _convert

        def convert(src, out, rec, name):
            _convert(src, out, rec, force=True, source_name=name)
    convert(source, target, recipe, arg.display)
    return ModelSpec.of_folder(target, arg.display, recipe)
