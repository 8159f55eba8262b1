"""The `qwen-mlx` command: a thin click layer over the Python API.

Commands parse options, call the API and print. Errors the user can fix arrive as
QwenMlxError and are printed as one line with a non-zero exit; Ctrl-C exits 130 quietly.
The top layer: imports anything, and nothing imports it (but __main__).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import click

from .. import __version__
from ..errors import QwenMlxError, os_error_line


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _NoteHandler(logging.Handler):
    """Library notices (a leftover cleaned, a file restored) as one stderr line each; the
    stream is looked up per line, so a test runner that swaps stderr sees them."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {record.getMessage()}", err=True)


def _terminated(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C, so every temporary output is removed on the way out.
    raise SystemExit(128 + signum)


def _setup() -> None:
    log = logging.getLogger("qwen_mlx")
    if not any(isinstance(h, _NoteHandler) for h in log.handlers):
        log.addHandler(_NoteHandler())
        log.setLevel(logging.INFO)
        log.propagate = False
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


class Group(click.Group):
    """A click group that turns exceptions into one-line errors."""

    def invoke(self, ctx: click.Context):
        _setup()
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except QwenMlxError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `qwen-mlx generate ... | head`
            sys.stderr.close()
            sys.exit(0)
        except OSError as e:  # a full disk, a permission: the system's own words suffice
            _fail(os_error_line(e))
        except Exception as e:  # noqa: BLE001 - a bug, but still no wall of text by default
            if os.environ.get("QWEN_MLX_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} "
                  "(set QWEN_MLX_DEBUG=1 for the traceback)", 2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qwen-mlx")
def main() -> None:
    """Qwen3-4B on your Mac with MLX: convert, generate, chat, serve, finetune,
    fuse, plan, bench, eval, embed, rerank, models, ps, stop."""


def _check_backend() -> None:
    """On Linux MLX's backend comes from an extra; without one, say which to install
    instead of a traceback from deep inside an import."""
    try:
        import mlx.core  # noqa: F401
    except ImportError as e:
        if "libmlx" not in str(e):
            raise
        _fail("MLX has no backend installed: pip install 'qwen-mlx[cpu]' (or [cuda] with an "
              "NVIDIA GPU; ./install.sh does this)")


def _register() -> None:
    from .bench import bench
    from .chat import chat
    from .convert import convert
    from .embed import embed, rerank
    from .eval import eval_command
    from .finetune import finetune
    from .fuse import fuse
    from .generate import generate
    from .models import models
    from .plan import plan
    from .running import ps, stop
    from .serve import serve

    from .checked import check_values

    for command in (bench, chat, convert, embed, eval_command, finetune, fuse, generate, models,
                    plan, ps, rerank, serve, stop):
        check_values(command)
        main.add_command(command)


_check_backend()
_register()
