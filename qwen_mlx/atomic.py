"""Write outputs so that an interrupted run never leaves something that looks complete.

Everything is written under a hidden temporary sibling of the target and renamed into place
at the end; rename is atomic on one filesystem, so a reader sees either the old target, or
nothing, or the finished new one. Ctrl-C, SIGTERM, a crash or a full disk removes the
temporary; what SIGKILL or a power cut leaves is cleaned by the next run that writes into the
same folder (:mod:`qwen_mlx.leftovers`). Replacing an existing folder is allowed only for our
own kind of output (:mod:`qwen_mlx.outputs`), and the old folder stays until the new one is
complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from . import leftovers
from .outputs import absolute, check_target


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool = False,
               protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``target`` when the block succeeds.

    An existing ``target`` is refused unless ``force``, and even then unless it is a model
    output that holds none of ``protect`` (see :func:`qwen_mlx.outputs.check_target`); it is
    replaced only after the new folder is complete.
    """
    target = absolute(target)
    leftovers.clean_folder(target.parent)  # first: it may put back an interrupted target
    check_target(target, force=force, protect=protect)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = leftovers.temp_name(target, "partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    marker = tmp / leftovers.MARKER
    marker.touch()
    try:
        yield tmp
        marker.unlink()
        old = leftovers.temp_name(target, "old")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file path (same folder, same suffix, for writers such as
    ``mx.save_safetensors`` that add one) that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leftovers.clean_folder(path.parent)
    tmp = leftovers.temp_file(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
