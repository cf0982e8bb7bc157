"""Token ids of a corpus, length-bucketed batches padded per batch, and their masks.

A `BilingualDataset` keeps every sentence's ids in one flat int32 tensor per side plus offsets,
not as Python lists of tensors, so a large corpus costs 4 bytes a token. `from_dataset`
tokenizes an Arrow split with a batched `datasets.map` whose result is cached next to the
corpus, keyed by the tokenizers' fingerprints, so a second run reads the ids instead of
tokenizing again. A batch is padded to its own longest sentence; the encoder input is
`[SOS] x [EOS]`, the decoder input `[SOS] y`, the label `y [EOS]`.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID, TextTokenizer
from translator.model.transformer import causal_mask, padding_mask

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

    from translator.data.corpus import CorpusMix

log = logging.getLogger("translator")
# Part of the tokenized-corpus cache key: bump it when `_encode_batch` changes its output.
_TOKENIZE_VERSION = "ids-1"


class _ArrowIds:
    """One side's token ids read in place from the chunks of a memory-mapped Arrow column
    (list<int32>): per chunk a zero-copy numpy view of its values and offsets, so that a
    split of millions of pairs costs no heap memory for its ids; the kernel pages them in
    (and out) as batches read them."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.values = [c.values.to_numpy(zero_copy_only=False) for c in column.chunks]
        self.offsets = [c.offsets.to_numpy(zero_copy_only=False) for c in column.chunks]
        lengths = [len(c) for c in column.chunks]
        # Python ints: bisect on a list is faster per lookup than numpy on one scalar.
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()

    def lengths(self) -> np.ndarray:
        """Every row's length (int32), from the offsets alone: no id is read."""
        if not self.offsets:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([np.diff(o) for o in self.offsets]).astype(np.int32, copy=False)

    def row(self, r: int) -> np.ndarray:
        """The ids of row r (a view into the mapped file)."""
        c = bisect.bisect_right(self.starts, r) - 1
        off = self.offsets[c]
        k = r - self.starts[c]
        return self.values[c][off[k]:off[k + 1]]


class BilingualDataset(torch.utils.data.Dataset):
    """Pairs of id sequences (without special tokens) that fit in `max_len` with them and,
    when `max_ratio` is set, whose longer side has at most `max_ratio` times the tokens of the
    shorter (the train split's length-ratio filter: here, because only here are the token
    lengths known).

    Built from lists (valid, test, tests) the ids live in flat int32 tensors; built from an
    Arrow split (`from_dataset`, the train split) they stay in the memory-mapped Arrow file and
    only numpy arrays are kept per pair (`kept`, `src_lengths`, `tgt_lengths`,
    `token_counts`), about 16 bytes a pair."""

    kept: np.ndarray
    """Positions in the input of the pairs kept (ascending int64): row i of the dataset is
    input pair `kept[i]`."""
    src_lengths: np.ndarray
    """Source lengths in tokens (specials excluded) of the pairs kept (int32)."""
    tgt_lengths: np.ndarray
    """Target lengths in tokens (specials excluded) of the pairs kept (int32)."""
    token_counts: np.ndarray
    """Padded size of each pair kept in a batch: the longer of its encoder ([SOS] x [EOS])
    and decoder ([SOS] y) inputs."""
    mix: CorpusMix | None = None
    """With several corpora (`data.corpora`): where each one's pairs lie in this dataset and
    its weight, from which the batch sampler draws each epoch; None: every pair once."""

    def __init__(self, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                 max_len: int, name: str = "data", max_ratio: float = 0.0) -> None:
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"{len(src_ids)} source but {len(tgt_ids)} target sequences")
        src_flat, src_off = _flatten(src_ids)
        tgt_flat, tgt_off = _flatten(tgt_ids)
        self._setup(src_flat, src_off, tgt_flat, tgt_off, max_len, name, max_ratio)

    def _filter(self, src_lens: np.ndarray, tgt_lens: np.ndarray, max_len: int, name: str,
                max_ratio: float) -> np.ndarray:
        """The pairs that fit `max_len`, then `max_ratio` (a boolean mask); log and count
        how many each filter drops (`dropped`, `dropped_ratio`); keep the survivors'
        lengths and padded sizes as compact numpy arrays."""
        fits = (src_lens + 2 <= max_len) & (tgt_lens + 1 <= max_len)
        n = len(src_lens)
        self.dropped = int(n - fits.sum())
        if self.dropped:
            log.warning("%s: dropped %d of %d pairs longer than data.max_len=%d tokens",
                        name, self.dropped, n, max_len)
        self.dropped_ratio = 0
        if max_ratio > 0:
            # Cross-multiplied, so that an empty side (length 0) needs no special case.
            within = np.maximum(src_lens, tgt_lens) <= max_ratio * np.minimum(src_lens, tgt_lens)
            self.dropped_ratio = int((fits & ~within).sum())
            fits &= within
            if self.dropped_ratio:
                log.warning("%s: dropped %d of %d pairs whose length ratio exceeds "
                            "data.max_ratio=%g (in tokens)", name, self.dropped_ratio, n,
                            max_ratio)
        self.kept = np.flatnonzero(fits)
        self.src_lengths = src_lens[self.kept].astype(np.int32)
        self.tgt_lengths = tgt_lens[self.kept].astype(np.int32)
        # What a pair costs in a padded batch: the longer of its encoder and decoder inputs.
        self.token_counts = np.maximum(self.src_lengths + 2, self.tgt_lengths + 1)
        self._lists: dict[str, list[int]] = {}
        self._arrow: tuple[_ArrowIds, _ArrowIds] | None = None
        return fits

    def _setup(self, src_flat: np.ndarray, src_off: np.ndarray, tgt_flat: np.ndarray,
               tgt_off: np.ndarray, max_len: int, name: str, max_ratio: float = 0.0) -> None:
        """Drop the pairs that do not fit `max_len`, then those beyond `max_ratio` (logging
        how many of each: `dropped`, `dropped_ratio`) and store the rest as flat int32
        tensors with int64 offsets."""
        fits = self._filter(np.diff(src_off), np.diff(tgt_off), max_len, name, max_ratio)
        self._src = _select(src_flat, src_off, fits)
        self._tgt = _select(tgt_flat, tgt_off, fits)

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]], src_tok: TextTokenizer,
                   tgt_tok: TextTokenizer, max_len: int, name: str = "data") -> BilingualDataset:
        """Tokenize text pairs (batched, in parallel inside `tokenizers`)."""
        src = src_tok.encode_batch([s for s, _ in pairs])
        tgt = tgt_tok.encode_batch([t for _, t in pairs])
        return cls(src, tgt, max_len, name)

    @classmethod
    def from_dataset(cls, ds: datasets.Dataset, src_tok: TextTokenizer, tgt_tok: TextTokenizer,
                     max_len: int, name: str = "data", max_ratio: float = 0.0,
                     num_proc: int = 0, mix: CorpusMix | None = None) -> BilingualDataset:
        """Tokenize an Arrow split with columns `src`/`tgt` (see `translator.data.corpus`) through a
        cached batched `datasets.map` (`num_proc` processes, 0: see `map_processes`) and read
        the ids in place from its memory-mapped result, without Python lists. `mix` (the
        corpus' `Corpus.mix`, over `ds`'s rows) becomes this dataset's `mix`, over the pairs
        the length filters keep."""
        if len(ds) == 0:
            return cls([], [], max_len, name, max_ratio)
        table = tokenize(ds, src_tok, tgt_tok, num_proc).data
        self = cls.__new__(cls)
        sides = (_ArrowIds(table.column("src_ids")), _ArrowIds(table.column("tgt_ids")))
        self._filter(sides[0].lengths(), sides[1].lengths(), max_len, name, max_ratio)
        self._arrow = sides
        self._src = self._tgt = None
        self._table = table  # keeps the mapped files open while the views are in use
        self.mix = mix.kept_only(self.kept) if mix is not None else None
        return self

    # Python lists of the per-pair numbers, made on first use (small splits and tests use
    # them; the training path reads the numpy arrays).
    def _as_list(self, name: str, array: np.ndarray) -> list[int]:
        if name not in self._lists:
            self._lists[name] = array.tolist()
        return self._lists[name]

    @property
    def kept_index(self) -> list[int]:
        """Positions in the input of the pairs kept, ascending."""
        return self._as_list("kept_index", self.kept)

    @property
    def src_lens(self) -> list[int]:
        """Source lengths in tokens (specials excluded) of the pairs kept."""
        return self._as_list("src_lens", self.src_lengths)

    @property
    def tgt_lens(self) -> list[int]:
        """Target lengths in tokens (specials excluded) of the pairs kept."""
        return self._as_list("tgt_lens", self.tgt_lengths)

    def _flat(self, side: int) -> tuple[Tensor, Tensor]:
        """One side as a flat int32 tensor and offsets; built (a copy of every id) on first
        use when the ids are in Arrow, for inspection and small data only."""
        mem = self._src if side == 0 else self._tgt
        if mem is None:
            ids = [self[i][side].numpy() for i in range(len(self))]
            flat, off = _flatten(ids)
            mem = (torch.from_numpy(flat), torch.from_numpy(off))
            if side == 0:
                self._src = mem
            else:
                self._tgt = mem
        return mem

    src_flat = property(lambda self: self._flat(0)[0], doc="Source ids, flat (int32).")
    src_off = property(lambda self: self._flat(0)[1], doc="Source offsets into src_flat.")
    tgt_flat = property(lambda self: self._flat(1)[0], doc="Target ids, flat (int32).")
    tgt_off = property(lambda self: self._flat(1)[1], doc="Target offsets into tgt_flat.")

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if self._arrow is not None:
            r = int(self.kept[i])
            src, tgt = self._arrow
            # A copy: Arrow's mapped buffers are read-only, and a batch is small.
            return (torch.from_numpy(src.row(r).copy()), torch.from_numpy(tgt.row(r).copy()))
        (src_flat, src_off), (tgt_flat, tgt_off) = self._src, self._tgt
        return (src_flat[src_off[i]:src_off[i + 1]], tgt_flat[tgt_off[i]:tgt_off[i + 1]])

    def token_count(self, i: int) -> int:
        """Padded size of pair i in a batch: the longer of its encoder and decoder inputs."""
        return int(self.token_counts[i])


def _flatten(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def _select(flat: np.ndarray, offsets: np.ndarray, keep: np.ndarray) -> tuple[Tensor, Tensor]:
    """The sequences where `keep` is True, as a flat tensor and its offsets."""
    lens = np.diff(offsets)
    if keep.all():
        new_flat, new_off = flat, offsets
    else:
        token_keep = np.repeat(keep, lens)
        new_flat = flat[token_keep]
        new_off = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lens[keep], out=new_off[1:])
    # A copy: Arrow hands out read-only views of its (memory-mapped) buffers.
    return (torch.from_numpy(np.array(new_flat, dtype=np.int32)),
            torch.from_numpy(np.array(new_off, dtype=np.int64)))


def _encode_batch(table: pa.Table, src_tok: TextTokenizer, tgt_tok: TextTokenizer) -> pa.Table:
    import pyarrow as pa

    ids_type = pa.list_(pa.int32())
    return pa.table({
        "src_ids": pa.array(src_tok.encode_batch(table.column("src").to_pylist()), ids_type),
        "tgt_ids": pa.array(tgt_tok.encode_batch(table.column("tgt").to_pylist()), ids_type),
    })


# From this many pairs on, tokenizing in two processes pays for starting them.
PARALLEL_MAP_PAIRS = 200_000


def map_processes(n_pairs: int, num_proc: int = 0) -> int:
    """Processes for tokenizing `n_pairs`: `num_proc` when given, else 2 (or the core count,
    if smaller) from PARALLEL_MAP_PAIRS pairs on, else 1."""
    if num_proc > 0:
        return num_proc
    return min(2, os.cpu_count() or 1) if n_pairs >= PARALLEL_MAP_PAIRS else 1


def tokenize(ds: datasets.Dataset, src_tok: TextTokenizer, tgt_tok: TextTokenizer,
             num_proc: int = 0) -> datasets.Dataset:
    """Columns `src_ids`/`tgt_ids` (int32 lists) of a `src`/`tgt` split, by a batched
    `datasets.map` in `map_processes(len(ds), num_proc)` processes. For a split backed by
    cache files the result is cached beside them under a key made of the split's and both
    tokenizers' fingerprints, and read back on later runs."""
    import datasets

    key = "\x1f".join([_TOKENIZE_VERSION, ds._fingerprint, src_tok.fingerprint,
                       tgt_tok.fingerprint])
    features = datasets.Features({"src_ids": datasets.Sequence(datasets.Value("int32")),
                                  "tgt_ids": datasets.Sequence(datasets.Value("int32"))})
    procs = min(map_processes(len(ds), num_proc), max(len(ds), 1))
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    # Forked workers would each warn that tokenizers turns its thread pool off after a fork
    # (it does, which is what we want: one thread per process); saying so up front is silent.
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    if procs > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return ds.with_format("arrow").map(
            _encode_batch, batched=True, batch_size=10_000, remove_columns=ds.column_names,
            features=features, fn_kwargs={"src_tok": src_tok, "tgt_tok": tgt_tok},
            num_proc=procs if procs > 1 else None,
            new_fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16],
        ).with_format(None)
    finally:
        if procs > 1:
            if parallelism is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = parallelism
        if bars:
            datasets.enable_progress_bars()


@dataclass
class Batch:
    """One padded batch. src: [B, S]; tgt_in, tgt_out: [B, T]; src_mask: [B, 1, 1, S]."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    src_mask: Tensor

    @property
    def tgt_mask(self) -> Tensor:
        """[B, 1, T, T] decoder self-attention mask: causal and padding combined. The model
        does not need it (see `translator.model.transformer`); it is here for inspection and
        tests."""
        return padding_mask(self.tgt_in, PAD_ID).transpose(-1, -2) & padding_mask(
            self.tgt_in, PAD_ID) & causal_mask(self.tgt_in.size(1), self.tgt_in.device)

    @property
    def n_tokens(self) -> int:
        """Non-pad label tokens: what the loss is averaged over."""
        return int((self.tgt_out != PAD_ID).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on `device`."""
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in
                       (self.src, self.tgt_in, self.tgt_out, self.src_mask)))


def collate(items: Sequence[tuple[Tensor, Tensor]]) -> Batch:
    """Pad a list of (src ids, tgt ids) to the batch's longest and add [SOS]/[EOS]."""
    src_lens = torch.tensor([len(s) for s, _ in items], dtype=torch.long)
    tgt_lens = torch.tensor([len(t) for _, t in items], dtype=torch.long)
    src = _pad([s for s, _ in items], src_lens, 1, 2)
    tgt_in = _pad([t for _, t in items], tgt_lens, 1, 1)
    tgt_out = _pad([t for _, t in items], tgt_lens, 0, 1)
    rows = torch.arange(len(items))
    src[:, 0] = SOS_ID
    src[rows, src_lens + 1] = EOS_ID
    tgt_in[:, 0] = SOS_ID
    tgt_out[rows, tgt_lens] = EOS_ID
    return Batch(src, tgt_in, tgt_out, padding_mask(src, PAD_ID))


def _pad(seqs: list[Tensor], lens: Tensor, shift: int, extra: int) -> Tensor:
    """[B, max(lens) + extra] of PAD with sequence i at columns shift .. shift + lens[i], in a
    few tensor operations whatever the batch size (a per-row loop costs ~20 us a sentence)."""
    out = torch.full((len(seqs), int(lens.max()) + extra), PAD_ID, dtype=torch.long)
    flat = torch.cat(seqs)
    rows = torch.repeat_interleave(torch.arange(len(seqs)), lens)
    starts = torch.cumsum(lens, 0) - lens
    cols = torch.arange(len(flat)) - torch.repeat_interleave(starts, lens) + shift
    out[rows, cols] = flat.long()
    return out


class BatchList(Sequence[list[int]]):
    """An epoch's batches as three numpy arrays instead of a list of lists of Python ints
    (about 36 bytes a pair): the pairs in batch order (`order`), where each batch starts in
    it (`starts`, one more than there are batches) and which batch comes at each position
    (`pick`). Indexing gives a batch as a list of ints; slicing gives another BatchList
    (a rank's share under DDP); it compares equal to a list of the same batches."""

    def __init__(self, order: np.ndarray, starts: np.ndarray, pick: np.ndarray) -> None:
        self.order, self.starts, self.pick = order, starts, pick

    def __len__(self) -> int:
        return len(self.pick)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return BatchList(self.order, self.starts, self.pick[i])
        b = int(self.pick[i])
        return self.order[self.starts[b]:self.starts[b + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order, starts = self.order, self.starts
        for b in self.pick.tolist():
            yield order[starts[b]:starts[b + 1]].tolist()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(
            list(a) == list(b) for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like a list

    def __repr__(self) -> str:
        return f"BatchList({len(self)} batches of {len(self.order)} pairs)"


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar-length pairs under a token budget (padding included), or of a fixed
    number of sentences; the batch order is reshuffled every epoch from (seed, epoch), so epoch
    e always yields the same batches, which is what makes resuming mid-epoch exact. A dataset
    with a `mix` (several corpora) contributes that epoch's draw instead of every pair once."""

    def __init__(self, dataset: BilingualDataset, max_tokens: int = 0, batch_size: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        if max_tokens <= 0 and batch_size <= 0:
            raise ValueError("give max_tokens or batch_size")
        self.dataset, self.max_tokens, self.batch_size = dataset, max_tokens, batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the shuffle of epoch `epoch`."""
        self.epoch = epoch

    def batches(self) -> BatchList:
        """This epoch's batches, in order (a compact sequence of lists of dataset indices)."""
        # A string seed is hashed by `random`, so any (seed, epoch) gives an unrelated stream.
        rng = np.random.default_rng(
            random.Random(f"batches:{self.seed}:{self.epoch}").getrandbits(64))
        sizes = np.asarray(self.dataset.token_counts)
        pool = None
        mix = self.dataset.mix
        if mix is not None:
            # A stream of its own, so that a single corpus keeps exactly its old batches.
            pool = mix.draw(np.random.default_rng(
                random.Random(f"mix:{self.seed}:{self.epoch}").getrandbits(64)))
            sizes = sizes[pool]
        n = len(sizes)
        if self.shuffle:
            # Random tie-breaks so equal-length pairs meet different neighbours each epoch.
            order = np.lexsort((rng.random(n), sizes))
        else:
            order = np.argsort(sizes, kind="stable")
        if self.max_tokens > 0:
            starts = _budget_starts(sizes[order], self.max_tokens)
        else:
            starts = np.arange(0, n, self.batch_size, dtype=np.int64)
        starts = np.append(starts, n).astype(np.int64)
        if pool is not None:
            order = pool[order]
        n_batches = len(starts) - 1
        pick = rng.permutation(n_batches) if self.shuffle else np.arange(n_batches)
        return BatchList(order, starts, pick)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def _budget_starts(sorted_sizes: Sequence[int] | np.ndarray, max_tokens: int) -> np.ndarray:
    """Where each batch starts in ascending pair sizes, filling every batch while its size
    count * longest stays within `max_tokens` (a pair larger than the budget gets a batch of
    its own). Ascending order makes the newest pair the longest one, so a batch from b ends
    before the first j with size[j] * (j - b + 1) > max_tokens, which grows with j: found by
    galloping then bisecting, a few dozen steps a batch instead of one a pair."""
    sizes = np.asarray(sorted_sizes, dtype=np.int64)
    n = len(sizes)
    starts = []
    b = 0
    while b < n:
        starts.append(b)

        def over(j: int, b: int = b) -> bool:
            return int(sizes[j]) * (j - b + 1) > max_tokens

        lo, step = b + 1, 1  # lo: first candidate; every j < lo fits
        while lo + step - 1 < n and not over(lo + step - 1):
            lo += step
            step *= 2
        hi = min(lo + step - 1, n)  # over(hi) or hi == n
        while lo < hi:
            mid = (lo + hi) // 2
            if over(mid):
                hi = mid
            else:
                lo = mid + 1
        b = lo
    return np.asarray(starts, dtype=np.int64)


def padding_fraction(dataset: BilingualDataset, batches: Sequence[Sequence[int]]) -> float:
    """Share of padding among all encoder+decoder input positions of `batches`."""
    if isinstance(batches, BatchList):  # straight from its arrays: no list per batch
        parts = [batches.order[batches.starts[b]:batches.starts[b + 1]]
                 for b in batches.pick.tolist()]
    else:
        parts = [np.asarray(b, dtype=np.int64) for b in batches]
    parts = [p for p in parts if len(p)]
    if not parts:
        return 0.0
    idx = np.concatenate(parts)
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    s = dataset.src_lengths[idx] + 2
    t = dataset.tgt_lengths[idx] + 1
    real = int(s.sum() + t.sum())
    padded = int((counts * (np.maximum.reduceat(s, starts) + np.maximum.reduceat(t, starts))).sum())
    return 1.0 - real / padded if padded else 0.0
