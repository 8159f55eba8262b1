"""Embeddings and reranking, as Qwen3-Embedding's and Qwen3-Reranker's model cards compute
them, on any Qwen3 network (an embedding checkpoint, a reranker, or the chat model itself,
as Ollama lets any model embed).

An embedding is the final-norm hidden state of the last token (the tokenizer's end of text
appended), L2-normalized; ``dimensions`` keeps the first N values before normalizing
(Matryoshka). A query may carry an instruction (``Instruct: {task}\\nQuery:{text}``). A
rerank score is softmax(no, yes)[yes] of the next-token logits after Qwen's judge prompt.

Many inputs run as left-padded batches (mlx-lm's ``BatchKVCache`` masks the padding and
starts each row's positions at 0, so a row computes what it would alone), sorted by length
and cut into chunks as many rows as the memory plan gives room for
(``MemoryPlan.pooling_rows``); each chunk is one forward, yielded as it is done so that a
server can run other work between chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

from ..models import mlx_lm_seam as seam
from .memory_plan import POOLING_TOKENS

END_OF_TEXT = "<|endoftext|>"
RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
RERANK_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based "
                 "on the Query and the Instruct provided. Note that the answer can only be "
                 "\"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def query_text(text: str, instruction: str | None) -> str:
    """Qwen3-Embedding's query form: the task first, documents go as they are."""
    return text if instruction is None else f"Instruct: {instruction}\nQuery:{text}"


def pair_text(query: str, document: str, instruction: str | None = None) -> str:
    """The middle of Qwen3-Reranker's judge prompt for one (query, document) pair."""
    return (f"<Instruct>: {instruction or RERANK_INSTRUCTION}\n<Query>: {query}\n"
            f"<Document>: {document}")


@dataclass(frozen=True)
class Pooling:
    """What a batch computes for each row: an embedding (``dimensions`` of it, None for
    all) or a rerank score (the ids of "yes" and "no")."""

    dimensions: int | None = None
    judge: tuple[int, int] | None = None  # (yes, no) token ids: rerank


def by_tokens(longest: int) -> int:
    """Rows of ``longest`` tokens in one forward without a memory plan: POOLING_TOKENS'
    worth (at least one)."""
    return max(1, POOLING_TOKENS // longest)


def batches(rows: Sequence[list[int]],
            room: Callable[[int], int] = by_tokens) -> list[list[int]]:
    """Row indices in chunks, shortest first, each chunk at most ``room(longest)`` rows
    (``MemoryPlan.pooling_rows``)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    chunks, current = [], []
    for i in order:
        if current and len(current) + 1 > room(len(rows[i])):
            chunks.append(current)
            current = []
        current.append(i)
    return chunks + ([current] if current else [])


def pooled(net, rows: Sequence[list[int]], pooling: Pooling, *,
           room: Callable[[int], int] = by_tokens,
           stream: mx.Stream | None = None) -> Iterator[list[tuple[int, list[float] | float]]]:
    """For each chunk, [(row index, its embedding or score)], computed when asked for."""
    for chunk in batches(rows, room):
        longest = max(len(rows[i]) for i in chunk)
        padding = [longest - len(rows[i]) for i in chunk]
        ids = mx.array([[0] * p + list(rows[i]) for p, i in zip(padding, chunk)])
        with seam.on(stream):
            caches = [BatchKVCache(padding) for _ in net.layers]
            last = net.model(ids, cache=caches)[:, -1, :].astype(mx.float32)
            if pooling.judge is None:
                out = normalized(last, pooling.dimensions)
            else:
                logits = head(net, last)
                yes, no = pooling.judge
                out = mx.softmax(mx.stack([logits[:, no], logits[:, yes]], axis=-1),
                                 axis=-1, precise=True)[:, 1]
        mx.eval(out)
        yield list(zip(chunk, out.tolist()))
        del caches
        mx.clear_cache()


def normalized(vectors: mx.array, dimensions: int | None) -> mx.array:
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    return vectors / mx.maximum(mx.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def head(net, hidden: mx.array) -> mx.array:
    """The output layer over ``hidden``: mlx-lm's Qwen3 ties it to the embeddings or has
    its own (as its Model.__call__ chooses), in float32."""
    if net.args.tie_word_embeddings:
        return net.model.embed_tokens.as_linear(hidden).astype(mx.float32)
    return net.lm_head(hidden).astype(mx.float32)


class TooLong(ValueError):
    """An input over the context with truncation off: ``index`` names it."""

    def __init__(self, index: int, tokens: int, context: int) -> None:
        super().__init__(f"input {index} has {tokens:,} tokens, more than the context "
                         f"({context:,}): shorten it, or allow truncation")
        self.index = index


def embedding_rows(model, texts: Sequence[str | list[int]], *, instruction: str | None = None,
                   truncate: bool = True) -> list[list[int]]:
    """Token ids per input, the end of text appended (token-id inputs as they are, plus
    it); over the context, cut to fit (``truncate``) or refused."""
    end = model.tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    rows = []
    for i, text in enumerate(texts):
        ids = list(text) if isinstance(text, list) else \
            model.encode(query_text(text, instruction), raw=True)
        if len(ids) + 1 > model.context_length:
            if not truncate:
                raise TooLong(i, len(ids) + 1, model.context_length)
            ids = ids[:model.context_length - 1]
        rows.append(ids + [end])
    return rows


def rerank_rows(model, query: str, documents: Sequence[str], *,
                instruction: str | None = None, truncate: bool = True) -> list[list[int]]:
    """Token ids of the judge prompt per document, as Qwen3-Reranker's card builds them:
    the system prefix and the suffix tokenized on their own, the pair between them; one
    over the context is cut (``truncate``) or refused."""
    prefix, suffix = model.encode(RERANK_PREFIX, raw=True), model.encode(RERANK_SUFFIX, raw=True)
    room = model.context_length - len(prefix) - len(suffix)
    rows = []
    for i, document in enumerate(documents):
        pair = model.encode(pair_text(query, document, instruction), raw=True)
        if len(pair) > room:
            if not truncate or room < 1:
                raise TooLong(i, len(prefix) + len(pair) + len(suffix), model.context_length)
            pair = pair[:room]
        rows.append(prefix + pair + suffix)
    return rows


def judge_ids(model) -> tuple[int, int]:
    """The ids of "yes" and "no", the reranker's two answers."""
    return (model.tokenizer.convert_tokens_to_ids("yes"),
            model.tokenizer.convert_tokens_to_ids("no"))


def gathered(chunks: Iterator[list[tuple[int, object]]], n: int) -> list:
    """The results of :func:`pooled`'s chunks in input order."""
    out: list = [None] * n
    for chunk in chunks:
        for i, value in chunk:
            out[i] = value
    return out
