"""Token ids of a corpus, length-bucketed batches padded per batch, and their masks.

A `BilingualDataset` keeps every sentence's ids in one flat int32 tensor per side plus offsets,
not as Python lists of tensors, so a large corpus costs 4 bytes a token. A batch is padded to
its own longest sentence; the encoder input is `[SOS] x [EOS]`, the decoder input `[SOS] y`,
the label `y [EOS]`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from translator.model import causal_mask, padding_mask
from translator.tokenizer import EOS_ID, PAD_ID, SOS_ID, TextTokenizer

log = logging.getLogger("translator")


class BilingualDataset(torch.utils.data.Dataset):
    """Pairs of id sequences (without special tokens) that fit in `max_len` with them."""

    def __init__(self, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                 max_len: int, name: str = "data") -> None:
        keep = [i for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True))
                if len(s) + 2 <= max_len and len(t) + 1 <= max_len]
        self.dropped = len(src_ids) - len(keep)
        if self.dropped:
            log.warning("%s: dropped %d of %d pairs longer than data.max_len=%d tokens",
                        name, self.dropped, len(src_ids), max_len)
        self.kept_index = keep
        self.src_flat, self.src_off = _flatten([src_ids[i] for i in keep])
        self.tgt_flat, self.tgt_off = _flatten([tgt_ids[i] for i in keep])
        self.src_lens = (self.src_off[1:] - self.src_off[:-1]).tolist()
        self.tgt_lens = (self.tgt_off[1:] - self.tgt_off[:-1]).tolist()

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]], src_tok: TextTokenizer,
                   tgt_tok: TextTokenizer, max_len: int, name: str = "data") -> BilingualDataset:
        """Tokenize text pairs (batched, in parallel inside `tokenizers`)."""
        src = src_tok.encode_batch([s for s, _ in pairs])
        tgt = tgt_tok.encode_batch([t for _, t in pairs])
        return cls(src, tgt, max_len, name)

    def __len__(self) -> int:
        return len(self.src_lens)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return (self.src_flat[self.src_off[i]:self.src_off[i + 1]],
                self.tgt_flat[self.tgt_off[i]:self.tgt_off[i + 1]])

    def token_count(self, i: int) -> int:
        """Padded size of pair i in a batch: the longer of its encoder and decoder inputs."""
        return max(self.src_lens[i] + 2, self.tgt_lens[i] + 1)


def _flatten(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
    torch.cumsum(lens, 0, out=offsets[1:])
    flat = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
    return flat, offsets


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
    b = len(items)
    s_len = max(len(s) for s, _ in items) + 2
    t_len = max(len(t) for _, t in items) + 1
    src = torch.full((b, s_len), PAD_ID, dtype=torch.long)
    tgt_in = torch.full((b, t_len), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((b, t_len), PAD_ID, dtype=torch.long)
    for i, (s, t) in enumerate(items):
        n, m = len(s), len(t)
        src[i, 0] = SOS_ID
        src[i, 1:n + 1] = s
        src[i, n + 1] = EOS_ID
        tgt_in[i, 0] = SOS_ID
        tgt_in[i, 1:m + 1] = t
        tgt_out[i, :m] = t
        tgt_out[i, m] = EOS_ID
    return Batch(src, tgt_in, tgt_out, padding_mask(src, PAD_ID))


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
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        n = len(self.dataset)
        sizes = [self.dataset.token_count(i) for i in range(n)]
        # Random tie-breaks so equal-length pairs meet different neighbours each epoch.
        jitter = [rng.random() for _ in range(n)] if self.shuffle else [0.0] * n
        order = sorted(range(n), key=lambda i: (sizes[i], jitter[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order:
            longest_if = max(longest, sizes[i])
            too_many = (self.max_tokens > 0 and longest_if * (len(current) + 1) > self.max_tokens)
            too_many |= self.max_tokens <= 0 and len(current) >= self.batch_size
            if current and too_many:
                batches.append(current)
                current, longest_if = [], sizes[i]
            current.append(i)
            longest = longest_if
        if current:
            batches.append(current)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def padding_fraction(dataset: BilingualDataset, batches: Sequence[Sequence[int]]) -> float:
    """Share of padding among all encoder+decoder input positions of `batches`."""
    real = padded = 0
    for b in batches:
        s = [dataset.src_lens[i] + 2 for i in b]
        t = [dataset.tgt_lens[i] + 1 for i in b]
        real += sum(s) + sum(t)
        padded += len(b) * (max(s) + max(t))
    return 1.0 - real / padded if padded else 0.0
