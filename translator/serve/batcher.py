"""A queue that batches work from many concurrent callers into few decode calls.

Each HTTP request submits its sentences as one job. A single worker thread takes the oldest
job, waits up to `wait_ms` for more jobs with the same decoding key (beam size, n-best) until
`max_batch` sentences are gathered, decodes them all with one call and hands each job its
own results, in order. Decoding on the worker thread keeps the event loop free (a health
check answers while a batch runs), and one worker means the model is never used by two
batches at once.

Nothing here knows about HTTP or models: `decode(key, items) -> results` is any function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("translator")
Item = TypeVar("Item")
Result = TypeVar("Result")


class BatcherClosed(RuntimeError):
    """The batcher was closed before the job could run."""


@dataclass
class _Job(Generic[Item, Result]):
    key: Hashable
    items: list[Item]
    future: concurrent.futures.Future[list[Result]] = field(
        default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher(Generic[Item, Result]):
    """Batches jobs from many threads or event loops into calls of `decode(key, items)`.

    `decode` must return one result per item, in order; jobs with different keys are never
    mixed in one call. A job larger than `max_batch` is decoded whole, alone (its decode call
    may batch internally). An exception from `decode` fails the jobs of that call only.
    """

    def __init__(self, decode: Callable[[Hashable, list[Item]], Sequence[Result]], *,
                 max_batch: int = 64, wait_ms: float = 5.0, name: str = "batcher") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if wait_ms < 0:
            raise ValueError("wait_ms must not be negative")
        self._decode = decode
        self.max_batch = max_batch
        self.wait = wait_ms / 1000.0
        self._pending: deque[_Job[Item, Result]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # Counters for /health and tests; written by the worker only.
        self.batches = 0
        self.items_decoded = 0
        self.largest_batch = 0
        self._busy = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # -- callers --------------------------------------------------------------------------

    def submit(self, items: Sequence[Item], key: Hashable = None,
               ) -> concurrent.futures.Future[list[Result]]:
        """Queue `items` as one job; the future gives their results in order. Cancelling the
        future before its batch starts takes the job out of the queue."""
        job: _Job[Item, Result] = _Job(key, list(items))
        if not job.items:
            job.future.set_result([])
            return job.future
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self._pending.append(job)
            self._cond.notify()
        return job.future

    async def run(self, items: Sequence[Item], key: Hashable = None,
                  timeout: float | None = None) -> list[Result]:
        """`submit` for asyncio code: await the results. After `timeout` seconds raises
        TimeoutError and withdraws the job if it has not started yet (a job already being
        decoded finishes, and its results are dropped)."""
        future = asyncio.wrap_future(self.submit(items, key))
        # wait_for cancels the wrapper on timeout, and wrap_future passes the cancellation on
        # to the concurrent future, which the worker then skips.
        return await asyncio.wait_for(future, timeout)

    @property
    def queued(self) -> int:
        """Items waiting in the queue (not counting a batch being decoded)."""
        with self._cond:
            return sum(len(job.items) for job in self._pending)

    @property
    def busy(self) -> bool:
        """Whether a batch is being decoded right now."""
        return self._busy

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking jobs, fail the queued ones with BatcherClosed, and wait up to `timeout`
        seconds for a running batch to finish."""
        with self._cond:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed("the server is shutting down"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the worker -----------------------------------------------------------------------

    def _take(self) -> list[_Job[Item, Result]] | None:
        """Block until a batch is ready; return its jobs (all with one key), or None when the
        batcher is closed."""
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                # Gather for `wait` seconds after the oldest job arrived: under load the
                # oldest job has already waited through the previous batch, so no time is
                # added; a lone request waits a few milliseconds at most.
                first = self._pending[0]
                deadline = first.enqueued + self.wait
                while not self._closed and self._ready_size(first.key) < self.max_batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return None
                jobs = self._pop_batch()
                if jobs:
                    return jobs
                # Every job taken had been cancelled (timed out): look again.

    def _ready_size(self, key: Hashable) -> int:
        return sum(len(job.items) for job in self._pending if job.key == key)

    def _pop_batch(self) -> list[_Job[Item, Result]]:
        """Take the oldest job and, in order, the later jobs of its key that still fit the
        sentence budget; cancelled jobs are dropped on the way. Called with the lock held."""
        key = self._pending[0].key
        taken: list[_Job[Item, Result]] = []
        size = 0
        keep: deque[_Job[Item, Result]] = deque()
        while self._pending:
            job = self._pending.popleft()
            if job.future.cancelled():
                continue
            fits = job.key == key and (not taken or size + len(job.items) <= self.max_batch)
            if fits and job.future.set_running_or_notify_cancel():
                taken.append(job)
                size += len(job.items)
            elif not job.future.cancelled():
                keep.append(job)
        self._pending = keep
        return taken

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            items = [item for job in jobs for item in job.items]
            self._busy = True
            try:
                results = list(self._decode(jobs[0].key, items))
                if len(results) != len(items):
                    raise RuntimeError(f"decode returned {len(results)} results for "
                                       f"{len(items)} items")
            except Exception as exc:  # the worker must survive any failure of one batch
                log.exception("decoding a batch of %d items failed", len(items))
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            self.batches += 1
            self.items_decoded += len(items)
            self.largest_batch = max(self.largest_batch, len(items))
            start = 0
            for job in jobs:
                job.future.set_result(results[start:start + len(job.items)])
                start += len(job.items)
