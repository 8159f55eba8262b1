"""Saved chat sessions: transcript, settings and KV cache in one safetensors file.

Resuming a long conversation from its saved cache costs a file read instead of a prefill.
The file is written to a temporary name and renamed, so a crash or Ctrl-C never leaves a
half-written session; a file from another model, or not a session at all, is refused with
one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

from ..engine.kv_cache import KVSpec, restore, savable
from ..storage.atomic import atomic_path
from ..errors import QwenMlxError, os_error_line
from ..storage.home import home
from .session import ChatSession

FORMAT = "qwen-mlx-session/1"


def session_path(name: str) -> Path:
    """A bare NAME lives in $QWEN_MLX_HOME/sessions; a name with a slash, or ending in
    .safetensors, is a path from the current folder (``../talk`` is beside it): the user
    names where their own file goes, as a shell would (documented in /help and the README)."""
    if not name or name.strip() != name:
        raise QwenMlxError("a session needs a name: /save NAME")
    path = Path(os.path.abspath(Path(name).expanduser())) \
        if ("/" in name or name.endswith(".safetensors")) else home() / "sessions" / name
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


def model_identity(session: ChatSession) -> str:
    """What a cache is only valid for: the weights (config and shard layout), the adapter,
    and the compute type."""
    model = session.model
    digest = hashlib.sha256(json.dumps(model.config, sort_keys=True, default=str).encode())
    for f in (model.path / "model.safetensors.index.json",
              *([model.adapter / "adapter_config.json"] if model.adapter else [])):
        if f.is_file():
            digest.update(f.read_bytes())
    digest.update(model.compute_dtype.encode())
    return digest.hexdigest()[:16]


def save(session: ChatSession, name: str) -> Path:
    path = session_path(name)
    if path.is_dir():
        raise QwenMlxError(f"cannot save the session to {path}: it is a folder")
    meta = {"format": FORMAT, "model": str(session.model.path), "identity": model_identity(session),
            "messages": json.dumps(session.messages, ensure_ascii=False),
            "system": json.dumps(session.system), "thinking": json.dumps(session.thinking),
            "cache_tokens": json.dumps(session.cache.tokens),
            "kv": json.dumps(asdict(session.cache.spec))}
    try:
        with atomic_path(path) as tmp:
            save_prompt_cache(str(tmp), savable(session.cache.layers), meta)
    except OSError as e:
        raise QwenMlxError(f"cannot save the session to {path}: {os_error_line(e)}") from None
    except RuntimeError:  # mlx reports a failed write so, naming its temporary file
        raise QwenMlxError(f"cannot save the session to {path}: "
                           f"{unwritten(path.parent, session.cache.nbytes)}") from None
    return path


def unwritten(folder: Path, need: int) -> str:
    """Why a write into ``folder`` failed, when the writer does not say (MLX's save): a
    folder that cannot be written, or a disk without room for about ``need`` bytes."""
    import errno
    import shutil

    from ..storage.outputs import write_probe

    try:
        write_probe(folder)
        free = shutil.disk_usage(folder).free
    except OSError as e:
        if e.errno != errno.ENOSPC:
            return f"cannot write in {folder}"
        free = 0
    if free < need + (1 << 20):
        return f"the disk is full ({free / 1e6:,.1f} MB free; the session needs about " \
               f"{need / 1e6:,.1f} MB)"
    return f"cannot write in {folder}"


def load(session: ChatSession, name: str) -> Path:
    """Replace the session's transcript and cache with a saved one."""
    path = session_path(name)
    if not path.is_file():
        raise QwenMlxError(f"no saved session {name!r} ({path})")
    try:
        layers, meta = load_prompt_cache(str(path), return_metadata=True)
    except Exception:  # noqa: BLE001 - any unreadable file gets the same answer
        raise QwenMlxError(f"{path} is not a readable qwen-mlx session") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise QwenMlxError(f"{path} is not a qwen-mlx session")
    if meta.get("identity") != model_identity(session):
        raise QwenMlxError(f"{path} was saved with another model ({meta.get('model')}); "
                           f"this chat runs {session.model.path}")
    try:
        messages = json.loads(meta["messages"])
        tokens = json.loads(meta["cache_tokens"])
        system, thinking = json.loads(meta["system"]), json.loads(meta["thinking"])
        spec = KVSpec(**json.loads(meta.get("kv", "{}")))
    except (KeyError, ValueError, TypeError, RecursionError):
        raise QwenMlxError(f"{path} is a damaged qwen-mlx session") from None
    layers = restore(layers, spec)
    if len(layers) != len(session.cache.layers) or (layers and layers[0].offset < len(tokens)):
        raise QwenMlxError(f"{path} does not match this model's layers")
    session.messages, session.system, session.thinking = messages, system, thinking
    session.cache.layers, session.cache.tokens = layers, tokens
    session.cache.spec = spec
    session.cache.trim(len(tokens))
    return path
