"""Reading parallel text from every source kind (files the tests write, a stubbed hub), bad
data, carving valid/test out of train, and the split record of a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from translator.config import ConfigError, DataConfig
from translator.data.builtin_corpus import builtin_splits
from translator.data.corpus import iter_texts, load_corpus, load_splits, to_pairs
from translator.data.sources import DataError
from translator.data.split_record import check_split_record

EN = ["The dog sleeps.", "The cat eats.", "A bird sings.", "Where is it?"]
IT = ["Il cane dorme.", "Il gatto mangia.", "Un uccello canta.", "Dov'è?"]
PAIRS = list(zip(EN, IT, strict=True))


@pytest.fixture
def cache(tmp_path: Path) -> str:
    """A private datasets cache, so tests neither share nor leave files in ~/.cache."""
    return str(tmp_path / "cache")


def _write_text(folder: Path, stem: str, src: list[str], tgt: list[str],
                langs: tuple[str, str] = ("en", "it")) -> None:
    (folder / f"{stem}.{langs[0]}").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / f"{stem}.{langs[1]}").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")


def _cfg(source: str, folder: Path, cache: str, **kw: Any) -> DataConfig:
    return DataConfig(source=source, src_lang="en", tgt_lang="it", dir=str(folder),
                      cache_dir=cache, **kw)


def _numbered_pairs(n: int) -> list[tuple[str, str]]:
    return [(f"source {i}", f"target {i}") for i in range(n)]


# ---------------------------------------------------------------- text (Moses style)


def test_text_source_reads_line_aligned_files(tmp_path: Path, cache: str) -> None:
    _write_text(tmp_path, "train", EN, IT)
    _write_text(tmp_path, "dev", EN[:2], IT[:2])
    splits = load_splits(_cfg("text", tmp_path, cache, valid="dev"))
    assert splits["train"] == PAIRS
    assert splits["valid"] == PAIRS[:2]
    assert splits["test"] == []


def test_text_source_handles_crlf_and_missing_final_newline(tmp_path: Path, cache: str) -> None:
    (tmp_path / "train.en").write_bytes(b"a b\r\nc d")
    (tmp_path / "train.it").write_bytes("é f\r\ng h\r\n".encode())
    assert load_splits(_cfg("text", tmp_path, cache))["train"] == [("a b", "é f"), ("c d", "g h")]


def test_text_line_count_mismatch_names_both_files_and_counts(tmp_path: Path,
                                                             cache: str) -> None:
    _write_text(tmp_path, "train", EN, IT[:3])
    with pytest.raises(DataError, match="line-aligned") as info:
        load_splits(_cfg("text", tmp_path, cache))
    msg = str(info.value)
    assert "train.en has 4 lines" in msg and "train.it has 3" in msg


def test_text_invalid_utf8_names_file_and_line(tmp_path: Path, cache: str) -> None:
    _write_text(tmp_path, "train", EN, IT)
    (tmp_path / "train.it").write_bytes(b"ok\nstill ok\nbad \xff byte\nfine\n")
    with pytest.raises(DataError, match=r"train\.it line 3 is not valid UTF-8"):
        load_splits(_cfg("text", tmp_path, cache))


def test_empty_lines_and_sides_are_dropped_counted_and_reported(
        tmp_path: Path, cache: str, caplog: pytest.LogCaptureFixture) -> None:
    _write_text(tmp_path, "train", ["  a  ", "", "c", "d", ""], ["x", "y", "   ", "\tw ", ""])
    with caplog.at_level(logging.WARNING, logger="translator"):
        corpus = load_corpus(_cfg("text", tmp_path, cache))
    assert to_pairs(corpus["train"]) == [("a", "x"), ("d", "w")]
    assert corpus.dropped["train"] == 3
    assert any("dropped 3 of 5" in r.getMessage() for r in caplog.records)


def test_empty_train_is_an_error(tmp_path: Path, cache: str) -> None:
    _write_text(tmp_path, "train", ["", " "], ["x", "y"])
    with pytest.raises(DataError, match="train split is empty"):
        load_splits(_cfg("text", tmp_path, cache))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_tsv_source_two_columns_without_header(tmp_path: Path, cache: str) -> None:
    _write_lines(tmp_path / "train.tsv", [f"{s}\t{t}" for s, t in PAIRS])
    _write_lines(tmp_path / "test.tsv", ["x\ty"])
    splits = load_splits(_cfg("tsv", tmp_path, cache, train="train.tsv", test="test.tsv"))
    assert splits["train"] == PAIRS
    assert splits["test"] == [("x", "y")] and splits["valid"] == []


def test_tsv_keeps_text_as_text(tmp_path: Path, cache: str) -> None:
    # no quoting in TSV, and no "NA"/"null"/number conversion
    _write_lines(tmp_path / "train.tsv", ['"Quoted" word\t"Zitat"', "NA\tnull", "1990\t1,5"])
    assert load_splits(_cfg("tsv", tmp_path, cache, train="train.tsv"))["train"] == [
        ('"Quoted" word', '"Zitat"'), ("NA", "null"), ("1990", "1,5")]


def test_tsv_columns_by_header_name(tmp_path: Path, cache: str) -> None:
    lines = ["id\tgerman\tenglish"] + [f"{i}\t{t}\t{s}" for i, (s, t) in enumerate(PAIRS)]
    _write_lines(tmp_path / "train.tsv", lines)
    cfg = _cfg("tsv", tmp_path, cache, train="train.tsv", src_column="english",
               tgt_column="german")
    assert load_splits(cfg)["train"] == PAIRS
    # one name given: the other side is the column named by its language code
    lines[0] = "id\tit\tenglish"
    _write_lines(tmp_path / "other.tsv", lines)
    one = _cfg("tsv", tmp_path, cache, train="other.tsv", src_column="english")
    assert load_splits(one)["train"] == PAIRS


def test_tsv_columns_by_index(tmp_path: Path, cache: str) -> None:
    _write_lines(tmp_path / "train.tsv", [f"{t}\t7\t{s}" for s, t in PAIRS])
    cfg = _cfg("tsv", tmp_path, cache, train="train.tsv", src_column=2, tgt_column=0)
    assert load_splits(cfg)["train"] == PAIRS


def test_tsv_extra_field_names_file_and_line(tmp_path: Path, cache: str) -> None:
    _write_lines(tmp_path / "train.tsv", ["a\tb", "c\td", "e\tf\tg"])
    with pytest.raises(DataError, match=r"train\.tsv line 3 has 3 fields, expected 2"):
        load_splits(_cfg("tsv", tmp_path, cache, train="train.tsv"))


def test_tsv_missing_field_is_an_empty_side(tmp_path: Path, cache: str) -> None:
    _write_lines(tmp_path / "train.tsv", ["a\tb", "no tab here", "", "c\td"])
    corpus = load_corpus(_cfg("tsv", tmp_path, cache, train="train.tsv"))
    assert to_pairs(corpus["train"]) == [("a", "b"), ("c", "d")]
    assert corpus.dropped["train"] == 2


def test_tsv_invalid_utf8_names_file_and_line(tmp_path: Path, cache: str) -> None:
    (tmp_path / "train.tsv").write_bytes(b"a\tb\nc\td\xfe\n")
    with pytest.raises(DataError, match=r"train\.tsv line 2 is not valid UTF-8"):
        load_splits(_cfg("tsv", tmp_path, cache, train="train.tsv"))


@pytest.mark.parametrize(("columns", "missing"), [((0, 5), "no column 5"),
                                                  (("en", "xx"), "no column 'xx'")])
def test_tsv_missing_column_lists_the_available_ones(tmp_path: Path, cache: str,
                                                     columns: tuple[Any, Any],
                                                     missing: str) -> None:
    header = ["en\tde"] if isinstance(columns[0], str) else []
    _write_lines(tmp_path / "train.tsv", header + ["a\tb"])
    cfg = _cfg("tsv", tmp_path, cache, train="train.tsv", src_column=columns[0],
               tgt_column=columns[1])
    with pytest.raises(DataError, match=missing) as info:
        load_splits(cfg)
    assert "data.tgt_column" in str(info.value)
    assert ("en, de" if header else "0, 1") in str(info.value)


# ---------------------------------------------------------------- csv


def test_csv_with_header_and_quoted_fields(tmp_path: Path, cache: str) -> None:
    (tmp_path / "train.csv").write_text(
        'en,it,score\n"Hello, world",Ciao mondo,1\n"He said ""hi"".","Disse ""ciao"".",2\n'
        "plain,semplice,3\n", encoding="utf-8")
    cfg = _cfg("csv", tmp_path, cache, train="train.csv", src_column="en", tgt_column="it")
    assert load_splits(cfg)["train"] == [("Hello, world", "Ciao mondo"),
                                         ('He said "hi".', 'Disse "ciao".'),
                                         ("plain", "semplice")]


def test_csv_without_header_by_index(tmp_path: Path, cache: str) -> None:
    (tmp_path / "train.csv").write_text("1,uno,one\n2,due,two\n", encoding="utf-8")
    cfg = _cfg("csv", tmp_path, cache, train="train.csv", src_column=2, tgt_column=1)
    assert load_splits(cfg)["train"] == [("one", "uno"), ("two", "due")]
    # without column settings a headerless file's first two columns are used
    default = _cfg("csv", tmp_path, cache, train="train.csv")
    assert load_splits(default)["train"] == [("1", "uno"), ("2", "due")]
    # one index given: the other side is column 0 or 1
    one = _cfg("csv", tmp_path, cache, train="train.csv", src_column=2)
    assert load_splits(one)["train"] == [("one", "uno"), ("two", "due")]


def test_csv_invalid_utf8_names_file_and_line(tmp_path: Path, cache: str) -> None:
    (tmp_path / "train.csv").write_bytes(b"a,b\nc,d\ne,\xc3\x28\n")
    with pytest.raises(DataError, match=r"train\.csv line 3 is not valid UTF-8"):
        load_splits(_cfg("csv", tmp_path, cache, train="train.csv"))


# ---------------------------------------------------------------- jsonl


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")


def test_jsonl_fields_named_by_language(tmp_path: Path, cache: str) -> None:
    _write_jsonl(tmp_path / "train.jsonl", [{"en": s, "it": t, "id": i}
                                            for i, (s, t) in enumerate(PAIRS)])
    assert load_splits(_cfg("jsonl", tmp_path, cache, train="train.jsonl"))["train"] == PAIRS


def test_jsonl_fields_by_name(tmp_path: Path, cache: str) -> None:
    _write_jsonl(tmp_path / "train.jsonl", [{"source": s, "target": t} for s, t in PAIRS])
    cfg = _cfg("jsonl", tmp_path, cache, train="train.jsonl", src_column="source",
               tgt_column="target")
    assert load_splits(cfg)["train"] == PAIRS


def test_jsonl_translation_dicts(tmp_path: Path, cache: str) -> None:
    _write_jsonl(tmp_path / "train.jsonl", [{"translation": {"it": t, "en": s}}
                                            for s, t in PAIRS])
    assert load_splits(_cfg("jsonl", tmp_path, cache, train="train.jsonl"))["train"] == PAIRS


def test_jsonl_language_missing_in_one_row_names_the_row(tmp_path: Path, cache: str) -> None:
    rows = [{"translation": {"en": s, "it": t}} for s, t in PAIRS]
    rows[2] = {"translation": {"en": "x", "fr": "y"}}
    _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match="row 2 .* no 'it'") as info:
        load_splits(_cfg("jsonl", tmp_path, cache, train="train.jsonl"))
    assert "en, fr" in str(info.value)


def test_jsonl_missing_field_lists_the_available_ones(tmp_path: Path, cache: str) -> None:
    _write_jsonl(tmp_path / "train.jsonl", [{"source": s, "tgt": t} for s, t in PAIRS])
    cfg = _cfg("jsonl", tmp_path, cache, train="train.jsonl", src_column="source",
               tgt_column="target")
    with pytest.raises(DataError, match="no column 'target'") as info:
        load_splits(cfg)
    assert "source, tgt" in str(info.value)


def test_jsonl_bad_line_is_named(tmp_path: Path, cache: str) -> None:
    (tmp_path / "train.jsonl").write_text('{"en": "a", "it": "b"}\n{"en": "c", "it": \n',
                                          encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.jsonl line 2 is not valid JSON"):
        load_splits(_cfg("jsonl", tmp_path, cache, train="train.jsonl"))


def test_jsonl_invalid_utf8_names_file_and_line(tmp_path: Path, cache: str) -> None:
    (tmp_path / "train.jsonl").write_bytes(b'{"en": "a", "it": "b"}\n{"en": "\xff", "it": "d"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl line 2 is not valid UTF-8"):
        load_splits(_cfg("jsonl", tmp_path, cache, train="train.jsonl"))


def test_non_text_column_is_refused(tmp_path: Path, cache: str) -> None:
    _write_jsonl(tmp_path / "train.jsonl", [{"en": s, "n": i} for i, (s, _) in enumerate(PAIRS)])
    cfg = _cfg("jsonl", tmp_path, cache, train="train.jsonl", src_column="en", tgt_column="n")
    with pytest.raises(DataError, match="column 'n' .* not text"):
        load_splits(cfg)


# ---------------------------------------------------------------- parquet


def test_parquet_columns(tmp_path: Path, cache: str) -> None:
    pq.write_table(pa.table({"it": IT, "en": EN}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"it": ["b"], "en": ["a"]}), tmp_path / "valid.parquet")
    cfg = _cfg("parquet", tmp_path, cache, train="train.parquet", valid="valid.parquet")
    splits = load_splits(cfg)
    assert splits["train"] == PAIRS and splits["valid"] == [("a", "b")]


def test_parquet_translation_struct_and_missing_language(tmp_path: Path, cache: str) -> None:
    table = pa.table({"translation": [{"en": s, "it": t} for s, t in PAIRS]})
    pq.write_table(table, tmp_path / "train.parquet")
    cfg = _cfg("parquet", tmp_path, cache, train="train.parquet")
    assert load_splits(cfg)["train"] == PAIRS
    cfg.tgt_lang = "de"
    with pytest.raises(DataError, match="translation column .* no 'de'") as info:
        load_splits(cfg)
    assert "en, it" in str(info.value)


def test_parquet_missing_column(tmp_path: Path, cache: str) -> None:
    pq.write_table(pa.table({"a": EN, "b": IT}), tmp_path / "train.parquet")
    with pytest.raises(DataError, match="neither a 'translation' column") as info:
        load_splits(_cfg("parquet", tmp_path, cache, train="train.parquet"))
    assert "columns: a, b" in str(info.value)


# ---------------------------------------------------------------- hub (stubbed) and builtin


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


def test_hub_translation_column(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"id": [str(i) for i in range(len(EN))],
                     "translation": [{"en": e, "it": i} for e, i in PAIRS]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    splits = load_splits(_hub_cfg())
    # trust_remote_code=False: a hub dataset's loading script is never run (issue 30).
    assert fake.calls == [(("Helsinki-NLP/opus_books", "en-it"),
                           {"split": "train", "trust_remote_code": False})]
    assert splits["train"] == PAIRS
    assert splits["valid"] == [] and splits["test"] == []


def test_hub_reversed_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"translation": [{"en": e, "it": i} for e, i in PAIRS]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = _hub_cfg()
    cfg.src_lang, cfg.tgt_lang = "it", "en"
    assert load_splits(cfg)["train"] == list(zip(IT, EN, strict=True))


def test_hub_named_splits_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"translation": [{"en": "a", "it": "b"}]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    load_splits(_hub_cfg(valid="validation", test="test"))
    assert [c[1]["split"] for c in fake.calls] == ["train", "validation", "test"]


def test_hub_two_text_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"en": EN, "it": IT, "score": [1.0] * len(EN)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_splits(_hub_cfg())["train"] == PAIRS


def test_hub_language_missing_from_translation_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"translation": [{"en": e, "fr": "x"} for e in EN]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(DataError, match="'it'") as info:
        load_splits(_hub_cfg())
    assert "en, fr" in str(info.value)


def test_hub_without_usable_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeHub({"text": EN, "label": [0] * len(EN)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(DataError, match="translation") as info:
        load_splits(_hub_cfg())
    assert "text, label" in str(info.value)


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


def test_builtin_source_is_the_grammar_corpus() -> None:
    corpus = load_corpus(DataConfig(source="builtin", builtin_size=300, builtin_seed=7))
    expected = builtin_splits(300, 7, 30, 30)
    for name in ("train", "valid", "test"):
        assert to_pairs(corpus[name]) == expected[name]


def test_unknown_source_kind_is_a_data_error(tmp_path: Path) -> None:
    cfg = DataConfig(source="ftp", dir=str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="unknown data.source 'ftp'"):
        load_corpus(cfg)


# ---------------------------------------------------------------- carving by ratio


def _write_tsv(folder: Path, cache: str, pairs: list[tuple[str, str]]) -> DataConfig:
    _write_lines(folder / "all.tsv", [f"{s}\t{t}" for s, t in pairs])
    return _cfg("tsv", folder, cache, train="all.tsv", valid_ratio=0.1, test_ratio=0.2)


def test_carving_is_disjoint_and_complete(tmp_path: Path, cache: str) -> None:
    pairs = _numbered_pairs(100)
    splits = load_splits(_write_tsv(tmp_path, cache, pairs))
    train, valid, test = (set(splits[k]) for k in ("train", "valid", "test"))
    assert len(valid) == 10 and len(test) == 20
    assert not train & valid and not train & test and not valid & test
    assert train | valid | test == set(pairs)
    assert len(splits["train"]) == len(train)  # nothing duplicated
    # carved pairs are a shuffle, not simply the head or the tail of the file
    assert splits["valid"] != pairs[:10] and splits["valid"] != pairs[-10:]
    # every split keeps the file order
    for name in ("train", "valid", "test"):
        assert splits[name] == [p for p in pairs if p in set(splits[name])]


def test_carving_is_deterministic_and_follows_the_seed(tmp_path: Path, cache: str) -> None:
    cfg = _write_tsv(tmp_path, cache, _numbered_pairs(60))
    assert load_splits(cfg) == load_splits(cfg)
    first = load_splits(cfg)["valid"]
    cfg.split_seed += 1
    assert load_splits(cfg)["valid"] != first


def test_carving_takes_at_least_one_pair(tmp_path: Path, cache: str) -> None:
    cfg = _write_tsv(tmp_path, cache, _numbered_pairs(3))
    cfg.valid_ratio, cfg.test_ratio = 0.01, 0.0
    splits = load_splits(cfg)
    assert len(splits["valid"]) == 1 and len(splits["train"]) == 2 and splits["test"] == []


def test_explicit_split_is_not_carved(tmp_path: Path, cache: str) -> None:
    _write_text(tmp_path, "train", EN, IT)
    _write_text(tmp_path, "dev", ["x"], ["y"])
    splits = load_splits(_cfg("text", tmp_path, cache, valid="dev", valid_ratio=0.5))
    assert splits["valid"] == [("x", "y")]
    assert splits["train"] == PAIRS


def test_carving_happens_after_dropping_empty_pairs(tmp_path: Path, cache: str) -> None:
    pairs = _numbered_pairs(20)
    _write_lines(tmp_path / "all.tsv", [f"{s}\t{t}" for s, t in pairs] + ["\t"] * 20)
    cfg = _cfg("tsv", tmp_path, cache, train="all.tsv", valid_ratio=0.5)
    corpus = load_corpus(cfg)
    assert len(corpus["valid"]) == 10 and len(corpus["train"]) == 10
    assert corpus.dropped == {"train": 20, "valid": 0, "test": 0}


# ---------------------------------------------------------------- split record, caching, views


def test_split_record_is_written_and_checked_on_resume(tmp_path: Path, cache: str) -> None:
    cfg = _write_tsv(tmp_path, cache, _numbered_pairs(50))
    record = tmp_path / "run" / "splits.json"
    record.parent.mkdir()
    check_split_record(record, load_corpus(cfg), resume=False)
    saved = json.loads(record.read_text())
    assert saved["split_seed"] == cfg.split_seed
    assert saved["sizes"] == {"train": 35, "valid": 5, "test": 10}
    assert saved["carved_ratios"] == {"valid": 0.1, "test": 0.2}
    check_split_record(record, load_corpus(cfg), resume=True)  # same data: fine
    _write_tsv(tmp_path, cache, _numbered_pairs(60))  # the corpus grew since
    with pytest.raises(DataError, match="--resume") as info:
        check_split_record(record, load_corpus(cfg), resume=True)
    assert "splits.json" in str(info.value)
    check_split_record(record, load_corpus(cfg), resume=False)  # a new run just records


def test_files_are_converted_once_and_reused(tmp_path: Path, cache: str) -> None:
    _write_text(tmp_path, "train", EN, IT)
    first = load_corpus(_cfg("text", tmp_path, cache))["train"]
    second = load_corpus(_cfg("text", tmp_path, cache))["train"]
    assert first.cache_files and first.cache_files == second.cache_files
    assert first._fingerprint == second._fingerprint
    _write_text(tmp_path, "train", EN[:2], IT[:2])  # a changed file is read again
    assert to_pairs(load_corpus(_cfg("text", tmp_path, cache))["train"]) == PAIRS[:2]


def test_iter_texts_yields_batches(tmp_path: Path, cache: str) -> None:
    _write_text(tmp_path, "train", EN, IT)
    train = load_corpus(_cfg("text", tmp_path, cache))["train"]
    assert list(iter_texts(train, "src", batch_size=3)) == [EN[:3], EN[3:]]
    assert [t for batch in iter_texts(train, "tgt") for t in batch] == IT


@pytest.mark.parametrize("source", ["text", "tsv", "csv", "jsonl"])
def test_empty_files_are_empty_splits(tmp_path: Path, cache: str, source: str) -> None:
    if source == "text":
        _write_text(tmp_path, "train", EN, IT)
        (tmp_path / "dev.en").write_bytes(b"")
        (tmp_path / "dev.it").write_bytes(b"")
        cfg = _cfg("text", tmp_path, cache, valid="dev")
    else:
        _write_jsonl(tmp_path / "train.jsonl", [{"en": s, "it": t} for s, t in PAIRS])
        (tmp_path / f"dev.{source}").write_bytes(b"")
        cfg = _cfg(source, tmp_path, cache, train="train.jsonl", valid=f"dev.{source}")
        cfg.source = "jsonl" if source == "jsonl" else source
        if source != "jsonl":  # train must be of the same kind: write it as TSV/CSV too
            sep = "\t" if source == "tsv" else ","
            _write_lines(tmp_path / "train.txt", [f"a{sep}b", f"c{sep}d"])
            cfg.train = "train.txt"
    splits = load_splits(cfg)
    assert splits["valid"] == [] and len(splits["train"]) >= 2
    cfg.train, cfg.valid = cfg.valid, None
    with pytest.raises(DataError, match="train split is empty"):
        load_splits(cfg)


def test_one_empty_text_file_is_a_line_count_mismatch(tmp_path: Path, cache: str) -> None:
    _write_text(tmp_path, "train", EN, IT)
    (tmp_path / "train.it").write_bytes(b"")
    with pytest.raises(DataError, match="train.en has 4 lines but .*train.it has 0"):
        load_splits(_cfg("text", tmp_path, cache))


def test_missing_file_is_one_error_naming_split_and_path(tmp_path: Path, cache: str) -> None:
    # Checked where the data is read (check_data_files), not when the config is loaded.
    with pytest.raises(ConfigError, match=r"data\.train: file not found: .*train\.en"):
        load_corpus(_cfg("text", tmp_path, cache))
    with pytest.raises(ConfigError, match=r"data\.train: file not found: .*nope\.parquet"):
        load_corpus(_cfg("parquet", tmp_path, cache, train="nope.parquet"))
