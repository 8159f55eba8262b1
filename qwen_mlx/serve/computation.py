"""The worker's compute jobs (scoring, embedding, reranking): work that generates nothing
and runs a chunk per engine step, between the batch's decode steps.

Embedding and rerank jobs waiting together with the same settings (``dimensions``, rerank or
not) run as one: their rows are pooled in the same batches (sorted by length across every
request, cut where the memory plan says), so many small requests from a RAG indexer fill a
forward as one large request does; each job then gets its own rows' results.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Pooled:
    """An embedding or rerank job's rows and settings (``Model.pooling``'s arguments)."""

    rows: list[list[int]]
    dimensions: int | None = None
    rerank: bool = False

    @property
    def key(self) -> tuple:
        return self.dimensions, self.rerank


def take_group(queue: deque) -> list:
    """The oldest compute job, with every queued pooled job it can run with (the same
    settings), taken off ``queue``."""
    first = queue.popleft()
    if first.pooled is None:
        return [first]
    group = [first] + [j for j in queue if j.pooled is not None and j.pooled.key ==
                       first.pooled.key]
    for job in group[1:]:
        queue.remove(job)
    return group


class Computation:
    """One running compute: a job's own chunks, or a group of pooled jobs' rows together."""

    def __init__(self, model, jobs: list) -> None:
        self.jobs = jobs
        pooled = jobs[0].pooled
        if pooled is None:
            self.chunks: Iterator[list] = jobs[0].work()
        else:
            rows = [row for job in jobs for row in job.pooled.rows]
            self.chunks = model.pooling(rows, dimensions=pooled.dimensions,
                                        rerank=pooled.rerank)
        self.done: list = []

    def advance(self) -> bool:
        """Compute the next chunk; False once there is none (an exception is the engine's)."""
        part = next(self.chunks, None)
        if part is None:
            return False
        self.done.extend(part)
        return True

    def close(self) -> None:
        self.chunks.close()

    def results(self) -> list[tuple[object, list]]:
        """(job, its result) for each job: a plain job's chunks' results in order; a pooled
        job's [(its row index, embedding or score)]."""
        if self.jobs[0].pooled is None:
            return [(self.jobs[0], self.done)]
        found, out, start = dict(self.done), [], 0
        for job in self.jobs:
            n = len(job.pooled.rows)
            out.append((job, [(i, found[start + i]) for i in range(n)]))
            start += n
        return out
