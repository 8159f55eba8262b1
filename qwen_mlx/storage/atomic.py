"""Write outputs so that an interrupted run never leaves something that looks complete.

Everything is written under a hidden temporary sibling of the target and renamed into place
at the end; rename is atomic on one filesystem, so a reader sees either the old target, or
nothing, or the finished new one. Ctrl-C, SIGTERM, a crash or a full disk removes the
temporary; what SIGKILL or a power cut leaves is cleaned by the next run that writes into the
same folder (:mod:`qwen_mlx.storage.leftovers`). Replacing an existing folder is allowed only for our
own kind of output (:mod:`qwen_mlx.storage.outputs`), and the old folder stays until the new one is
complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from . import leftovers
from ..errors import QwenMlxError
from .outputs import absolute, check_target


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool = False,
               protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``target`` when the block succeeds.

    An existing ``target`` is refused unless ``force``, and even then unless it is a model
    output that holds none of ``protect`` (see :func:`qwen_mlx.storage.outputs.check_target`); it is
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
    rival = leftovers.earlier_writer(target, tmp)
    if rival is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise QwenMlxError(f"another qwen-mlx process (pid {rival}) is writing {target}; "
                           f"wait for it to finish, or choose another -o")
    existed = target.exists() or target.is_symlink()
    try:
        yield tmp
        marker.unlink()
        # Checked again: something may have appeared at the target while the work ran. A
        # target that was not there is never replaced; one that was, only as at the start.
        if not existed and (target.exists() or target.is_symlink()):
            raise QwenMlxError(f"{target} appeared while this ran; it was left as it is and "
                               f"nothing was written (remove it, or choose another -o)")
        check_target(target, force=force, protect=protect)
        old = leftovers.temp_name(target, "old")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:  # a full disk: named as the output the user asked for
        shutil.rmtree(tmp, ignore_errors=True)
        raise _at_target(e, tmp, target) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _at_target(e: OSError, tmp: Path, target: Path) -> OSError:
    """``e`` with the temporary folder in its paths read as the target (a write that failed
    without naming its file names the target)."""
    def moved(name):
        if name is None:
            return None
        name = str(name)
        return str(target) + name[len(str(tmp)):] if name.startswith(str(tmp)) else name

    written = moved(getattr(e, "filename2", None)) or (None if e.filename else str(target))
    return type(e)(e.errno, e.strerror, moved(e.filename), None, written) \
        if e.errno is not None else e


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
    except OSError as e:  # a full disk: a write() names no file, so name the one asked for
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if e.errno is not None and e.filename in (None, str(tmp), tmp):
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise
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
