"""Checks on the real Multi30k corpus (slow; skipped where the files are absent). The folder
is $MULTI30K_DIR, else ../shared/data/multi30k-en-de next to the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from translator.config import TokenizerConfig, load_config
from translator.data.corpus import iter_texts, load_corpus, to_pairs
from translator.data.dataset import BilingualDataset, BucketBatchSampler, padding_fraction
from translator.data.tokenizer import build_tokenizers, round_trip_stats

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MULTI30K_DIR",
                           ROOT.parent / "shared" / "data" / "multi30k-en-de"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "train.en").is_file(), reason=f"no Multi30k in {DATA}"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cfg = load_config(ROOT / "configs" / "multi30k_en_de.yaml", [
        f"data.dir={DATA}", f"data.cache_dir={tmp_path_factory.mktemp('cache')}"])
    return cfg, load_corpus(cfg.data)


def test_config_reads_the_official_splits(corpus) -> None:  # noqa: ANN001
    _, c = corpus
    # train's 29000 pairs hold 3 exact duplicates, which the train-only cleaning drops
    assert {k: len(v) for k, v in c.splits.items()} == {"train": 28997, "valid": 1014,
                                                         "test": 1000}
    assert c.filtered == {"controls_normalised": 1, "invalid": 0, "copies": 0, "duplicates": 3}
    assert to_pairs(c["test"])[0] == ("A man in an orange hat starring at something.",
                                      "Ein Mann mit einem orangefarbenen Hut, der etwas "
                                      "anstarrt.")


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_round_trip_on_validation(corpus, kind: str) -> None:  # noqa: ANN001
    _, c = corpus
    train = c["train"]
    src_tok, tgt_tok = build_tokenizers(iter_texts(train, "src"), iter_texts(train, "tgt"),
                                        TokenizerConfig(kind=kind, vocab_size=8000, shared=True))
    valid = to_pairs(c["valid"])
    for tok, texts in ((src_tok, [s for s, _ in valid]), (tgt_tok, [t for _, t in valid])):
        assert round_trip_stats(tok, texts)["round_trip"] >= 0.99


def test_bucketed_batches_waste_little_padding(corpus) -> None:  # noqa: ANN001
    cfg, c = corpus
    train = c["train"]
    src_tok, tgt_tok = build_tokenizers(iter_texts(train, "src"), iter_texts(train, "tgt"),
                                        cfg.tokenizer)
    data = BilingualDataset.from_dataset(train, src_tok, tgt_tok, cfg.data.max_len, "train")
    batches = BucketBatchSampler(data, cfg.training.max_tokens, seed=0).batches()
    assert padding_fraction(data, batches) <= 0.10
