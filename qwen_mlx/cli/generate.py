"""`qwen-mlx generate`: one prompt in, the streamed reply out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import QwenMlxError
from ..documents import with_document
from .console import PrefillBar, err, open_model
from .options import (MODEL_HELP, generation_options, memory_kwargs, model_argument,
                      sampling_kwargs)


@click.command(help=f"""Generate a reply to one prompt and stream it to stdout. The prompt
comes from -p or, without it, from stdin; --file puts a document before it. {MODEL_HELP}""")
@model_argument
@click.option("-p", "--prompt", help="The prompt (default: read stdin).")
@click.option("-f", "--file", "document", type=click.Path(path_type=Path, dir_okay=True),
              help="A text file to put in the prompt, before the request (-p, or piped on "
                   "stdin).")
@click.option("--system", help="A system message (chat template only).")
@click.option("--raw", is_flag=True, help="Send the prompt as it is, without the chat template.")
@click.option("--json", "as_json", is_flag=True,
              help="End stdout with one JSON record: the reply text, token counts, speeds, "
                   "memory and finish reason.")
@click.option("-q", "--quiet", is_flag=True, help="No statistics line on stderr.")
@generation_options
def generate(model: str | None, prompt: str | None, document: Path | None, system: str | None,
             raw: bool, as_json: bool, quiet: bool, adapter: Path | None, recipe: str,
             stop: tuple[str, ...], **options) -> None:
    if prompt is None:  # the request comes from stdin when it is piped, with --file too
        piped = sys.stdin is not None and not sys.stdin.isatty()
        prompt = sys.stdin.read() if piped else ""
        if not prompt.strip() and document is None:
            raise QwenMlxError("no prompt: pass -p TEXT, --file PATH, or pipe the prompt on "
                               "stdin")
    if document is not None:
        prompt = with_document(document, prompt)
    if not prompt.strip():
        raise QwenMlxError("the prompt is empty")
    if raw and system:
        raise QwenMlxError("--system needs the chat template; drop --raw")
    llm = open_model(model, recipe=recipe, adapter=adapter, **memory_kwargs(options))
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": prompt}]
    stats, text = None, []
    with PrefillBar() as bar:
        for piece in llm.stream(prompt if raw else messages, raw=raw, on_prefill=bar,
                                stop=stop, **sampling_kwargs(options)):
            text.append(piece.text)
            sys.stdout.write(piece.text)
            sys.stdout.flush()
            stats = piece.stats or stats
    sys.stdout.write("\n")
    if as_json:
        record = {"model": str(llm.path), "text": "".join(text), **stats.to_dict(),
                  "peak_memory_gb": round(stats.peak_memory / 1e9, 3)}
        sys.stdout.write(json.dumps(record) + "\n")
    elif not quiet:
        err.print(stats.summary(), style="dim", markup=False, soft_wrap=True)
    sys.stdout.flush()
