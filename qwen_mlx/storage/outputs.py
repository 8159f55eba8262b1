"""Which folders a command may replace: only its own kind of output, never the user's.

``--force`` once replaced whatever ``-o`` named, and a user lost a folder of checkpoints. Now
a folder is replaced only if it is itself a model output (an MLX model folder, an adapter
folder or a training checkpoint: known file names and nothing else), and never if it is, or
contains, a source being read, the current folder, the home folder or a filesystem root.
Everything else is refused in one line that says why, before any work is done.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from pathlib import Path
from typing import Iterable

from ..errors import QwenMlxError

# What qwen-mlx and mlx-lm write into a model or adapter folder (the tokenizer's files are
# models.checkpoint.TOKENIZER_FILES; tests/test_layout.py checks that they stay listed).
OWN_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                "config.json", "generation_config.json", "*.safetensors",
                "model.safetensors.index.json", "README.md", "LICENSE", "qwen-mlx.json",
                "quality.json",
                "fused_from.json", "adapter_config.json", "state.json", ".qwen-mlx-partial")


def absolute(path: Path | str) -> Path:
    """``path`` made absolute and normalised (``-o .`` names the current folder), without
    following links: a link is judged as what the user named."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def real(path: Path | str) -> Path:
    """``path`` with its links followed; a loop of links is a one-line error naming it
    (Python 3.11 raises RuntimeError for one, later versions OSError)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        if isinstance(e, OSError) and e.errno != errno.ELOOP:
            raise
        raise QwenMlxError(f"{path} is a loop of symbolic links") from None


def broken_link(path: Path) -> str | None:
    """Why ``path``, a symbolic link that leads nowhere, cannot be read (None otherwise)."""
    if not path.is_symlink() or path.exists():
        return None
    try:
        real(path)
    except QwenMlxError:
        return "is a loop of symbolic links"
    return f"is a symbolic link to {os.readlink(path)}, which does not exist"


def foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that no model or adapter output holds (sub-folders included)."""
    return sorted(p.name + ("/" if p.is_dir() else "") for p in Path(folder).iterdir()
                  if p.is_dir() or not any(fnmatch.fnmatch(p.name, pat) for pat in OWN_PATTERNS))


def _is_model_output(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return bool(names & {"config.json", "adapter_config.json", "state.json"}) and any(
        n.endswith(".safetensors") for n in names)


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_target(target: Path, *, force: bool, protect: Iterable[Path] = ()) -> None:
    """Refuse an output path that is not ours to write, with the reason in one line.

    A new path or an empty folder is fine. An existing folder is never one that is or
    contains ``protect`` (the sources the command reads), the current folder, the home folder
    or a filesystem root; otherwise it needs ``force`` and must be a model output.
    """
    target = absolute(target)
    resolved = real(target)
    for source in protect:
        if _inside(real(absolute(source)), resolved):
            what = "is" if real(absolute(source)) == resolved else "contains"
            raise QwenMlxError(f"output {target} {what} the model being read "
                               f"({source}); choose another -o")
    if not (target.exists() or target.is_symlink()):
        return
    if target.is_symlink():
        raise QwenMlxError(f"will not replace {target}: it is a symbolic link; name the "
                           "folder itself")
    if not target.is_dir():
        raise QwenMlxError(f"will not replace {target}: it is a file, not a model folder")
    for place, what in ((Path(target.anchor), "a filesystem root"),
                        (Path.home().resolve(), "your home folder"),
                        (Path.cwd().resolve(), "the current folder")):
        if _inside(place, resolved):
            relation = "is" if place == resolved else "contains"
            raise QwenMlxError(f"will not replace {target}: it {relation} {what}")
    if not any(target.iterdir()):
        return  # an empty folder made for the output
    if not force:
        raise QwenMlxError(f"output {target} already exists (use --force to replace it)")
    foreign = foreign_entries(target)
    if foreign or not _is_model_output(target):
        held = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4
                                         else "")
        why = f"it holds {held}" if foreign else "it is not a model folder (no config.json " \
            "and weights)"
        raise QwenMlxError(f"--force will not replace {target}: {why}; --force replaces only "
                           "a model or adapter folder that qwen-mlx or mlx-lm wrote")


def write_probe(folder: Path) -> None:
    """Make a file in ``folder`` and remove it at once: raises the OSError a real write
    there would (a read-only folder, a full disk), before any work is done."""
    import tempfile

    fd, probe = tempfile.mkstemp(dir=folder, prefix=".qwen-mlx-probe-")
    os.close(fd)
    os.unlink(probe)


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, an output that could not be written when the work is done
    (a read-only folder, a missing permission): the nearest folder that exists on the way
    to ``path`` gets a probe file."""
    target = absolute(path)
    folder = target if target.is_dir() else target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        write_probe(folder)
    except OSError as e:
        raise QwenMlxError(f"cannot write {what} {path}: {e.strerror or e} ({folder})") \
            from None
