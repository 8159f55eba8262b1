"""What an interrupted run leaves behind, found and cleaned by the next run.

:mod:`qwen_mlx.storage.atomic` writes every output under a hidden sibling named after the target and
the writer's process id: ``.NAME.partial-PID`` (a folder being written), ``.NAME.old-PID``
(the folder being replaced, for the instant of the swap) and
``.STEM.qwen-mlx-tmp-PID.SUFFIX`` (a file; the long tag keeps a user's own hidden files out
of the pattern). SIGKILL, a power cut or a crash can leave one of them. Such a leftover is
stale once its process is gone; then a partial folder or temporary file is removed, and an
old folder is put back where it was if the swap never finished (or removed if it did).

Every run that writes into a folder cleans that folder first; `qwen-mlx models prune`
cleans the whole model cache. Each removal is announced on the ``qwen_mlx`` logger, which
the command line prints as one line.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from .outputs import foreign_entries

log = logging.getLogger("qwen_mlx")

# Written first into every partial folder: only folders that carry it (or are still empty)
# are ever removed, so a user's own folder that happens to match the pattern is safe.
MARKER = ".qwen-mlx-partial"
_FOLDER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")
_FILE = re.compile(r"^\.(?P<stem>.+)\.qwen-mlx-tmp-(?P<pid>\d+)(?P<suffix>\.[A-Za-z0-9]+)?$")


@dataclass(frozen=True)
class Leftover:
    """A stale temporary of an interrupted run."""

    path: Path
    kind: str  # "partial", "old" (a replaced folder mid-swap) or "tmp" (a file)
    pid: int
    original: Path  # what the writer was producing

    @property
    def nbytes(self) -> int:
        return size_of(self.path)

    def describe(self) -> str:
        what = {"partial": "partial folder", "old": "replaced folder", "tmp": "temporary file"}
        return f"{what[self.kind]} {self.path} (left by process {self.pid})"


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file below a folder (links not followed)."""
    path = Path(path)
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def temp_name(target: Path, kind: str) -> Path:
    """The hidden sibling this process uses while writing ``target``."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


def temp_file(path: Path) -> Path:
    """The temporary sibling of a file: same folder, same suffix (for writers such as
    ``mx.save_safetensors`` that add one)."""
    return path.with_name(f".{path.stem}.qwen-mlx-tmp-{os.getpid()}{path.suffix}")


def _alive(pid: int) -> bool:
    return pid == os.getpid() or psutil.pid_exists(pid)


def find(folder: Path) -> list[Leftover]:
    """Stale leftovers directly inside ``folder`` (whose process is no longer running)."""
    found = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    for path in entries:
        m = _FOLDER.match(path.name)
        if m and path.is_dir() and not path.is_symlink():
            pid = int(m["pid"])
            if m["kind"] == "old":  # a replaced folder passed this check before the swap
                ours = not foreign_entries(path)
            else:
                ours = (path / MARKER).exists() or not any(path.iterdir())
            if ours and not _alive(pid):
                found.append(Leftover(path, m["kind"], pid, path.with_name(m["name"])))
            continue
        m = _FILE.match(path.name)
        if m and path.is_file() and not path.is_symlink() and not _alive(int(m["pid"])):
            original = path.with_name(m["stem"] + (m["suffix"] or ""))
            found.append(Leftover(path, "tmp", int(m["pid"]), original))
    return sorted(found, key=lambda x: x.path)


def earlier_writer(target: Path, mine: Path) -> int | None:
    """The process id of a live writer of ``target`` that started before this one (whose
    partial folder is ``mine``), if any: two runs writing the same output would each report
    success while the last to finish silently won. Order is by when each partial folder's
    marker was written, then by process id, so of two that start together exactly one goes
    on. A dead writer's partial holds nothing (it is a leftover)."""
    def order(partial: Path) -> tuple[int, int]:
        return (partial / MARKER).stat().st_mtime_ns, int(partial.name.rsplit("-", 1)[1])

    me = order(mine)
    for path in Path(target).parent.iterdir():
        m = _FOLDER.match(path.name)
        if not m or m["kind"] != "partial" or m["name"] != target.name or path == mine:
            continue
        pid = int(m["pid"])
        try:
            if _alive(pid) and order(path) < me:
                return pid
        except (OSError, ValueError):
            continue  # gone meanwhile, or not one of ours
    return None


def find_below(root: Path) -> list[Leftover]:
    """Stale leftovers anywhere below ``root`` (not inside other leftovers)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = find(root)
    skip = {x.path for x in found}
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink() and not any(
                s == path or s in path.parents for s in skip):
            here = find(path)
            found += here
            skip.update(x.path for x in here)
    return found


def clean(leftovers: list[Leftover]) -> list[Leftover]:
    """Remove partial folders and temporary files; put back a replaced folder whose
    replacement never arrived. Returns what was handled, each announced in one line."""
    done = []
    for x in leftovers:
        try:
            if x.kind == "old" and not x.original.exists():
                x.path.rename(x.original)
                log.warning("restored %s from an interrupted replacement (process %d)",
                            x.original, x.pid)
            else:
                size = x.nbytes
                if x.kind == "tmp":
                    x.path.unlink()
                else:
                    shutil.rmtree(x.path)
                log.warning("removed %s, %s", x.describe(), _mb(size))
        except OSError as e:
            log.warning("could not clean %s: %s", x.path, e.strerror or e)
            continue
        done.append(x)
    return done


def clean_folder(folder: Path) -> list[Leftover]:
    """Clean the stale leftovers directly inside ``folder``: every writer calls this first."""
    return clean(find(folder))


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"
