"""Cleaning the train split on the way in: control characters, invalid text, untranslated
copies, duplicates, the token length ratio and data.max_len, each counted in splits.json and
the log; valid and test never filtered; the same cleaning on every run (exact resume)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from translator.config import ConfigError, DataConfig, config_from_dict
from translator.data.corpus import load_corpus, to_pairs
from translator.data.dataset import BilingualDataset
from translator.data.sources import DataError
from translator.data.split_record import check_split_record
from translator.run import RunLayout
from translator.train.loop import Trainer

GOOD = [(f"source sentence {i} .", f"target satz {i} .") for i in range(12)]


@pytest.fixture
def cache(tmp_path: Path) -> str:
    """A private datasets cache, so tests neither share nor leave files in ~/.cache."""
    return str(tmp_path / "cache")


def _tsv(path: Path, pairs: list[tuple[str, str]]) -> None:
    # newline="" keeps a \r inside a field as written (no newline translation).
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(f"{s}\t{t}\n" for s, t in pairs))


def _cfg(folder: Path, cache: str, **kw: Any) -> DataConfig:
    return DataConfig(source="tsv", dir=str(folder), train="train.tsv", cache_dir=cache, **kw)


def _train(folder: Path, cache: str, pairs: list[tuple[str, str]], **kw: Any):  # noqa: ANN202
    _tsv(folder / "train.tsv", pairs)
    corpus = load_corpus(_cfg(folder, cache, **kw))
    return corpus, to_pairs(corpus["train"])


# ---------------------------------------------------------------- each filter


def test_control_characters_become_one_space(tmp_path: Path, cache: str) -> None:
    pairs = [("a\x01b", "x\x7fy"), ("keep  two spaces", "c \x0b\x1f d"),
             ("plain", "mid\x85dle"), *GOOD]
    corpus, kept = _train(tmp_path, cache, pairs)
    assert kept[:3] == [("a b", "x y"), ("keep  two spaces", "c d"), ("plain", "mid dle")]
    assert corpus.filtered["controls_normalised"] == 3
    off, kept = _train(tmp_path, cache, pairs, clean_text=False)
    assert kept[0] == ("a\x01b", "x\x7fy") and off.filtered["controls_normalised"] == 0


def test_replacement_characters_and_control_only_sides_are_invalid(tmp_path: Path,
                                                                  cache: str) -> None:
    pairs = [("broken \ufffd text", "kaputt"), ("fine", "\ufffd"), ("\x02\x03", "only controls"),
             *GOOD]
    corpus, kept = _train(tmp_path, cache, pairs)
    assert kept == GOOD and corpus.filtered["invalid"] == 3
    off, kept = _train(tmp_path, cache, pairs, clean_text=False)
    assert len(kept) == len(pairs) and off.filtered["invalid"] == 0


def test_untranslated_copies_are_dropped(tmp_path: Path, cache: str) -> None:
    pairs = [("Berlin .", "Berlin ."), ("Same text", "Same text"), ("Same text", "same text"),
             *GOOD]
    corpus, kept = _train(tmp_path, cache, pairs)
    assert kept == [("Same text", "same text"), *GOOD]  # a case change is a translation
    assert corpus.filtered["copies"] == 2
    _, kept = _train(tmp_path, cache, pairs, drop_copies=False)
    assert len(kept) == len(pairs)


def test_exact_duplicate_pairs_keep_the_first_in_order(tmp_path: Path, cache: str) -> None:
    pairs = [GOOD[3], *GOOD, GOOD[0], GOOD[3], ("source sentence 0 .", "other"),
             ("ab", "c"), ("a", "bc")]  # same concatenation, different pairs
    corpus, kept = _train(tmp_path, cache, pairs)
    assert kept == [GOOD[3], *[p for p in GOOD if p != GOOD[3]],
                    ("source sentence 0 .", "other"), ("ab", "c"), ("a", "bc")]
    assert corpus.filtered["duplicates"] == 3
    _, kept = _train(tmp_path, cache, pairs, dedup=False)
    assert len(kept) == len(pairs)


def test_duplicates_after_normalising_controls_are_duplicates(tmp_path: Path,
                                                              cache: str) -> None:
    corpus, kept = _train(tmp_path, cache, [("a\x01b", "c"), ("a b", "c"), *GOOD[:2]])
    assert corpus.filtered["duplicates"] == 1 and kept[0] == ("a b", "c")


def test_length_ratio_in_tokens_and_max_len_are_counted_apart() -> None:
    # lengths (src, tgt) without specials; max_len 8 allows src <= 6, tgt <= 7
    src = [[4] * 1, [4] * 1, [4] * 2, [4] * 7, [4] * 6, [4] * 2]
    tgt = [[5] * 3, [5] * 4, [5] * 6, [5] * 7, [5] * 1, [5] * 8]
    data = BilingualDataset(src, tgt, max_len=8, name="train", max_ratio=3.0)
    # 1:3 and 2:6 are at the limit (kept); 1:4 and 6:1 beyond it; 7:7 and 2:8 too long
    # (counted as too long only, not as a ratio too).
    assert data.kept_index == [0, 2]
    assert (data.dropped, data.dropped_ratio) == (2, 2)
    off = BilingualDataset(src, tgt, max_len=8, name="train", max_ratio=0.0)
    assert off.kept_index == [0, 1, 2, 4] and off.dropped_ratio == 0


def test_max_ratio_is_validated() -> None:
    assert config_from_dict({"data": {"max_ratio": 0}}).data.max_ratio == 0
    for bad in (0.5, -1, float("inf")):
        with pytest.raises(ConfigError, match=r"data\.max_ratio"):
            config_from_dict({"data": {"max_ratio": bad}})


def test_a_train_split_that_cleaning_empties_says_why(tmp_path: Path, cache: str) -> None:
    with pytest.raises(DataError, match=r"empty after cleaning \(of 2 pairs: 2 copies"):
        _train(tmp_path, cache, [("x", "x"), ("y", "y")])


# ---------------------------------------------------------------- valid and test stay as given

DIRTY = [("dup", "Dup"), ("dup", "Dup"), ("copy", "copy"), ("ctl\x01here", "ok"),
         ("bad \ufffd", "ok"), ("one", "one two three four five six seven")]


def test_valid_and_test_files_are_never_filtered(tmp_path: Path, cache: str) -> None:
    _tsv(tmp_path / "train.tsv", GOOD + DIRTY)
    _tsv(tmp_path / "valid.tsv", DIRTY)
    _tsv(tmp_path / "test.tsv", DIRTY[::-1])
    corpus = load_corpus(_cfg(tmp_path, cache, valid="valid.tsv", test="test.tsv"))
    assert to_pairs(corpus["valid"]) == DIRTY and to_pairs(corpus["test"]) == DIRTY[::-1]
    assert to_pairs(corpus["train"]) == GOOD + [("dup", "Dup"), ("ctl here", "ok"),
                                                ("one", "one two three four five six seven")]
    assert corpus.filtered == {"controls_normalised": 1, "invalid": 1, "copies": 1,
                               "duplicates": 1}


def test_carved_valid_and_test_are_never_filtered(tmp_path: Path, cache: str) -> None:
    pairs = [(f"copy {i}", f"copy {i}") for i in range(40)] + GOOD
    _tsv(tmp_path / "train.tsv", pairs)
    corpus = load_corpus(_cfg(tmp_path, cache, valid_ratio=0.25, test_ratio=0.25))
    carved = to_pairs(corpus["valid"]) + to_pairs(corpus["test"])
    assert len(carved) == 26 and sum(s == t for s, t in carved) > 0  # copies stay there
    train = to_pairs(corpus["train"])
    assert all(s != t for s, t in train)
    assert len(train) + len(carved) + corpus.filtered["copies"] == len(pairs)


def test_training_keeps_extreme_ratio_pairs_in_valid(tmp_path: Path) -> None:
    _tsv(tmp_path / "train.tsv", GOOD)
    _tsv(tmp_path / "valid.tsv", [("one", "one two three four five six seven eight")])
    trainer = Trainer(_run_config(tmp_path, valid="valid.tsv"), quiet=True)
    assert trainer.valid_data is not None and len(trainer.valid_data) == 1


# ---------------------------------------------------------------- the record, the log, resume


def _run_config(folder: Path, **data: Any) -> Any:
    raw = {
        "data": {"source": "tsv", "dir": str(folder), "train": "train.tsv", "max_len": 10,
                 "cache_dir": str(folder / "cache"), **data},
        "model": {"d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "dropout": 0.0},
        "training": {"max_steps": 1, "max_tokens": 200, "warmup_steps": 1, "threads": 1,
                     "log_every": 1, "examples": 0},
        "output": {"dir": str(folder / "run")},
    }
    return config_from_dict(raw, name="cleaning")


def test_training_records_every_count_in_splits_json_and_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    long_pair = (" ".join(["w"] * 12), " ".join(["v"] * 12))  # 12 tokens > max_len 10
    ratio_pair = ("one", "one two three four")  # 1:4 words > 3
    pairs = [*GOOD, GOOD[0], ("same", "same"), ("x\ufffd", "y"), ("a\x01b", "c d"),
             ("", "no source"), long_pair, ratio_pair]
    _tsv(tmp_path / "train.tsv", pairs)
    caplog.set_level(logging.INFO, logger="translator")
    trainer = Trainer(_run_config(tmp_path), quiet=False)
    trainer.run()
    record = json.loads(RunLayout(tmp_path / "run").splits.read_text())
    assert record["dropped_empty"]["train"] == 1
    assert record["train_filters"] == {"controls_normalised": 1, "invalid": 1, "copies": 1,
                                       "duplicates": 1, "ratio": 1, "too_long": 1}
    assert record["sizes"]["train"] == len(GOOD) + 3  # a\x01b, long, ratio: tokens decide
    assert len(trainer.train_data) == len(GOOD) + 1
    startup = [r.getMessage() for r in caplog.records if "train pairs" in r.getMessage()]
    assert startup and "1 duplicates" in startup[0] and "1 over data.max_ratio" in startup[0]
    assert "1 over data.max_len" in startup[0]


def test_a_training_start_writes_the_split_record_once(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """splits.json is checked as soon as the corpus is read but written once, complete (with
    the token-level counts), not a partial record first."""
    import translator.files as files

    _tsv(tmp_path / "train.tsv", GOOD)
    real, writes = files.atomic_write, []

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == "splits.json":
            writes.append(json.loads(args[0]))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "atomic_write", counting)
    Trainer(_run_config(tmp_path), quiet=True)
    assert len(writes) == 1 and {"ratio", "too_long"} <= set(writes[0]["train_filters"])


def test_cleaning_is_deterministic_and_resume_checks_its_counts(tmp_path: Path,
                                                                cache: str) -> None:
    pairs = [*GOOD, *GOOD[:5], ("c", "c"), ("a\x01", "b")]
    first, kept = _train(tmp_path, cache, pairs)
    again, kept_again = _train(tmp_path, str(tmp_path / "other-cache"), pairs)
    assert kept == kept_again and first.record() == again.record()
    # the same file read again: the same cleaned split, so its token ids come from the cache
    reread = load_corpus(_cfg(tmp_path, str(tmp_path / "other-cache")))
    assert reread["train"]._fingerprint == again["train"]._fingerprint
    record = tmp_path / "splits.json"
    check_split_record(record, first, resume=False)
    check_split_record(record, again, resume=True)  # same data, same cleaning: fine
    saved = json.loads(record.read_text())
    saved["train_filters"]["duplicates"] += 1  # as if the run had cleaned differently
    record.write_text(json.dumps(saved))
    with pytest.raises(DataError, match="--resume: the corpus now gives train_filters"):
        check_split_record(record, again, resume=True)
    del saved["train_filters"]  # a record written before the filters existed
    saved["sizes"] = again.record()["sizes"]
    record.write_text(json.dumps(saved))
    check_split_record(record, again, resume=True)
