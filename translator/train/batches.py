"""The training input pipeline: an epoch's batches, collated ahead of the step.

The order stays a pure function of (seed, epoch): `BucketBatchSampler` decides every epoch's
batch list from those two alone, `epoch_groups` cuts this rank's share of it into optimizer
steps (gradient accumulation groups), and `StepBatches` collates the groups from a given one
onward in a `torch.utils.data.DataLoader`, so a resumed epoch starts at its first undone step
and no batch is collated twice.

Where the collating runs: in a background thread of this process (`Prefetcher`), a few steps
ahead of the loop. Collating a batch is a handful of tensor operations (about a millisecond),
against tens or hundreds of milliseconds of forward and backward; a thread hides it fully,
whereas DataLoader worker processes would compete with the step for the cores on a small CPU
machine (every core already runs the step's matrix products) and copy the dataset into each
worker where processes are spawned rather than forked. Pinned host memory, so that the copy to
the GPU can overlap the step, only when the device is CUDA.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from translator.data.dataset import Batch, BilingualDataset, BucketBatchSampler, collate
from translator.train.distributed import Dist

PREFETCH_STEPS = 4
"""Optimizer steps collated ahead of the loop: enough to ride out a slow batch, few enough
that the memory held (host tensors of a few batches) stays small."""


def epoch_groups(sampler: BucketBatchSampler, dist_info: Dist, epoch: int,
                 accum_steps: int) -> list[list[list[int]]]:
    """This rank's optimizer steps of epoch `epoch`, each a list of `accum_steps` (or, last,
    fewer) micro-batches of dataset indices: every world-th batch of the shuffled list, cut
    so that all ranks take the same number of steps."""
    sampler.set_epoch(epoch)
    batches = sampler.batches()
    world = dist_info.world
    mine = batches[dist_info.rank:len(batches) // world * world:world]
    return [mine[i:i + accum_steps] for i in range(0, len(mine), accum_steps)]


@dataclass
class StepBatch:
    """The micro-batches of one optimizer step (on the host) and their non-pad source +
    target tokens, counted while collating so the step needs no device read for them."""

    micro: list[Batch]
    tokens: int


def _collate_counted(items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Batch, int]:
    """`collate`, plus the batch's non-pad source ([SOS] x [EOS]) and label (y [EOS])
    tokens: the lengths are known here, no need to count pads."""
    tokens = sum(len(s) + 2 + len(t) + 1 for s, t in items)
    return collate(items), tokens


def _pinned(batch: Batch) -> Batch:
    return Batch(*(t.pin_memory() for t in (batch.src, batch.tgt_in, batch.tgt_out,
                                            batch.src_mask)))


class StepBatches:
    """The collated steps of one epoch from step `start` on, iterated ahead of the loop."""

    def __init__(self, data: BilingualDataset, groups: list[list[list[int]]], start: int,
                 pin: bool) -> None:
        todo = groups[start:]
        self.sizes = [len(g) for g in todo]
        # A private generator: creating a DataLoader iterator otherwise draws its base seed
        # from the global torch RNG, from the prefetch thread at an unpredictable moment,
        # which would change the dropout masks and break exact resume.
        self.loader = torch.utils.data.DataLoader(
            data, batch_sampler=[b for g in todo for b in g], collate_fn=_collate_counted,
            generator=torch.Generator())
        self.pin = pin

    def _steps(self) -> Iterator[StepBatch]:
        micro = iter(self.loader)
        for size in self.sizes:
            batches, tokens = [], 0
            for _ in range(size):
                batch, n = next(micro)
                batches.append(_pinned(batch) if self.pin else batch)
                tokens += n
            yield StepBatch(batches, tokens)

    def __len__(self) -> int:
        return len(self.sizes)

    def prefetch(self, depth: int = PREFETCH_STEPS) -> Prefetcher:
        """An iterator over the steps, collated `depth` ahead in a background thread."""
        return Prefetcher(self._steps(), depth)


_END = object()


class _Failure:
    """An exception raised while collating, handed to the loop to raise there."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher:
    """Runs `source` in a daemon thread, up to `depth` items ahead; `close` stops it early
    (a run that stops mid-epoch)."""

    def __init__(self, source: Iterator[Any], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), daemon=True,
                                        name="translator-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Queue `item` unless asked to stop; waits while the queue is full."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the loop's thread
            self._put(_Failure(exc))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # a later next() stops again instead of blocking
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread and drop what it collated."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
