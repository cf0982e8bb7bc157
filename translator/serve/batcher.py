"""A queue that batches work from many concurrent callers into few decode calls.

Each HTTP request submits its sentences as one job. A worker thread takes the oldest job,
waits up to `wait_ms` for more jobs with the same decoding key (beam size, n-best) until
`max_batch` sentences are gathered, decodes them with one call and hands each job its own
results, in order. Decoding on worker threads keeps the event loop free (a health check
answers while a batch runs).

A job larger than what is left of a batch is split: its first chunk goes into this batch and
the job goes to the back of the queue, so that a client sending 1,000 sentences shares the
model with the others batch by batch instead of holding it for the whole job. A job is
withdrawn by cancelling its future (a timeout, a client that went away): queued, it is never
decoded; running, its remaining chunks are skipped.

A key can instead be decoded as a stream (`Stream`: greedy decoding of the native engine,
`translator.decode.continuous`): its sentences join the running batch at the next step and
leave it, answered, at the step they end, so a sentence never waits for a batch to finish, and
the worker starts at once (no gathering wait). Jobs still enter in queue order and large jobs
in chunks; when the oldest waiting job has another key, the stream takes no more and finishes
what it holds, then that job runs.

Nothing here knows about HTTP or models: `decode(key, items) -> results` and the streams are
any functions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("translator")
_ANY: Hashable = object()  # `_pop_batch` without a key: whichever the oldest job has
Item = TypeVar("Item")
Result = TypeVar("Result")


class BatcherClosed(RuntimeError):
    """The batcher was closed before the job could run."""


class QueueFull(RuntimeError):
    """The queue holds too many sentences to take this job now; `retry_after` seconds is a
    guess of when it will have room."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Stream(Protocol):
    """Decodes items a step at a time, in a batch they join and leave (see the module's
    docstring). Tags are the batcher's; each item's result comes back with its tag."""

    def __len__(self) -> int:
        """Items decoding now."""

    def admit(self, items: list[Any], tags: list[Hashable]) -> list[tuple[Hashable, Any]]:
        """Start decoding `items`; return the results of any that need no step."""

    def step(self) -> list[tuple[Hashable, Any]]:
        """One step of every item decoding; the results of those that ended."""

    def drop(self, withdrawn: Callable[[Hashable], bool]) -> list[Hashable]:
        """Stop decoding the items whose tag `withdrawn` accepts; their tags."""

    # A stream whose `step` waits until an item ends (one in another process) also has
    # `wake()`, which makes a waiting `step` return at once: the batcher calls it when a job
    # of its key is queued or withdrawn.


@dataclass(eq=False)
class _Job(Generic[Item, Result]):
    key: Hashable
    items: list[Item]
    future: concurrent.futures.Future[list[Result]] = field(
        default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)
    handed: int = 0  # items given to batches so far
    decoded: int = 0  # items whose results are in
    results: list[Any] = field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.items) - self.handed


@dataclass
class _Chunk:
    job: _Job[Any, Any]
    start: int
    stop: int


class Batcher(Generic[Item, Result]):
    """Batches jobs from many threads or event loops into calls of `decode(key, items)`.

    `decode` must return one result per item, in order; jobs with different keys are never
    mixed in one call, and no call holds more than `max_batch` items. An exception from
    `decode` fails the jobs of that call only. `workers` threads decode at once (for an
    engine that runs concurrent batches, such as CTranslate2 with inter_threads > 1);
    `max_queued` bounds the items waiting (0: no bound). `stream(key)` gives a `Stream` for
    the keys decoded step by step (None for the others); a stream holds at most `max_batch`
    items.
    """

    def __init__(self, decode: Callable[[Hashable, list[Item]], Sequence[Result]], *,
                 max_batch: int = 64, wait_ms: float = 5.0, name: str = "batcher",
                 workers: int = 1, max_queued: int = 0,
                 stream: Callable[[Hashable], Stream | None] | None = None) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError("max_batch and workers must be at least 1")
        if wait_ms < 0 or max_queued < 0:
            raise ValueError("wait_ms and max_queued must not be negative")
        if stream is not None and workers > 1:
            raise ValueError("a batcher with streams has one worker (a stream is not shared)")
        self._decode = decode
        self._stream = stream or (lambda key: None)
        self.max_batch = max_batch
        self.wait = wait_ms / 1000.0
        self.max_queued = max_queued
        self._pending: deque[_Job[Item, Result]] = deque()
        self._stream_keys: dict[Hashable, bool] = {}
        self._queued = 0  # items not yet handed to a batch, over all pending jobs
        self._cond = threading.Condition()
        self._closed = False
        # Counters for /health and tests; written under the lock.
        self.batches = 0
        self.items_decoded = 0
        self.largest_batch = 0
        self.steps = 0  # stream steps, and the items they decoded, for the mean batch
        self.step_items = 0
        self._running = 0
        self._decode_seconds = 0.0
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- callers --------------------------------------------------------------------------

    def submit(self, items: Sequence[Item], key: Hashable = None,
               ) -> concurrent.futures.Future[list[Result]]:
        """Queue `items` as one job; the future gives their results in order. Cancelling the
        future withdraws the job: queued, it is never decoded; running, its later chunks are
        not. Raises QueueFull past `max_queued` (an empty queue takes any job)."""
        job: _Job[Item, Result] = _Job(key, list(items))
        if not job.items:
            job.future.set_result([])
            return job.future
        job.results = [None] * len(job.items)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            if self.max_queued and self._queued and \
                    self._queued + len(job.items) > self.max_queued:
                raise QueueFull(f"the queue holds {self._queued} sentences; it takes at most "
                                f"{self.max_queued}", self._retry_after())
            self._pending.append(job)
            self._queued += len(job.items)
            self._cond.notify()
        wake = getattr(self._stream(key), "wake", None) if self._streamed(key) else None
        if wake is not None:
            wake()
            job.future.add_done_callback(lambda f: wake() if f.cancelled() else None)
        return job.future

    async def run(self, items: Sequence[Item], key: Hashable = None,
                  timeout: float | None = None) -> list[Result]:
        """`submit` for asyncio code: await the results. After `timeout` seconds raises
        TimeoutError (asyncio's, which is the builtin from Python 3.11) and withdraws the
        job; cancelling the awaiting task withdraws it too."""
        future = self.submit(items, key)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        finally:
            future.cancel()  # no-op once done; otherwise the worker skips what is left

    @property
    def queued(self) -> int:
        """Items waiting in the queue (not counting batches being decoded)."""
        return self._queued

    @property
    def busy(self) -> bool:
        """Whether a batch is being decoded right now."""
        return self._running > 0

    def _retry_after(self) -> int:
        """Seconds until the queue has drained at the rate seen so far (at least 1)."""
        if not self.items_decoded or self._decode_seconds <= 0:
            return 1
        rate = self.items_decoded / self._decode_seconds
        return max(1, min(60, math.ceil(self._queued / rate)))

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking jobs, fail the queued ones with BatcherClosed, and wait up to `timeout`
        seconds for running batches to finish."""
        with self._cond:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._queued = 0
            self._cond.notify_all()
        for job in left:
            _fail(job, BatcherClosed("the server is shutting down"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # -- the workers ----------------------------------------------------------------------

    def _take(self) -> list[_Chunk] | None:
        """Block until a batch is ready; return its chunks (all of one key), or None when the
        batcher is closed."""
        with self._cond:
            while True:
                self._drop_withdrawn()
                while not self._pending and not self._closed:
                    self._cond.wait()
                    self._drop_withdrawn()
                if self._closed:
                    return None
                # Gather for `wait` seconds after the oldest job arrived: under load the
                # oldest job has already waited through the previous batch, so no time is
                # added; a lone request waits a few milliseconds at most.
                first = self._pending[0]
                # A stream's key needs no gathering: later jobs join it at the next step.
                deadline = first.enqueued + (0.0 if self._streamed(first.key) else self.wait)
                while not self._closed and self._ready_size(first.key) < self.max_batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return None
                chunks = self._pop_batch()
                if chunks:
                    self._running += 1
                    return chunks

    def _streamed(self, key: Hashable) -> bool:
        """Whether `key` is decoded as a stream (asked once per key)."""
        known = self._stream_keys.get(key)
        if known is None:
            known = self._stream_keys[key] = self._stream(key) is not None
        return known

    def _drop_withdrawn(self) -> None:
        """Forget cancelled jobs (called with the lock held)."""
        if any(job.future.done() for job in self._pending):
            for job in [j for j in self._pending if j.future.done()]:
                self._queued -= job.left
            self._pending = deque(j for j in self._pending if not j.future.done())

    def _ready_size(self, key: Hashable) -> int:
        return sum(job.left for job in self._pending if job.key == key)

    def _pop_batch(self, space: int | None = None, key: Hashable = _ANY) -> list[_Chunk]:
        """The oldest job's key; in queue order, every job of that key that fits whole in
        `space` (default `max_batch`). The first job, when larger, gives its first `space`
        items and goes to the back of the queue, behind the others. With `key`, nothing
        unless the oldest job has that key. Called with the lock held."""
        self._drop_withdrawn()
        if not self._pending or (key is not _ANY and self._pending[0].key != key):
            return []
        key = self._pending[0].key
        chunks: list[_Chunk] = []
        space = self.max_batch if space is None else space
        keep: deque[_Job[Item, Result]] = deque()
        requeue: list[_Job[Item, Result]] = []
        for job in self._pending:
            if job.key == key and (job.left <= space or not chunks):
                n = min(job.left, space)
                chunks.append(_Chunk(job, job.handed, job.handed + n))
                job.handed += n
                space -= n
                self._queued -= n
                if job.left:
                    requeue.append(job)
            else:
                keep.append(job)
        keep.extend(requeue)
        self._pending = keep
        return chunks

    def _work(self) -> None:
        while True:
            chunks = self._take()
            if chunks is None:
                return
            stream = self._stream(chunks[0].job.key)
            if stream is not None:
                self._run_stream(stream, chunks)
                continue
            items = [item for c in chunks for item in c.job.items[c.start:c.stop]]
            start = time.monotonic()
            try:
                results = list(self._decode(chunks[0].job.key, items))
                if len(results) != len(items):
                    raise RuntimeError(f"decode returned {len(results)} results for "
                                       f"{len(items)} items")
            except Exception as exc:  # a worker must survive any failure of one batch
                log.exception("decoding a batch of %d items failed", len(items))
                with self._cond:
                    self._running -= 1
                for c in chunks:
                    _fail(c.job, exc)
                continue
            with self._cond:
                self._running -= 1
                self._decode_seconds += time.monotonic() - start
                self.batches += 1
                self.items_decoded += len(items)
                self.largest_batch = max(self.largest_batch, len(items))
                finished = self._store(chunks, results)
            for job in finished:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_result(job.results)

    def _run_stream(self, stream: Stream, chunks: list[_Chunk]) -> None:
        """Decode `chunks` as a stream, taking in the queue's later jobs of the same key at
        every step, until the stream is empty."""
        key = chunks[0].job.key
        jobs: set[_Job[Any, Any]] = set()  # with items in the stream
        try:
            while True:
                start = time.monotonic()
                ended = []
                for c in chunks:
                    jobs.add(c.job)
                    tags = [(c.job, i) for i in range(c.start, c.stop)]
                    ended += stream.admit(c.job.items[c.start:c.stop], tags)
                if any(job.future.done() for job in jobs):  # withdrawn while decoding
                    stream.drop(lambda tag: tag[0].future.done())  # type: ignore[index]
                    jobs = {job for job in jobs if not job.future.done()}
                rows = len(stream)
                ended += stream.step()
                with self._cond:
                    self._decode_seconds += time.monotonic() - start
                    self.steps += rows > 0
                    self.step_items += rows
                    self.largest_batch = max(self.largest_batch, rows)
                    self.items_decoded += len(ended)
                    finished = self._store_tagged(ended)
                    jobs.difference_update(finished)
                    empty = not len(stream)
                    if empty:
                        self.batches += 1
                        self._running -= 1
                    else:
                        chunks = [] if self._closed else \
                            self._pop_batch(self.max_batch - len(stream), key)
                for job in finished:
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_result(job.results)
                if empty:
                    return
        except Exception as exc:  # a worker must survive any failure of one stream
            log.exception("decoding a stream of %d items failed", len(stream))
            stream.drop(lambda tag: True)
            with self._cond:
                self._running -= 1
            for job in jobs | {c.job for c in chunks}:
                _fail(job, exc)

    @staticmethod
    def _store_tagged(ended: list[tuple[Hashable, Any]]) -> list[_Job[Any, Any]]:
        """Put each ended item's result into its job; the jobs now complete (not withdrawn
        ones: their remaining items are gone)."""
        finished = []
        for (job, i), result in ended:  # type: ignore[misc]
            job.results[i] = result
            job.decoded += 1
            if job.decoded == len(job.items):
                finished.append(job)
        return finished

    @staticmethod
    def _store(chunks: list[_Chunk], results: list[Any]) -> list[_Job[Any, Any]]:
        """Put each chunk's results into its job; the jobs now complete."""
        finished, offset = [], 0
        for c in chunks:
            n = c.stop - c.start
            c.job.results[c.start:c.stop] = results[offset:offset + n]
            offset += n
            c.job.decoded += n
            if c.job.decoded == len(c.job.items):
                finished.append(c.job)
        return finished


def _fail(job: _Job[Any, Any], exc: BaseException) -> None:
    """Fail a job's future unless it is already done (cancelled, or failed by an earlier
    chunk)."""
    if job.future.done():
        return
    try:
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(exc)
    except RuntimeError:  # finished meanwhile (another worker's chunk of the same job)
        pass
