"""Dataset: special tokens and per-batch padding, masks, length filtering, bucketed batching,
cached tokenization of Arrow splits."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from translator.config import DataConfig, TokenizerConfig
from translator.data.corpus import load_corpus
from translator.data.dataset import (
    Batch,
    BilingualDataset,
    BucketBatchSampler,
    collate,
    padding_fraction,
    tokenize,
)
from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID, TextTokenizer, build_tokenizer


def _random_dataset(n: int, max_words: int, seed: int = 0, max_len: int = 64) -> BilingualDataset:
    rng = random.Random(seed)
    src = [[rng.randrange(4, 50) for _ in range(rng.randint(1, max_words))] for _ in range(n)]
    tgt = [[rng.randrange(4, 50) for _ in range(rng.randint(1, max_words))] for _ in range(n)]
    return BilingualDataset(src, tgt, max_len=max_len)


# ---------------------------------------------------------------- collate and masks


def test_collate_adds_specials_and_pads_to_batch_longest() -> None:
    items = [(torch.tensor([5, 6, 7]), torch.tensor([8, 9])),
             (torch.tensor([5]), torch.tensor([8, 9, 10, 11]))]
    b = collate(items)
    P, S, E = PAD_ID, SOS_ID, EOS_ID
    assert b.src.tolist() == [[S, 5, 6, 7, E], [S, 5, E, P, P]]
    assert b.tgt_in.tolist() == [[S, 8, 9, P, P], [S, 8, 9, 10, 11]]
    assert b.tgt_out.tolist() == [[8, 9, E, P, P], [8, 9, 10, 11, E]]
    assert b.src.dtype == b.tgt_in.dtype == b.tgt_out.dtype == torch.long
    assert b.n_tokens == 3 + 5


def test_padding_is_per_batch_not_global() -> None:
    ds = BilingualDataset([[5], [5, 6], list(range(4, 40))], [[7], [7, 8], list(range(4, 30))],
                          max_len=100)
    short = collate([ds[0], ds[1]])
    assert short.src.shape == (2, 2 + 2)
    assert short.tgt_in.shape == short.tgt_out.shape == (2, 2 + 1)
    long = collate([ds[0], ds[2]])
    assert long.src.shape == (2, 36 + 2) and long.tgt_in.shape == (2, 26 + 1)


def test_src_mask_is_false_exactly_at_padding() -> None:
    b = collate([(torch.tensor([5, 6, 7, 8]), torch.tensor([9])),
                 (torch.tensor([5]), torch.tensor([9])),
                 (torch.tensor([5, 6]), torch.tensor([9]))])
    assert b.src_mask.shape == (3, 1, 1, 6)
    assert b.src_mask.dtype == torch.bool
    expected = [[True] * 6, [True] * 3 + [False] * 3, [True] * 4 + [False] * 2]
    assert b.src_mask[:, 0, 0].tolist() == expected
    assert torch.equal(b.src_mask[:, 0, 0], b.src != PAD_ID)


def test_tgt_mask_is_causal_and_padding() -> None:
    b = collate([(torch.tensor([5]), torch.tensor([9, 10, 11, 12])),
                 (torch.tensor([5]), torch.tensor([9]))])
    mask = b.tgt_mask
    T = 5
    assert mask.shape == (2, 1, T, T) and mask.dtype == torch.bool
    real = [5, 2]  # [SOS] + target tokens
    for row in range(2):
        for q in range(T):
            for k in range(T):
                allowed = k <= q and k < real[row] and q < real[row]
                assert bool(mask[row, 0, q, k]) == allowed, (row, q, k)


def test_batch_to_keeps_contents() -> None:
    b = collate([(torch.tensor([5, 6]), torch.tensor([7]))])
    moved = b.to("cpu")
    assert isinstance(moved, Batch)
    for name in ("src", "tgt_in", "tgt_out", "src_mask"):
        assert torch.equal(getattr(moved, name), getattr(b, name))


# ---------------------------------------------------------------- the dataset


def test_items_are_the_ids_without_specials() -> None:
    src = [[5, 6, 7], [8], [9, 10]]
    tgt = [[11], [12, 13, 14], [15, 16]]
    ds = BilingualDataset(src, tgt, max_len=10)
    assert len(ds) == 3 and ds.dropped == 0
    for i in range(3):
        s, t = ds[i]
        assert s.tolist() == src[i] and t.tolist() == tgt[i]
    assert [ds.token_count(i) for i in range(3)] == [5, 4, 4]


def test_pairs_over_max_len_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    src = [[5, 6, 7], [5, 6, 7, 8], [5], [5], [5, 6, 7, 8, 9, 10]]
    tgt = [[9], [9], [9, 10, 11, 12], [9, 10, 11, 12, 13], [9]]
    with caplog.at_level(logging.WARNING, logger="translator"):
        ds = BilingualDataset(src, tgt, max_len=5, name="train")
    # [SOS] x [EOS] needs len(x) + 2 <= 5; [SOS] y needs len(y) + 1 <= 5
    assert ds.dropped == 3
    assert len(ds) == 2
    assert ds.kept_index == [0, 2]
    assert ds[0][0].tolist() == [5, 6, 7] and ds[1][1].tolist() == [9, 10, 11, 12]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "train" in warnings[0].getMessage() and "3 of 5" in warnings[0].getMessage()
    assert "max_len=5" in warnings[0].getMessage()


def test_no_warning_when_nothing_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="translator"):
        ds = BilingualDataset([[5]], [[6]], max_len=5)
    assert ds.dropped == 0 and not caplog.records


def test_everything_dropped_is_not_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="translator"):
        ds = BilingualDataset([[5] * 10, [6] * 10], [[7], [8]], max_len=4)
    assert len(ds) == 0 and ds.dropped == 2
    assert caplog.records


def test_mismatched_sides_are_an_error() -> None:
    with pytest.raises(ValueError):
        BilingualDataset([[5], [6]], [[7]], max_len=10)


def test_from_pairs_tokenizes_both_sides() -> None:
    pairs = [("the dog sleeps .", "der Hund schläft ."), ("the cat", "die Katze")]
    src_tok = build_tokenizer([s for s, _ in pairs], TokenizerConfig())
    tgt_tok = build_tokenizer([t for _, t in pairs], TokenizerConfig())
    ds = BilingualDataset.from_pairs(pairs, src_tok, tgt_tok, max_len=6)
    assert len(ds) == 2
    for i, (s, t) in enumerate(pairs):
        assert ds[i][0].tolist() == src_tok.encode(s)
        assert ds[i][1].tolist() == tgt_tok.encode(t)
    b = collate([ds[0], ds[1]])
    assert tgt_tok.decode(b.tgt_out[0]) == "der Hund schläft."
    assert src_tok.decode(b.src[1]) == "the cat"


def test_dataloader_with_bucket_sampler_yields_batches() -> None:
    ds = _random_dataset(50, 12, seed=3)
    sampler = BucketBatchSampler(ds, max_tokens=64, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    total = 0
    for batch in loader:
        assert isinstance(batch, Batch)
        assert batch.src.size(0) * max(batch.src.size(1), batch.tgt_in.size(1)) <= 64
        total += batch.src.size(0)
    assert total == len(ds)


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize("max_tokens", [42, 100, 333])
def test_token_budget_is_never_exceeded(max_tokens: int) -> None:
    ds = _random_dataset(300, 40, seed=1)
    sampler = BucketBatchSampler(ds, max_tokens=max_tokens, seed=7)
    batches = list(sampler)
    assert len(sampler) == len(batches)
    for b in batches:
        assert b
        assert len(b) * max(ds.token_count(i) for i in b) <= max_tokens
        # and the padded batch really has that size
        batch = collate([ds[i] for i in b])
        assert len(b) * max(batch.src.size(1), batch.tgt_in.size(1)) <= max_tokens


@pytest.mark.parametrize(("max_tokens", "batch_size"), [(120, 0), (0, 16), (0, 1)])
def test_every_index_exactly_once_per_epoch(max_tokens: int, batch_size: int) -> None:
    ds = _random_dataset(203, 30, seed=2)
    sampler = BucketBatchSampler(ds, max_tokens=max_tokens, batch_size=batch_size, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        flat = [i for b in sampler for i in b]
        assert sorted(flat) == list(range(len(ds)))


def test_order_is_deterministic_for_seed_and_epoch_and_changes_across_epochs() -> None:
    ds = _random_dataset(200, 30, seed=4)
    a = BucketBatchSampler(ds, max_tokens=128, seed=11)
    b = BucketBatchSampler(ds, max_tokens=128, seed=11)
    a.set_epoch(5)
    b.set_epoch(5)
    assert a.batches() == b.batches()
    assert list(a) == list(a)  # re-iterating the same epoch repeats it
    epoch5 = a.batches()
    a.set_epoch(6)
    assert a.batches() != epoch5
    a.set_epoch(5)
    assert a.batches() == epoch5  # resuming epoch 5 gives the same batches
    other_seed = BucketBatchSampler(ds, max_tokens=128, seed=12)
    other_seed.set_epoch(5)
    assert other_seed.batches() != epoch5


def test_unshuffled_batches_are_in_length_order() -> None:
    ds = _random_dataset(100, 30, seed=5)
    sampler = BucketBatchSampler(ds, max_tokens=100, shuffle=False)
    counts = [ds.token_count(i) for b in sampler for i in b]
    assert counts == sorted(counts)
    sampler.set_epoch(9)
    assert sampler.batches() == BucketBatchSampler(ds, max_tokens=100, shuffle=False).batches()


def test_batch_size_mode() -> None:
    ds = _random_dataset(100, 20, seed=6)
    batches = BucketBatchSampler(ds, batch_size=16, seed=0).batches()
    sizes = sorted(len(b) for b in batches)
    assert sizes == [4] + [16] * 6


def test_sampler_needs_a_budget_or_a_batch_size() -> None:
    ds = _random_dataset(5, 5)
    with pytest.raises(ValueError):
        BucketBatchSampler(ds)


def test_padding_fraction_value() -> None:
    ds = BilingualDataset([[5], [5, 6, 7]], [[8, 9], [8, 9]], max_len=10)
    # encoder inputs 3 and 5 long, decoder inputs 3 and 3: 14 real of 2 * (5 + 3) = 16
    assert padding_fraction(ds, [[0, 1]]) == pytest.approx(1 - 14 / 16)
    assert padding_fraction(ds, [[0], [1]]) == 0.0
    assert padding_fraction(ds, []) == 0.0


def test_bucketing_wastes_less_padding_than_random_batches() -> None:
    # varied lengths, targets about as long as their sources (as in real parallel text)
    rng = random.Random(8)
    src = [[5] * rng.randint(1, 40) for _ in range(400)]
    tgt = [[6] * max(1, len(s) + rng.randint(-3, 3)) for s in src]
    ds = BilingualDataset(src, tgt, max_len=64)
    bucketed = BucketBatchSampler(ds, batch_size=16, seed=0).batches()
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    shuffled = [order[i:i + 16] for i in range(0, len(order), 16)]
    bucket_pad = padding_fraction(ds, bucketed)
    random_pad = padding_fraction(ds, shuffled)
    assert bucket_pad < random_pad / 2, (bucket_pad, random_pad)


# ---------------------------------------------------------------- from an Arrow split, cached


def _arrow_split(tmp_path: Path, pairs: list[tuple[str, str]]) -> datasets.Dataset:
    """A file-backed split, as `translator.data.corpus` makes them (so map results are cached)."""
    for lang, side in (("en", 0), ("de", 1)):
        path = tmp_path / f"train.{lang}"
        if not path.exists():  # rewriting would change the mtime, hence the cache key
            path.write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")
    cfg = DataConfig(source="text", dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    return load_corpus(cfg)["train"]


PAIRS = [("the dog sleeps .", "der Hund schläft ."), ("the cat", "die Katze"),
         ("a very long sentence with far too many words in it", "ein Satz"),
         ("the dog", "der Hund")]


def test_from_dataset_matches_from_pairs(tmp_path: Path) -> None:
    src_tok = build_tokenizer([s for s, _ in PAIRS], TokenizerConfig())
    tgt_tok = build_tokenizer([t for _, t in PAIRS], TokenizerConfig())
    split = _arrow_split(tmp_path, PAIRS)
    a = BilingualDataset.from_dataset(split, src_tok, tgt_tok, max_len=8, name="train")
    b = BilingualDataset.from_pairs(PAIRS, src_tok, tgt_tok, max_len=8, name="train")
    assert a.dropped == b.dropped == 1 and a.kept_index == b.kept_index == [0, 1, 3]
    assert a.src_lens == b.src_lens and a.tgt_lens == b.tgt_lens
    for i in range(len(a)):
        assert a[i][0].tolist() == b[i][0].tolist() and a[i][1].tolist() == b[i][1].tolist()
    # one flat int32 tensor per side, not Python lists of tensors
    assert a.src_flat.dtype == torch.int32 and a.src_flat.dim() == 1
    assert list(a.token_counts) == [a.token_count(i) for i in range(len(a))]


def test_tokenized_split_is_cached_and_reused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src_tok = build_tokenizer([s for s, _ in PAIRS], TokenizerConfig())
    tgt_tok = build_tokenizer([t for _, t in PAIRS], TokenizerConfig())
    split = _arrow_split(tmp_path, PAIRS)
    first = tokenize(split, src_tok, tgt_tok)
    assert first.cache_files and first.cache_files[0]["filename"].startswith(str(tmp_path))

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(TextTokenizer, "encode_batch", fail)
    again = BilingualDataset.from_dataset(_arrow_split(tmp_path, PAIRS), src_tok, tgt_tok,
                                          max_len=64)
    assert len(again) == len(PAIRS)
    # a different tokenizer is a different cache entry
    other = build_tokenizer([s for s, _ in PAIRS], TokenizerConfig(lowercase=True))
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize(split, other, tgt_tok)


def test_sampler_and_padding_over_a_large_dataset_are_fast() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    src_lens = rng.integers(1, 40, n)
    tgt_lens = np.clip(src_lens + rng.integers(-3, 4, n), 1, None)
    ds = BilingualDataset.__new__(BilingualDataset)
    off = [np.concatenate([[0], np.cumsum(lens)]) for lens in (src_lens, tgt_lens)]
    ds._setup(np.zeros(off[0][-1], np.int32), off[0], np.zeros(off[1][-1], np.int32), off[1],
              max_len=64, name="big")
    sampler = BucketBatchSampler(ds, max_tokens=4000, seed=1)
    batches = sampler.batches()
    assert sum(len(b) for b in batches) == n
    assert padding_fraction(ds, batches) < 0.1
