"""Reading parallel text from line-aligned files, TSV and (stubbed) Hugging Face datasets, and
carving valid/test out of train."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import pytest

from translator.config import DataConfig
from translator.corpus import DataError, clean_pairs, load_splits

EN = ["The dog sleeps.", "The cat eats.", "A bird sings.", "Where is it?"]
IT = ["Il cane dorme.", "Il gatto mangia.", "Un uccello canta.", "Dov'è?"]


def _write_text(folder: Path, stem: str, src: list[str], tgt: list[str],
                langs: tuple[str, str] = ("en", "it")) -> None:
    (folder / f"{stem}.{langs[0]}").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / f"{stem}.{langs[1]}").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")


def _text_cfg(folder: Path, **kw: Any) -> DataConfig:
    return DataConfig(source="text", src_lang="en", tgt_lang="it", dir=str(folder), **kw)


def _numbered_pairs(n: int) -> list[tuple[str, str]]:
    return [(f"source {i}", f"target {i}") for i in range(n)]


class _FakeHub:
    """Stands in for `datasets.load_dataset`, recording its calls."""

    def __init__(self, data: dict[str, list[Any]]) -> None:
        self.data = data
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> datasets.Dataset:
        self.calls.append((args, kwargs))
        return datasets.Dataset.from_dict(self.data)


def _hub_cfg(**kw: Any) -> DataConfig:
    return DataConfig(source="hub", name="Helsinki-NLP/opus_books", subset="en-it",
                      src_lang="en", tgt_lang="it", **kw)


# ---------------------------------------------------------------- text


def test_text_source_reads_line_aligned_files(tmp_path: Path) -> None:
    _write_text(tmp_path, "train", EN, IT)
    _write_text(tmp_path, "dev", EN[:2], IT[:2])
    splits = load_splits(_text_cfg(tmp_path, valid="dev"))
    assert splits["train"] == list(zip(EN, IT, strict=True))
    assert splits["valid"] == list(zip(EN[:2], IT[:2], strict=True))
    assert splits["test"] == []


def test_text_source_handles_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    (tmp_path / "train.en").write_bytes(b"a b\r\nc d")
    (tmp_path / "train.it").write_bytes("é f\r\ng h\r\n".encode())
    assert load_splits(_text_cfg(tmp_path))["train"] == [("a b", "é f"), ("c d", "g h")]


def test_text_source_line_count_mismatch(tmp_path: Path) -> None:
    _write_text(tmp_path, "train", EN, IT[:3])
    with pytest.raises(DataError, match="line-aligned") as info:
        load_splits(_text_cfg(tmp_path))
    assert "train.en" in str(info.value) and "train.it" in str(info.value)


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    _write_text(tmp_path, "train", EN, IT)
    (tmp_path / "train.it").write_bytes(b"ok\nstill ok\nbad \xff byte\nfine\n")
    with pytest.raises(DataError, match=r"train\.it line 3"):
        load_splits(_text_cfg(tmp_path))


def test_empty_sides_are_dropped_with_a_warning(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    _write_text(tmp_path, "train", ["  a  ", "", "c", "d"], ["x", "y", "   ", "\tw "])
    with caplog.at_level(logging.WARNING, logger="translator"):
        splits = load_splits(_text_cfg(tmp_path))
    assert splits["train"] == [("a", "x"), ("d", "w")]
    assert any("dropped 2" in r.getMessage() for r in caplog.records)


def test_empty_train_is_an_error(tmp_path: Path) -> None:
    _write_text(tmp_path, "train", ["", " "], ["x", "y"])
    with pytest.raises(DataError, match="train split is empty"):
        load_splits(_text_cfg(tmp_path))


def test_clean_pairs() -> None:
    assert clean_pairs([(" a ", "b\n"), ("", "c"), ("d", " ")]) == ([("a", "b")], 2)


# ---------------------------------------------------------------- tsv


def test_tsv_source(tmp_path: Path) -> None:
    lines = [f"{s}\t{t}" for s, t in zip(EN, IT, strict=True)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("x\ty\n", encoding="utf-8")
    cfg = DataConfig(source="tsv", src_lang="en", tgt_lang="it", dir=str(tmp_path),
                     train="train.tsv", test="test.tsv")
    splits = load_splits(cfg)
    assert splits["train"] == list(zip(EN, IT, strict=True))
    assert splits["test"] == [("x", "y")] and splits["valid"] == []


@pytest.mark.parametrize("bad", ["no tab here", "a\tb\tc"])
def test_tsv_wrong_field_count_names_the_line(tmp_path: Path, bad: str) -> None:
    (tmp_path / "train.tsv").write_text(f"a\tb\nc\td\n{bad}\n", encoding="utf-8")
    cfg = DataConfig(source="tsv", src_lang="en", tgt_lang="it", dir=str(tmp_path),
                     train="train.tsv")
    with pytest.raises(DataError, match=r"train\.tsv line 3"):
        load_splits(cfg)


# ---------------------------------------------------------------- hub (stubbed)


def test_hub_translation_column(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"id": [str(i) for i in range(len(EN))],
                     "translation": [{"en": e, "it": i} for e, i in zip(EN, IT, strict=True)]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    splits = load_splits(_hub_cfg())
    assert fake.calls == [(("Helsinki-NLP/opus_books", "en-it"), {"split": "train"})]
    assert splits["train"] == list(zip(EN, IT, strict=True))
    assert splits["valid"] == [] and splits["test"] == []


def test_hub_reversed_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"translation": [{"en": e, "it": i} for e, i in zip(EN, IT, strict=True)]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = DataConfig(source="hub", name="Helsinki-NLP/opus_books", subset="en-it",
                     src_lang="it", tgt_lang="en")
    assert load_splits(cfg)["train"] == list(zip(IT, EN, strict=True))


def test_hub_named_splits_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"translation": [{"en": "a", "it": "b"}]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    load_splits(_hub_cfg(valid="validation", test="test"))
    assert [c[1]["split"] for c in fake.calls] == ["train", "validation", "test"]


def test_hub_two_text_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"en": EN, "it": IT, "score": [1.0] * len(EN)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_splits(_hub_cfg())["train"] == list(zip(EN, IT, strict=True))


def test_hub_language_missing_from_translation_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"translation": [{"en": e, "fr": "x"} for e in EN]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(DataError, match="'it'") as info:
        load_splits(_hub_cfg())
    assert "en" in str(info.value) and "fr" in str(info.value)


def test_hub_without_usable_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"text": EN, "label": [0] * len(EN)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(DataError, match="translation") as info:
        load_splits(_hub_cfg())
    assert "text" in str(info.value) and "label" in str(info.value)


def test_hub_load_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach the Hugging Face Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="Helsinki-NLP/opus_books") as info:
        load_splits(_hub_cfg())
    assert "Couldn't reach" in str(info.value) and "more detail" not in str(info.value)


def test_hub_carving(monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = _numbered_pairs(40)
    fake = _FakeHub({"translation": [{"en": s, "it": t} for s, t in pairs]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    splits = load_splits(_hub_cfg(valid_ratio=0.1, test_ratio=0.1))
    assert len(fake.calls) == 1
    assert len(splits["valid"]) == 4 and len(splits["test"]) == 4
    assert sorted(splits["train"] + splits["valid"] + splits["test"]) == sorted(pairs)


# ---------------------------------------------------------------- carving by ratio


def _write_tsv(folder: Path, pairs: list[tuple[str, str]]) -> DataConfig:
    (folder / "all.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return DataConfig(source="tsv", src_lang="en", tgt_lang="it", dir=str(folder),
                      train="all.tsv", valid_ratio=0.1, test_ratio=0.2)


def test_carving_is_disjoint_and_complete(tmp_path: Path) -> None:
    pairs = _numbered_pairs(100)
    splits = load_splits(_write_tsv(tmp_path, pairs))
    train, valid, test = (set(splits[k]) for k in ("train", "valid", "test"))
    assert len(valid) == 10 and len(test) == round(0.2 * 90)
    assert not train & valid and not train & test and not valid & test
    assert train | valid | test == set(pairs)
    assert len(splits["train"]) == len(train)  # nothing duplicated
    # carved pairs are a shuffle, not simply the head or the tail of the file
    assert splits["valid"] != pairs[:10] and splits["valid"] != pairs[-10:]
    # the remaining train keeps the file order
    assert splits["train"] == [p for p in pairs if p in train]


def test_carving_is_deterministic(tmp_path: Path) -> None:
    cfg = _write_tsv(tmp_path, _numbered_pairs(60))
    assert load_splits(cfg) == load_splits(cfg)
    cfg.split_seed += 1
    other = load_splits(cfg)
    cfg.split_seed -= 1
    assert other["valid"] != load_splits(cfg)["valid"]


def test_carving_takes_at_least_one_pair(tmp_path: Path) -> None:
    cfg = _write_tsv(tmp_path, _numbered_pairs(3))
    cfg.valid_ratio, cfg.test_ratio = 0.01, 0.0
    splits = load_splits(cfg)
    assert len(splits["valid"]) == 1 and len(splits["train"]) == 2 and splits["test"] == []


def test_explicit_split_is_not_carved(tmp_path: Path) -> None:
    _write_text(tmp_path, "train", EN, IT)
    _write_text(tmp_path, "dev", ["x"], ["y"])
    splits = load_splits(_text_cfg(tmp_path, valid="dev", valid_ratio=0.5))
    assert splits["valid"] == [("x", "y")]
    assert splits["train"] == list(zip(EN, IT, strict=True))
