"""The data path inside training: a file corpus with a shared subword vocabulary, the run's
split record, and a resume that refuses changed data. Plus the data/tokenizer config keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from translator.config import ConfigError, config_from_dict
from translator.data.sources import DataError, check_data_files
from translator.decode.translator import Translator
from translator.run import RunLayout
from translator.train.loop import train

EN = ["A man sleeps.", "A woman reads a book.", "Two dogs run.", "The child eats an apple.",
      "A man reads.", "The woman sleeps.", "Two children run.", "The dog eats."] * 4
DE = ["Ein Mann schläft.", "Eine Frau liest ein Buch.", "Zwei Hunde rennen.",
      "Das Kind isst einen Apfel.", "Ein Mann liest.", "Die Frau schläft.",
      "Zwei Kinder rennen.", "Der Hund isst."] * 4


def _write(folder: Path, n: int) -> None:
    (folder / "all.en").write_text("".join(s + "\n" for s in EN[:n]), encoding="utf-8")
    (folder / "all.de").write_text("".join(t + "\n" for t in DE[:n]), encoding="utf-8")


def _config(folder: Path, **data: Any) -> Any:
    raw = {
        "data": {"source": "text", "dir": str(folder), "train": "all", "valid_ratio": 0.125,
                 "max_len": 32, "cache_dir": str(folder / "cache"), **data},
        "tokenizer": {"kind": "bpe", "vocab_size": 80, "shared": True},
        "model": {"d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "dropout": 0.0},
        "training": {"max_steps": 2, "max_tokens": 200, "warmup_steps": 1, "threads": 1,
                     "log_every": 1, "examples": 0},
        "output": {"dir": str(folder / "run")},
    }
    return config_from_dict(raw, name="pipeline")


def test_training_on_files_records_splits_and_refuses_changed_data(tmp_path: Path) -> None:
    _write(tmp_path, 32)
    result = train(_config(tmp_path), quiet=True)
    layout = RunLayout(result.run_dir)
    record = json.loads(layout.splits.read_text())
    # 4 of the 32 pairs carved out as valid, then train (each pair 4 times) deduplicated
    assert record["sizes"] == {"train": 8, "valid": 4, "test": 0}
    assert record["train_filters"]["duplicates"] == 20
    assert record["split_seed"] == 1234 and record["carved_ratios"] == {"valid": 0.125}
    # one joint vocabulary, saved under both languages' names
    assert layout.tokenizer("en").read_text() == layout.tokenizer("de").read_text()
    translator = Translator.from_run(result.run_dir, device="cpu")
    assert translator.src_tok.kind == "bpe"
    assert isinstance(translator.translate(["A man sleeps."])[0], str)

    _write(tmp_path, 24)  # the corpus changed under the run
    with pytest.raises(DataError, match="--resume"):
        train(_config(tmp_path), resume=True, quiet=True)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"source": "jsonl", "dir": None}, "data.dir"),
        ({"source": "parquet", "dir": "/nonexistent/folder"}, "data.dir"),
        ({"source": "tsv", "src_column": -1, "tgt_column": 1}, "data.src_column"),
        ({"source": "tsv", "src_column": "en", "tgt_column": 1}, "data.tgt_column"),
        ({"source": "csv", "src_column": 0, "tgt_column": "de"}, "data.tgt_column"),
        ({"source": "jsonl", "src_column": "a", "tgt_column": "a"}, "data.tgt_column"),
        ({"source": "text", "src_column": "en"}, "data.src_column"),
        ({"source": "builtin", "tgt_column": 1}, "data.tgt_column"),
    ],
)
def test_bad_data_keys_name_the_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    for name in ("train.jsonl", "train.tsv", "train.csv", "train.en", "train.de"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    data = {"dir": str(tmp_path), "train": "train." + {"text": "x"}.get(
        data["source"], data["source"]), **data}
    if data["source"] == "text":
        data["train"] = "train"
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_data_files(config_from_dict({"data": data}).data)  # files: where data is read


@pytest.mark.parametrize("source", ["csv", "jsonl", "parquet"])
def test_file_sources_check_their_files(tmp_path: Path, source: str) -> None:
    cfg = config_from_dict({"data": {"source": source, "dir": str(tmp_path),
                                     "train": f"train.{source}"}})
    with pytest.raises(ConfigError, match=r"data\.train.*file not found"):
        check_data_files(cfg.data)


def test_new_keys_accept_names_and_indices(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("a\tb\n", encoding="utf-8")
    base = {"source": "tsv", "dir": str(tmp_path), "train": "train.tsv"}
    cfg = config_from_dict({"data": {**base, "src_column": 1, "tgt_column": 0}})
    assert (cfg.data.src_column, cfg.data.tgt_column) == (1, 0)
    cfg = config_from_dict({"data": {**base, "src_column": "en", "tgt_column": "de"},
                            "tokenizer": {"kind": "unigram", "shared": True, "nfkc": True}})
    assert cfg.data.src_column == "en" and cfg.tokenizer.kind == "unigram"
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        config_from_dict({"tokenizer": {"kind": "wordpiece"}})
