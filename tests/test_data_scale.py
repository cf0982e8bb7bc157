"""Data at scale and mixed: several corpora with weights (shares in the log and splits.json),
the tokenizer's bounded sample, ids read in place from Arrow giving the same batches as
lists, compact batch lists, the tokenization map in two processes, and the benchmark's
--data-scale sizes."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from translator.config import ConfigError, DataConfig, TokenizerConfig, config_from_dict
from translator.data.corpus import CorpusMix, load_corpus, to_pairs, tokenizer_sample
from translator.data.dataset import (
    BatchList,
    BilingualDataset,
    BucketBatchSampler,
    _budget_starts,
    collate,
    tokenize,
)
from translator.data.tokenizer import build_tokenizer
from translator.train.loop import train

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the a dog cat house tree sees eats small big red runs sleeps".split()
WORTE = "der die Hund Katze Haus Baum sieht isst klein groß rot rennt schläft".split()


def _random_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        k = rng.randint(1, 12)
        pairs.append((" ".join(rng.choice(WORDS) for _ in range(k)) + f" {i}",
                      " ".join(rng.choice(WORTE) for _ in range(k + rng.randint(0, 2))) + f" {i}"))
    return pairs


def _text_split(folder: Path, pairs: list[tuple[str, str]]) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    for lang, side in (("en", 0), ("de", 1)):
        (folder / f"train.{lang}").write_text("".join(p[side] + "\n" for p in pairs),
                                              encoding="utf-8")
    cfg = DataConfig(source="text", dir=str(folder), cache_dir=str(folder / "cache"))
    return load_corpus(cfg)["train"]


# ---------------------------------------------------------------- several corpora


def _two_corpora_raw(tmp_path: Path, weight: float = 3.0, **data: Any) -> dict[str, Any]:
    tsv = tmp_path / "numbers"
    tsv.mkdir(exist_ok=True)
    (tsv / "train.tsv").write_text(
        "en\tde\n" + "".join(f"house number {i}\tHaus Nummer {i}\n" for i in range(60)),
        encoding="utf-8")
    return {
        "data": {"max_len": 40, "cache_dir": str(tmp_path / "cache"), "corpora": [
            {"label": "grammar", "source": "builtin", "builtin_size": 200},
            {"label": "numbers", "source": "tsv", "dir": str(tsv), "train": "train.tsv",
             "src_column": "en", "tgt_column": "de", "weight": weight}], **data},
        "model": {"d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "dropout": 0.0},
        "training": {"epochs": 1, "max_steps": 2, "max_tokens": 400, "warmup_steps": 1,
                     "threads": 1, "log_every": 1, "examples": 0, "valid_max_sentences": 5},
        "output": {"dir": str(tmp_path / "run")},
    }


def test_two_corpora_train_and_show_sizes_and_shares(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg = config_from_dict(_two_corpora_raw(tmp_path), name="mixed")
    with caplog.at_level(logging.INFO, logger="translator"):
        train(cfg, quiet=True)
    record = json.loads((tmp_path / "run" / "splits.json").read_text(encoding="utf-8"))
    corpora = record["corpora"]
    assert list(corpora) == ["grammar", "numbers"]
    grammar, numbers = corpora["grammar"], corpora["numbers"]
    assert grammar["size"] == 160 and numbers["size"] == 60  # builtin: 20 + 20 valid/test
    assert (grammar["weight"], numbers["weight"]) == (1.0, 3.0)
    # shares proportional to size x weight, 160 : 180, in whole pairs of the 220 an epoch
    assert grammar["share"] == pytest.approx(160 / 340, abs=1 / 220)
    assert numbers["share"] == pytest.approx(180 / 340, abs=1 / 220)
    assert (grammar["pairs_per_epoch"], numbers["pairs_per_epoch"]) == (104, 116)
    assert grammar["pairs_per_epoch"] + numbers["pairs_per_epoch"] == 220
    # valid and test come from the first corpus (the builtin one)
    assert record["sizes"] == {"train": 220, "valid": 20, "test": 20}
    text = caplog.text
    assert "corpora, per epoch: grammar 160 pairs x weight 1" in text
    assert "numbers 60 pairs x weight 3 -> 116 an epoch (52.7%)" in text
    # a resume sees the same corpora and goes on
    cfg2 = config_from_dict(_two_corpora_raw(tmp_path) | {"training": {
        **_two_corpora_raw(tmp_path)["training"], "max_steps": 3}}, name="mixed")
    train(cfg2, resume=True, quiet=True)


def test_valid_corpus_names_the_corpus_of_valid_and_test(tmp_path: Path) -> None:
    raw = _two_corpora_raw(tmp_path, valid_corpus="numbers")
    raw["data"]["corpora"][1]["valid_ratio"] = 0.1
    corpus = load_corpus(config_from_dict(raw).data)
    assert len(corpus["valid"]) == 6 and len(corpus["test"]) == 0
    assert all(s.startswith("house number") for s, _ in to_pairs(corpus["valid"]))
    assert len(corpus["train"]) == 160 + 54  # builtin train (its valid/test unused) + rest


def test_weights_and_temperature_change_the_shares() -> None:
    bounds = np.array([0, 100, 150])
    plain = CorpusMix(["a", "b"], [1.0, 1.0], bounds)
    assert plain.counts().tolist() == [100, 50]
    weighted = CorpusMix(["a", "b"], [1.0, 4.0], bounds)
    assert weighted.counts().tolist() == [50, 100]  # 100 x 1 : 50 x 4
    flat = CorpusMix(["a", "b"], [1.0, 1.0], bounds, temperature=1e6)
    assert flat.counts().tolist() == [75, 75]  # a high temperature: weights alone
    assert weighted.record()["b"]["share"] == pytest.approx(2 / 3)


def test_epochs_draw_each_corpus_as_its_share_says() -> None:
    rng = random.Random(0)
    n_a, n_b = 120, 30
    src = [[4] * rng.randint(1, 20) for _ in range(n_a + n_b)]
    data = BilingualDataset(src, src, max_len=64)
    data.mix = CorpusMix(["a", "b"], [1.0, 3.0], np.array([0, n_a, n_a + n_b]))
    sampler = BucketBatchSampler(data, max_tokens=200, seed=1)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        flat = [i for b in sampler for i in b]
        from_b = [i for i in flat if i >= n_a]
        assert len(flat) == 150
        assert len(from_b) == 64  # 30 x 3 : 120 x 1 of 150 -> 64.3
        assert sorted(set(from_b)) == list(range(n_a, n_a + n_b))  # b repeated, all of it
        epochs.append(flat)
    assert epochs[0] != epochs[1]
    sampler.set_epoch(0)
    assert [i for b in sampler for i in b] == epochs[0]  # exact resume: same draw


@pytest.mark.parametrize(("data", "message"), [
    ({"corpora": [{"wieght": 2}]}, "unknown key 'data.corpora[0].wieght' (did you mean 'weight'"),
    ({"corpora": [{"weight": "a lot"}]}, "data.corpora[0].weight: expected float"),
    ({"corpora": [{}, {"weight": -1}]}, "data.corpora[1].weight: must be > 0"),
    ({"corpora": "builtin"}, "data.corpora: expected a list of corpora"),
    ({"corpora": [["builtin"]]}, "data.corpora[0]: expected a mapping"),
    ({"corpora": [{"source": "tsv"}]}, "data.corpora[0].dir: required"),
    ({"corpora": [{}, {"test_ratio": 0.1}]}, "data.corpora[1].test_ratio: only the valid corpus"),
    ({"corpora": [{"label": "x"}, {"label": "x"}]}, "data.corpora[1].label: 'x' is used by two"),
    ({"corpora": [{}], "valid_corpus": "web"}, "data.valid_corpus: 'web' names no corpus"),
    ({"corpora": [{}], "builtin_size": 100}, "data.builtin_size: not used with data.corpora"),
    ({"valid_corpus": "web"}, "data.valid_corpus: only used with data.corpora"),
    ({"sampling_temperature": 0}, "data.sampling_temperature: must be > 0"),
    ({"num_proc": -1}, "data.num_proc: must be >= 0"),
])
def test_bad_corpora_keys_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^config error: ") as info:
        config_from_dict({"data": data})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_corpora_files_are_checked_with_their_key(tmp_path: Path) -> None:
    from translator.data.sources import ConfigError as CorpusConfigError

    raw = {"data": {"corpora": [{}, {"source": "text", "dir": str(tmp_path / "gone")}]}}
    with pytest.raises(CorpusConfigError, match=r"data\.corpora\[1\]\.dir: folder not found"):
        load_corpus(config_from_dict(raw).data)


# ---------------------------------------------------------------- the tokenizer's sample


def test_tokenizer_sample_is_bounded_seeded_and_logged(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    split = _text_split(tmp_path / "c", _random_pairs(700))
    assert tokenizer_sample(split, 0, 1) is split and tokenizer_sample(split, 700, 1) is split
    with caplog.at_level(logging.INFO, logger="translator"):
        a = tokenizer_sample(split, 300, 1)
    assert len(a) == 300
    assert "tokenizer: training on a sample of 300 of 700 train pairs" in caplog.text
    assert to_pairs(a) == to_pairs(tokenizer_sample(split, 300, 1))
    assert to_pairs(a) != to_pairs(tokenizer_sample(split, 300, 2))
    assert len(set(to_pairs(a))) == 300  # no pair twice


def test_training_logs_the_tokenizer_sample(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    raw = _two_corpora_raw(tmp_path)
    raw["tokenizer"] = {"train_sample": 100}
    raw["training"]["max_steps"] = 1
    with caplog.at_level(logging.INFO, logger="translator"):
        train(config_from_dict(raw), quiet=True)
    assert "training on a sample of 100 of 220 train pairs" in caplog.text


# ---------------------------------------------------------------- Arrow-backed ids


def test_arrow_dataset_gives_the_batches_of_the_list_one(tmp_path: Path) -> None:
    pairs = _random_pairs(400, seed=3)
    split = _text_split(tmp_path / "c", pairs)
    src_tok = build_tokenizer([s for s, _ in pairs], TokenizerConfig(kind="bpe", vocab_size=60))
    tgt_tok = build_tokenizer([t for _, t in pairs], TokenizerConfig(kind="bpe", vocab_size=60))
    a = BilingualDataset.from_dataset(split, src_tok, tgt_tok, max_len=14, max_ratio=2.0)
    b = BilingualDataset([src_tok.encode(s) for s, _ in pairs],
                         [tgt_tok.encode(t) for _, t in pairs], max_len=14, max_ratio=2.0)
    assert a.dropped > 0 and a.dropped_ratio > 0  # both filters take part
    assert (a.dropped, a.dropped_ratio, a.kept_index) == (b.dropped, b.dropped_ratio, b.kept_index)
    assert a._arrow is not None and b._arrow is None
    assert np.array_equal(a.token_counts, b.token_counts)
    for i in range(len(a)):
        assert a[i][0].tolist() == b[i][0].tolist() and a[i][1].tolist() == b[i][1].tolist()
    for epoch in range(3):
        sa, sb = (BucketBatchSampler(d, max_tokens=120, seed=5) for d in (a, b))
        sa.set_epoch(epoch)
        sb.set_epoch(epoch)
        assert sa.batches() == sb.batches()
        for idx in list(sa)[:5]:
            x, y = collate([a[i] for i in idx]), collate([b[i] for i in idx])
            assert x.src.equal(y.src) and x.tgt_out.equal(y.tgt_out)
    assert a.src_flat.tolist() == b.src_flat.tolist()  # materialised on request


def test_tokenizing_in_two_processes_gives_the_same_ids(tmp_path: Path) -> None:
    pairs = _random_pairs(300, seed=4)
    split = _text_split(tmp_path / "c", pairs)
    tok = build_tokenizer([s for p in pairs for s in p], TokenizerConfig())
    two = tokenize(split, tok, tok, num_proc=2)
    one = tokenize(split, tok, tok, num_proc=1)
    assert one["src_ids"] == two["src_ids"] and one["tgt_ids"] == two["tgt_ids"]
    assert len(two.cache_files) == 2  # one file per worker, reused by the next run


# ---------------------------------------------------------------- compact batches


def _greedy_starts(sizes: list[int], max_tokens: int) -> list[int]:
    """The budget rule pair by pair, as it was written before the galloping search."""
    starts, count = ([0] if sizes else []), 0
    for k, size in enumerate(sizes):
        if count and size * (count + 1) > max_tokens:
            starts.append(k)
            count = 0
        count += 1
    return starts


@pytest.mark.parametrize("seed", range(5))
def test_budget_starts_match_the_pair_by_pair_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = np.sort(rng.integers(1, 90, rng.integers(0, 3000)))
    for max_tokens in (1, 50, 89, 128, 1000, 10**6):
        assert _budget_starts(sizes, max_tokens).tolist() == _greedy_starts(sizes.tolist(),
                                                                             max_tokens)


def test_batch_list_indexes_slices_and_compares_like_a_list() -> None:
    batches = BatchList(np.array([5, 3, 9, 1, 0]), np.array([0, 2, 3, 5]), np.array([2, 0, 1]))
    plain = [[1, 0], [5, 3], [9]]
    assert batches == plain and list(batches) == plain and len(batches) == 3
    assert batches[1] == [5, 3] and batches[-1] == [9]
    assert batches[1::2] == [[5, 3]] and isinstance(batches[::2], BatchList)
    assert batches != [[1, 0], [5, 3]] and batches != plain[::-1]


# ---------------------------------------------------------------- the benchmark's sizes


def test_benchmark_data_scale_sizes_and_keys() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench.data import parse_scale, scale_key
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert parse_scale("1m,3m, 10m") == [1_000_000, 3_000_000, 10_000_000]
    assert parse_scale("250k,1500") == [250_000, 1500]
    assert [scale_key(n) for n in (10_000_000, 250_000, 1500)] == ["10m", "250k", "1500"]
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="'lots' is not a size"):
        parse_scale("1m,lots")


def test_evaluate_finds_named_splits_in_the_valid_corpus(tmp_path: Path) -> None:
    from translator.evaluate import load_split

    raw = _two_corpora_raw(tmp_path, valid_corpus="numbers")
    data = config_from_dict(raw).data
    pairs = load_split(data, "train.tsv")  # a file of the numbers corpus, by its name
    assert len(pairs) == 60 and pairs[0] == ("house number 0", "Haus Nummer 0")
    assert len(load_split(data, "train")) == 160 + 60


def test_padding_fraction_of_a_batch_list_equals_that_of_its_lists() -> None:
    from translator.data.dataset import padding_fraction

    rng = random.Random(2)
    src = [[4] * rng.randint(1, 30) for _ in range(500)]
    data = BilingualDataset(src, src[::-1], max_len=64)
    batches = BucketBatchSampler(data, max_tokens=300, seed=3).batches()
    assert isinstance(batches, BatchList)
    assert padding_fraction(data, batches) == pytest.approx(padding_fraction(data, list(batches)))
    assert padding_fraction(data, batches[::3]) == pytest.approx(
        padding_fraction(data, list(batches)[::3]))


def test_one_corpus_and_a_list_of_one_are_the_same_corpus(tmp_path: Path) -> None:
    """A data section without `corpora` is a list of one corpus: the same keys, the same
    pairs, the same checks; only its messages name `data.` instead of `data.corpora[0].`."""
    from translator.config import corpus_parts

    keys = {"source": "builtin", "builtin_size": 120, "valid_ratio": 0.1}
    single = config_from_dict({"data": keys}).data
    listed = config_from_dict({"data": {"corpora": [keys]}}).data
    (one,), (entry,) = corpus_parts(single), corpus_parts(listed)
    assert (one.key, entry.key) == ("data", "data.corpora[0]")
    assert one.data == dataclasses.replace(entry.data, corpora=[], valid_corpus=None)
    a, b = load_corpus(single), load_corpus(listed)
    assert {k: to_pairs(v) for k, v in a.splits.items()} == \
        {k: to_pairs(v) for k, v in b.splits.items()}
    assert a.mix is None and b.mix is not None and b.mix.sizes.tolist() == [len(a["train"])]
    for raw, key in (({"valid_ratio": 2.0}, "data.valid_ratio"),
                     ({"corpora": [{"valid_ratio": 2.0}]}, "data.corpora[0].valid_ratio")):
        with pytest.raises(ConfigError, match=rf"^config error: {re.escape(key)}: must be in"):
            config_from_dict({"data": raw})
