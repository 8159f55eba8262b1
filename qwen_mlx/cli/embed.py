"""`qwen-mlx embed` and `qwen-mlx rerank`: embeddings and relevance scores from the command
line, over the Python API's ``Model.embed`` and ``Model.rerank``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import QwenMlxError
from . import stdin
from .console import open_model
from .options import load_options


def lines_of(texts: tuple[str, ...], file: Path | None, what: str) -> list[str]:
    """The texts given, then the file's non-empty lines ("-": stdin); none is an error."""
    out = list(texts)
    if file is not None:
        try:
            text = stdin.read_text() if str(file) == "-" else file.read_text(encoding="utf-8")
        except OSError as e:
            raise QwenMlxError(f"cannot read {file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise QwenMlxError(f"{file} is not UTF-8 text") from None
        out += [line for line in text.splitlines() if line.strip()]
    if not out:
        raise QwenMlxError(f"no {what}: give them as arguments or one per line with -f FILE")
    for i, text in enumerate(out):
        if not text.strip():
            raise QwenMlxError(f"{what.removesuffix('s')} {i + 1} is empty")
    return out


@click.command()
@click.argument("model")
@click.argument("texts", nargs=-1)
@click.option("-f", "--file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Texts to embed, one per line ('-': stdin).")
@click.option("--instruct", metavar="TASK",
              help="Embed the texts as queries for this task (Qwen3-Embedding's "
                   "'Instruct: TASK\\nQuery:' form); documents go without it.")
@click.option("--dimensions", type=click.IntRange(min=1), metavar="N",
              help="Keep the first N values of each vector (then normalized).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document (model, dimensions, embeddings) instead of one JSON "
                   "array per line.")
@load_options
def embed(model: str, texts: tuple[str, ...], file: Path | None, instruct: str | None,
          dimensions: int | None, as_json: bool, adapter: Path | None, recipe: str) -> None:
    """Embed TEXTs with MODEL (Qwen3-Embedding's computation; any Qwen3 model): one
    L2-normalized vector per text, printed as a JSON array per line."""
    inputs = lines_of(texts, file, "texts")
    llm = open_model(model, recipe=recipe, adapter=adapter)
    hidden = int(llm.config["hidden_size"])
    if dimensions is not None and dimensions > hidden:
        raise QwenMlxError(f"--dimensions {dimensions} is more than the model's {hidden}")
    vectors = llm.embed(inputs, instruction=instruct, dimensions=dimensions).tolist()
    if as_json:
        click.echo(json.dumps({"model": model, "dimensions": len(vectors[0]),
                               "embeddings": vectors}))
        return
    for vector in vectors:
        click.echo(json.dumps(vector))


@click.command()
@click.argument("model")
@click.argument("query")
@click.argument("documents", nargs=-1)
@click.option("-f", "--file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Documents, one per line ('-': stdin).")
@click.option("--instruct", metavar="TASK",
              help="The task the documents are judged for [default: Qwen's web-search one].")
@click.option("--top-n", type=click.IntRange(min=1), metavar="K", help="Only the K best.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON: [{index, relevance_score, document}], the best first.")
@load_options
def rerank(model: str, query: str, documents: tuple[str, ...], file: Path | None,
           instruct: str | None, top_n: int | None, as_json: bool, adapter: Path | None,
           recipe: str) -> None:
    """Rank DOCUMENTs by relevance to QUERY with MODEL (Qwen3-Reranker's yes/no judgement;
    any Qwen3 model): the best first, with scores from 0 to 1."""
    docs = lines_of(documents, file, "documents")
    if not query.strip():
        raise QwenMlxError("the query is empty")
    llm = open_model(model, recipe=recipe, adapter=adapter)
    ranked = llm.rerank(query, docs, top_n=top_n, instruction=instruct)
    if as_json:
        click.echo(json.dumps([{"index": i, "relevance_score": s, "document": docs[i]}
                               for i, s in ranked]))
        return
    for i, score in ranked:
        click.echo(f"{score:.4f}  [{i + 1}] {docs[i]}")
