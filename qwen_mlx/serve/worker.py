"""One model, one engine thread, many requests: the continuous batch behind the server.

Requests wait in a queue; between two decode steps the engine thread lets waiting requests
join the running batch (:class:`qwen_mlx.engine.batch.Batch`) while there is room, ends the
ones whose client went away or whose time ran out, and sends every sequence's pieces back
to the asyncio side as events. Room means two things: at most ``parallel`` sequences, and
KV memory: the batch stores every sequence padded to the longest, so ``n`` sequences that
may each grow to ``r`` tokens hold ``n * r``, and that must fit in the memory plan's KV
budget together with the kept caches of recent conversations.

A chat client resends its whole history with every request: each request starts from the
kept cache sharing the longest prefix with it, so only the new part is prefilled, and its
cache is kept again when it ends. With ``parallel`` 1 requests run one at a time through
the lone engine, with the same cancellation, time limit and shutdown.

A speculative request (``serve --draft/--lookup``, or its ``speculative`` field) runs in
the speculative batch (:class:`qwen_mlx.engine.speculative_batch.SpeculativeBatch`): every
speculating sequence has its own proposals and accepted length, and one forward checks them
all; it is stepped after the plain batch, and counted in the same ``parallel`` and KV
budget. Requests without speculation keep sharing the plain batch.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator

import mlx.core as mx

from ..engine import Piece, PromptCache, Request
from ..engine.batch import Batch
from ..engine.speculative_batch import SpeculativeBatch
from ..model import Model
from .kv_room import SLOTS, CachePool, default_parallel, kv_budget, kv_token_bytes
from .computation import Computation, Pooled, take_group

log = logging.getLogger("qwen_mlx")

_DONE = object()


class Ended(Exception):
    """A request the server ended itself: an HTTP ``status`` and an error ``code`` for
    the answer (or the stream's last event)."""

    status, code = 500, "server_error"


class ShuttingDown(Ended):
    """The server is stopping: the request was not started, or was cut at the grace
    period's end."""

    status, code = 503, "shutting_down"


class EngineFailure(Ended):
    """The engine failed while running this request (an internal fault, not the request's
    doing: a Metal out-of-memory, a bug): the request ends with it, the server goes on."""

    status, code = 500, "internal_error"


@dataclass(eq=False)  # jobs are told apart by identity (kept in a set)
class Job:
    request: Request | None  # validated at the HTTP edge (None: a compute job)
    loop: asyncio.AbstractEventLoop
    on_prefill: object = None  # progress of a long prompt: a callback with close()
    top_logprobs: int | None = None
    kind: str = "generate"  # or "compute": ``work`` runs, a chunk per step; nothing generated
    work: Callable[[], Iterator[list]] | None = None  # a compute job's chunks (made when it starts)
    pooled: Pooled | None = None  # or its embedding/rerank rows, run with others like them
    made: int = 0  # tokens generated so far
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item) -> None:
        if isinstance(item, Piece):
            self.made += len(item.tokens)
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    @property
    def reserve(self) -> int:
        """The most tokens this request's cache can hold."""
        return len(self.request.tokens) + self.request.params.max_tokens


class Worker:
    def __init__(self, model: Model, slots: int = SLOTS, parallel: int | None = None,
                 time_limit: float | None = None, draft: Model | None = None) -> None:
        self.model = model
        # one at a time (the lone engine, no batch bookkeeping) when asked
        self.parallel = parallel or default_parallel(model)
        self.batched = self.parallel > 1
        self.time_limit = time_limit
        # a draft model keeps a cache beside every cache of the model's
        self.token_bytes = kv_token_bytes(model) + (kv_token_bytes(draft) if draft else 0)
        self.budget = int(kv_budget(model, self.parallel) * self.token_bytes)  # bytes
        self.pool = CachePool(model, slots, self.budget)
        self.batch: Batch | None = None  # made on the engine thread (MLX streams are per thread)
        self.speculative: SpeculativeBatch | None = None
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.waiting: deque[Job] = deque()
        # compute jobs (scoring, embedding, reranking), oldest first, beside ``waiting``
        self.to_compute: deque[Job] = deque()
        # the one running: its jobs, their chunks still to come, the results so far
        self.computing: Computation | None = None
        self.queued: set[Job] = set()  # not yet started (in ``jobs`` or ``waiting``)
        self.running: dict[int, Job] = {}  # in the batch, by its sequence id
        self.speculating: dict[int, Job] = {}  # in the speculative batch, by its id
        self.admitting: Job | None = None  # between leaving ``waiting`` and joining the batch
        self.finished: deque[dict] = deque(maxlen=64)  # recent jobs: tokens made, cancelled
        self.faults = 0  # engine failures survived
        self.fault: str | None = None  # the last one, for /health
        self.closing = threading.Event()  # no new requests (queued ones get the grace)
        self.stopping = threading.Event()  # running sequences end now
        self.closed = False  # the engine thread ends
        self.thread = threading.Thread(target=self._run, name="qwen-mlx-engine", daemon=True)
        self.thread.start()

    # -- the engine thread ------------------------------------------------------------

    def close(self, timeout: float | None = 30) -> bool:
        """End every request and the engine thread (a server that is done); whether the
        thread ended within ``timeout`` seconds."""
        self.closing.set()
        self.stopping.set()
        self.closed = True
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        """The engine thread: steps until closed. A step that raises fails the requests it
        was running (each gets an :class:`EngineFailure` naming the cause) and the batch is
        made anew; the thread itself never ends early."""
        while not (self.closed and not self.running and not self.speculating and
                   not self.waiting and not self.to_compute and not self.computing):
            try:
                if self.batched and self.batch is None:
                    self.batch = Batch(self.model, parallel=self.parallel)
                    self.speculative = SpeculativeBatch(self.model)
                self._step()
            except Exception as e:  # noqa: BLE001 - reported to its requests; serving goes on
                self._failed(e)
        if self.batch is not None:
            self.batch.close()
        self.pool.spill()  # a clean end: the kept caches go to the disk tier, if any

    def _step(self) -> None:
        self._collect(block=not (self.running or self.speculating or self.waiting or
                                 self.to_compute or self.computing))
        self._drop_cancelled()
        self._compute()
        if self.batch is None:
            if self.waiting:
                self._run_alone(self.waiting.popleft())
            return
        self._admit()
        if self.running:
            self._dispatch(self.batch.step(), self.running)
        if self.speculating:
            self._dispatch(self.speculative.step(), self.speculating)
        self._reap()

    def _failed(self, e: Exception) -> None:
        log.exception("the engine failed; its running requests end with the error")
        self.faults += 1
        self.fault = f"{type(e).__name__}: {e}".splitlines()[0]
        failure = EngineFailure(f"internal error: {self.fault}")
        jobs = list(self.running.values()) + list(self.speculating.values()) + \
            ([self.admitting] if self.admitting else []) + \
            (self.computing.jobs if self.computing else [])
        self.computing = None
        self.running.clear()
        self.speculating.clear()
        self.speculative = None  # made anew with the batch
        self.admitting = None
        for job in jobs:
            self._close(job, failure)
        if self.batch is not None:
            try:
                self.batch.close()
            except Exception:  # noqa: BLE001 - a broken batch is dropped either way
                pass
            self.batch = None  # made anew on the next step
        self.pool.caches.clear()  # caches the failed step touched may be inconsistent
        gc.collect()
        mx.clear_cache()

    def _collect(self, block: bool) -> None:
        """Move newly queued jobs to ``waiting`` (waiting for one when idle)."""
        try:
            job = self.jobs.get(timeout=0.5) if block else self.jobs.get_nowait()
        except queue.Empty:
            return
        while job is not None:
            (self.to_compute if job.kind == "compute" else self.waiting).append(job)
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                job = None

    def _drop_cancelled(self) -> None:
        """Waiting jobs whose client left (or all, once the shutdown's grace is over) end
        now, not when they reach the head of the queue. A job that was waiting when the
        shutdown began gets the grace as a running one does (its client may already hold
        its first event): it starts when there is room and is cut at the grace's end."""
        self.waiting, self.to_compute = self._live(self.waiting), self._live(self.to_compute)

    def _live(self, jobs: deque[Job]) -> deque[Job]:
        if not any(j.cancelled.is_set() for j in jobs) and not (jobs and
                                                                 self.stopping.is_set()):
            return jobs
        keep = deque()
        for job in jobs:
            if job.cancelled.is_set() or self.stopping.is_set():
                self._end_unstarted(job)
            else:
                keep.append(job)
        return keep

    def _compute(self) -> None:
        """One chunk of the oldest compute job per step, between the batch's steps (a
        scoring prefill, a batch of embeddings), so the streams decoding beside a long
        evaluation or a large embedding request go on; embedding and rerank jobs waiting
        together run as one (:mod:`qwen_mlx.serve.computation`). Each job's result is one
        item."""
        if self.computing is None:
            if not self.to_compute:
                return
            jobs = take_group(self.to_compute)
            self.queued.difference_update(jobs)
            self.computing = Computation(self.model, jobs)
        work = self.computing
        if self.stopping.is_set() or all(j.cancelled.is_set() for j in work.jobs):
            self.computing = None  # its clients gone, or the grace over
            work.close()
            for job in work.jobs:
                self._close(job, None if job.cancelled.is_set() else
                            ShuttingDown("the server is shutting down"))
            return
        if work.advance():  # an exception here reaches _failed, which ends its jobs
            return
        self.computing = None
        for job, result in work.results():
            job.put(result)
            self._close(job, None)

    def _admit(self) -> None:
        """Start waiting jobs, oldest first, while there is room: at most ``parallel``
        sequences, their KV within the budget (each batch's padded to its longest)."""
        while self.waiting:
            job = self.waiting[0]
            if len(self.running) + len(self.speculating) >= self.parallel:
                return
            speculates = job.request.speculative is not None
            plain = [j.reserve for j in self.running.values()] + \
                ([] if speculates else [job.reserve])
            fast = [j.reserve for j in self.speculating.values()] + \
                ([job.reserve] if speculates else [])
            tokens = len(plain) * max(plain, default=0) + len(fast) * max(fast, default=0)
            need = tokens * self.token_bytes
            if (self.running or self.speculating) and need > self.budget:
                return  # waits for a running sequence to end
            self.admitting = self.waiting.popleft()
            self.queued.discard(job)
            cache = self.pool.take(list(job.request.tokens))
            self.pool.shrink(max(0, int(self.budget - need)))
            batch, jobs = (self.speculative, self.speculating) if speculates else \
                (self.batch, self.running)
            uid = batch.add(job.request, cache, on_prefill=job.on_prefill,
                            top_logprobs=job.top_logprobs, time_limit=self.time_limit)
            jobs[uid] = job
            self.admitting = None

    def _cut(self):
        """A request's time limit, as the lone engine's ``cut``."""
        deadline = None if self.time_limit is None else time.monotonic() + self.time_limit
        return lambda: deadline is not None and time.monotonic() >= deadline

    def _dispatch(self, events, jobs: dict[int, Job]) -> None:
        for event in events:
            job = jobs.get(event.uid)
            if job is None:
                continue
            job.put(event.piece)
            if event.last:
                self._finish(jobs, event.uid, event.cache)

    def _reap(self) -> None:
        """End the sequences whose client went away (or all, when stopping)."""
        for batch, jobs in ((self.batch, self.running), (self.speculative, self.speculating)):
            for uid, job in list(jobs.items()):
                if job.cancelled.is_set():
                    self._finish(jobs, uid, batch.remove(uid).cache)
                elif self.stopping.is_set():
                    batch.remove(uid)
                    self._finish(jobs, uid, None,
                                 error=ShuttingDown("the server is shutting down"))

    def _finish(self, jobs: dict[int, Job], uid: int, cache: PromptCache | None,
                error: Exception | None = None) -> None:
        job = jobs.pop(uid)
        if cache is not None:
            self.pool.give_back(cache)
        self._close(job, error)

    def _end_unstarted(self, job: Job) -> None:
        self.queued.discard(job)
        self._close(job, None if job.cancelled.is_set() else
                    ShuttingDown("the server is shutting down"))

    def _close(self, job: Job, error: Exception | None) -> None:
        # read before _DONE is sent: a client that then leaves at once was not cancelled
        self.finished.append({"generated": job.made, "cancelled": job.cancelled.is_set()})
        if job.on_prefill is not None:
            job.on_prefill.close()
        if error is not None:
            job.put(error)
        job.put(_DONE)

    def _run_alone(self, job: Job) -> None:
        """A model that cannot batch: one request at a time, with the same cancellation,
        time limit and shutdown."""
        if job.cancelled.is_set() or self.stopping.is_set():
            return self._end_unstarted(job)
        self.admitting = job  # an exception here reaches _failed, which ends the job
        self.queued.discard(job)
        cache = self.pool.take(list(job.request.tokens))
        error = None
        pieces = self.model.stream(job.request, cache=cache, on_prefill=job.on_prefill,
                                   cut=self._cut(), top_logprobs=job.top_logprobs)
        for piece in pieces:
            self._collect(block=False)  # queued clients that leave meanwhile end now
            self._drop_cancelled()
            if job.cancelled.is_set():
                break
            if self.stopping.is_set():
                error = ShuttingDown("the server is shutting down")
                break
            job.put(piece)
        pieces.close()
        self.admitting = None
        self.pool.give_back(cache)
        self._close(job, error)

    # -- the asyncio side -------------------------------------------------------------

    async def generate(self, request: Request, on_prefill=None,
                       top_logprobs: int | None = None) -> AsyncIterator[Piece]:
        """The reply's pieces; the last carries the stats. Leaving early cancels the job.
        ``on_prefill`` (a callback with ``close()``) is called from the engine thread."""
        async for item in self._submit(Job(request, asyncio.get_running_loop(), on_prefill,
                                           top_logprobs)):
            yield item

    async def compute(self, work: Callable[[], Iterator[list]]) -> list:
        """Run ``work`` on the engine thread, a chunk per step between the batch's steps;
        every chunk's results in order (scores)."""
        return await self._result(Job(None, asyncio.get_running_loop(), kind="compute",
                                      work=work))

    async def pooled(self, rows: list[list[int]], *, dimensions: int | None = None,
                     rerank: bool = False) -> list:
        """Embeddings (or rerank scores) of token rows as [(row index, result)], pooled on
        the engine thread together with the other such requests waiting beside it."""
        return await self._result(Job(None, asyncio.get_running_loop(), kind="compute",
                                      pooled=Pooled(rows, dimensions, rerank)))

    async def _result(self, job: Job) -> list:
        results: list = []
        async for item in self._submit(job):
            results = item
        return results

    async def _submit(self, job: Job) -> AsyncIterator:
        if self.closing.is_set():
            raise ShuttingDown("the server is shutting down")
        self.queued.add(job)
        self.jobs.put(job)
        try:
            while True:
                item = await job.events.get()
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            job.cancelled.set()

    @property
    def waiting_count(self) -> int:
        """Requests queued and not cancelled (a client that left is not waiting, even
        before the engine thread has ended its job)."""
        return sum(not j.cancelled.is_set() for j in list(self.queued))

    @property
    def busy(self) -> int:
        """Requests running or waiting."""
        return len(self.running) + len(self.speculating) + self.waiting_count

    @property
    def state(self) -> str:
        """The engine for /health: "ok", or "stopped" once its thread has ended (it should
        not while serving)."""
        return "ok" if self.alive or self.closed else "stopped"
