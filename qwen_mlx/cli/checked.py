"""Every command's values checked once, before the command runs: text that is UTF-8, numbers
that are finite.

Python reads argument bytes that are not UTF-8 as surrogate escapes, which the tokenizer
later refused with a TypeError from deep inside; click's float types take ``nan``, ``inf``
and ``1e400`` (inf), which sampled garbage. Paths and MODEL (a folder may be named with any
bytes) are left to the code that opens them.
"""

from __future__ import annotations

import functools
import math

import click

from ..errors import QwenMlxError

NAMES_NOT_TEXT = {"model", "models", "draft"}  # a folder, named with whatever bytes it has


def _label(param: click.Parameter) -> str:
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.metavar or param.name or "argument").strip("[].")


def problem(param: click.Parameter, value) -> str | None:
    """Why ``value`` (one of ``param``'s) cannot be used, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{_label(param)} must be a finite number, not {value}"
    if isinstance(value, str) and isinstance(param.type, click.types.StringParamType) \
            and param.name not in NAMES_NOT_TEXT:
        for i, ch in enumerate(value):
            if "\udc80" <= ch <= "\udcff":
                return f"{_label(param)} is not UTF-8 text (byte 0x{ord(ch) - 0xdc00:02x} " \
                       f"at character {i + 1})"
    return None


def check_values(command: click.Command) -> None:
    """Wrap ``command``'s callback (and its subcommands') so that its values are checked
    before it runs; a bad one is a one-line error naming the option."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            check_values(sub)
    callback = command.callback
    if callback is None:
        return
    params = {p.name: p for p in command.params}

    @functools.wraps(callback)
    def checked(*args, **kwargs):
        for name, value in kwargs.items():
            param = params.get(name)
            values = value if isinstance(value, (tuple, list)) else (value,)
            for one in values if param is not None else ():
                why = problem(param, one)
                if why:
                    raise QwenMlxError(why)
        return callback(*args, **kwargs)

    command.callback = checked
