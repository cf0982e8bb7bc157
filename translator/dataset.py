"""Token ids of a corpus, length-bucketed batches padded per batch, and their masks.

A `BilingualDataset` keeps every sentence's ids in one flat int32 tensor per side plus offsets,
not as Python lists of tensors, so a large corpus costs 4 bytes a token. `from_dataset`
tokenizes an Arrow split with a batched `datasets.map` whose result is cached next to the
corpus, keyed by the tokenizers' fingerprints, so a second run reads the ids instead of
tokenizing again. A batch is padded to its own longest sentence; the encoder input is
`[SOS] x [EOS]`, the decoder input `[SOS] y`, the label `y [EOS]`.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from translator.model import causal_mask, padding_mask
from translator.tokenizer import EOS_ID, PAD_ID, SOS_ID, TextTokenizer

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

log = logging.getLogger("translator")
# Part of the tokenized-corpus cache key: bump it when `_encode_batch` changes its output.
_TOKENIZE_VERSION = "ids-1"


class BilingualDataset(torch.utils.data.Dataset):
    """Pairs of id sequences (without special tokens) that fit in `max_len` with them and,
    when `max_ratio` is set, whose longer side has at most `max_ratio` times the tokens of the
    shorter (the train split's length-ratio filter: here, because only here are the token
    lengths known)."""

    def __init__(self, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                 max_len: int, name: str = "data", max_ratio: float = 0.0) -> None:
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"{len(src_ids)} source but {len(tgt_ids)} target sequences")
        src_flat, src_off = _flatten(src_ids)
        tgt_flat, tgt_off = _flatten(tgt_ids)
        self._setup(src_flat, src_off, tgt_flat, tgt_off, max_len, name, max_ratio)

    def _setup(self, src_flat: np.ndarray, src_off: np.ndarray, tgt_flat: np.ndarray,
               tgt_off: np.ndarray, max_len: int, name: str, max_ratio: float = 0.0) -> None:
        """Drop the pairs that do not fit `max_len`, then those beyond `max_ratio` (logging
        how many of each: `dropped`, `dropped_ratio`) and store the rest as flat int32
        tensors with int64 offsets."""
        src_lens, tgt_lens = np.diff(src_off), np.diff(tgt_off)
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
        keep = np.flatnonzero(fits)
        self.kept_index: list[int] = keep.tolist()
        self.src_flat, self.src_off = _select(src_flat, src_off, fits)
        self.tgt_flat, self.tgt_off = _select(tgt_flat, tgt_off, fits)
        self._src_lens, self._tgt_lens = src_lens[keep], tgt_lens[keep]
        self.src_lens: list[int] = self._src_lens.tolist()
        self.tgt_lens: list[int] = self._tgt_lens.tolist()
        # What a pair costs in a padded batch: the longer of its encoder and decoder inputs.
        self.token_counts = np.maximum(self._src_lens + 2, self._tgt_lens + 1)

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]], src_tok: TextTokenizer,
                   tgt_tok: TextTokenizer, max_len: int, name: str = "data") -> BilingualDataset:
        """Tokenize text pairs (batched, in parallel inside `tokenizers`)."""
        src = src_tok.encode_batch([s for s, _ in pairs])
        tgt = tgt_tok.encode_batch([t for _, t in pairs])
        return cls(src, tgt, max_len, name)

    @classmethod
    def from_dataset(cls, ds: datasets.Dataset, src_tok: TextTokenizer, tgt_tok: TextTokenizer,
                     max_len: int, name: str = "data", max_ratio: float = 0.0
                     ) -> BilingualDataset:
        """Tokenize an Arrow split with columns `src`/`tgt` (see `translator.corpus`) through a
        cached batched `datasets.map`, and take its ids without Python lists."""
        import pyarrow.compute as pc

        if len(ds) == 0:
            return cls([], [], max_len, name, max_ratio)
        table = tokenize(ds, src_tok, tgt_tok).with_format("arrow")[:]
        self = cls.__new__(cls)
        sides = []
        for column in ("src_ids", "tgt_ids"):
            ids = table.column(column).combine_chunks()
            lens = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
            off = np.zeros(len(lens) + 1, dtype=np.int64)
            np.cumsum(lens, out=off[1:])
            flat = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
            sides += [flat, off]
        self._setup(*sides, max_len, name, max_ratio)
        return self

    def __len__(self) -> int:
        return len(self.src_lens)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return (self.src_flat[self.src_off[i]:self.src_off[i + 1]],
                self.tgt_flat[self.tgt_off[i]:self.tgt_off[i + 1]])

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


def tokenize(ds: datasets.Dataset, src_tok: TextTokenizer,
             tgt_tok: TextTokenizer) -> datasets.Dataset:
    """Columns `src_ids`/`tgt_ids` (int32 lists) of a `src`/`tgt` split, by a batched
    `datasets.map`. For a split backed by cache files the result is cached beside them under a
    key made of the split's and both tokenizers' fingerprints, and read back on later runs."""
    import datasets

    key = "\x1f".join([_TOKENIZE_VERSION, ds._fingerprint, src_tok.fingerprint,
                       tgt_tok.fingerprint])
    features = datasets.Features({"src_ids": datasets.Sequence(datasets.Value("int32")),
                                  "tgt_ids": datasets.Sequence(datasets.Value("int32"))})
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return ds.with_format("arrow").map(
            _encode_batch, batched=True, batch_size=10_000, remove_columns=ds.column_names,
            features=features, fn_kwargs={"src_tok": src_tok, "tgt_tok": tgt_tok},
            new_fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16],
        ).with_format(None)
    finally:
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
        does not need it (see `translator.model`); it is here for inspection and tests."""
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


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar-length pairs under a token budget (padding included), or of a fixed
    number of sentences; the batch order is reshuffled every epoch from (seed, epoch), so epoch
    e always yields the same batches, which is what makes resuming mid-epoch exact."""

    def __init__(self, dataset: BilingualDataset, max_tokens: int = 0, batch_size: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        if max_tokens <= 0 and batch_size <= 0:
            raise ValueError("give max_tokens or batch_size")
        self.dataset, self.max_tokens, self.batch_size = dataset, max_tokens, batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the shuffle of epoch `epoch`."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in order."""
        # A string seed is hashed by `random`, so any (seed, epoch) gives an unrelated stream.
        rng = np.random.default_rng(
            random.Random(f"batches:{self.seed}:{self.epoch}").getrandbits(64))
        sizes = np.asarray(self.dataset.token_counts, dtype=np.int64)
        n = len(sizes)
        if self.shuffle:
            # Random tie-breaks so equal-length pairs meet different neighbours each epoch.
            order = np.lexsort((rng.random(n), sizes))
        else:
            order = np.argsort(sizes, kind="stable")
        if self.max_tokens > 0:
            starts = _budget_starts(sizes[order].tolist(), self.max_tokens)
        else:
            starts = list(range(0, n, self.batch_size))
        batches = [b.tolist() for b in np.split(order, starts[1:])] if n else []
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def _budget_starts(sorted_sizes: list[int], max_tokens: int) -> list[int]:
    """Where each batch starts in a list of ascending pair sizes, filling every batch while
    its size count * longest stays within `max_tokens` (a pair larger than the budget gets a
    batch of its own). Ascending order makes the newest pair the longest one."""
    starts = [0] if sorted_sizes else []
    count = 0
    for k, size in enumerate(sorted_sizes):
        if count and size * (count + 1) > max_tokens:
            starts.append(k)
            count = 0
        count += 1
    return starts


def padding_fraction(dataset: BilingualDataset, batches: Sequence[Sequence[int]]) -> float:
    """Share of padding among all encoder+decoder input positions of `batches`."""
    batches = [b for b in batches if len(b)]
    if not batches:
        return 0.0
    idx = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches])
    counts = np.array([len(b) for b in batches], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    s = dataset._src_lens[idx] + 2
    t = dataset._tgt_lens[idx] + 1
    real = int(s.sum() + t.sum())
    padded = int((counts * (np.maximum.reduceat(s, starts) + np.maximum.reduceat(t, starts))).sum())
    return 1.0 - real / padded if padded else 0.0
