"""Config loading: strict keys and types, validation, `--set` overrides, safe YAML, round trip."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import save_config
from translator.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
)
from translator.data.sources import check_data_files


def _error(raw: Any, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, overrides=overrides)
    return str(info.value)


# ---------------------------------------------------------------- unknown keys and types


def test_defaults_build_and_validate() -> None:
    cfg = config_from_dict({})
    assert cfg == Config()
    assert cfg.model.d_model == 512 and cfg.model.heads == 8
    assert config_from_dict(None) == Config()


def test_unknown_key_names_section_key_and_suggests_near_miss() -> None:
    msg = _error({"model": {"d_modle": 64}})
    assert "model.d_modle" in msg
    assert "did you mean" in msg and "d_model" in msg


def test_unknown_key_without_near_miss_has_no_suggestion() -> None:
    msg = _error({"training": {"zzzzzz": 1}})
    assert "training.zzzzzz" in msg
    assert "did you mean" not in msg


def test_unknown_section_suggests_near_miss() -> None:
    msg = _error({"modle": {"d_model": 64}})
    assert "modle" in msg and "did you mean 'model'" in msg


def test_section_that_is_not_a_mapping() -> None:
    assert "model" in _error({"model": [1, 2]})


def test_top_level_that_is_not_a_mapping() -> None:
    assert "mapping" in _error([1, 2, 3])


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("model", "layers", "three"),
        ("model", "layers", 2.5),
        ("model", "layers", True),  # a bool is not an int here
        ("model", "tie_embeddings", "yes please"),
        ("model", "norm", "middle"),
        ("training", "lr", "fast"),
        ("data", "source", "ftp"),
        ("data", "src_lang", 5),
    ],
)
def test_wrong_type_names_the_key(section: str, key: str, value: Any) -> None:
    msg = _error({section: {key: value}})
    assert f"{section}.{key}" in msg
    assert repr(value) in msg


def test_literal_error_lists_the_choices() -> None:
    msg = _error({"model": {"norm": "middle"}})
    assert "'pre'" in msg and "'post'" in msg


def test_int_accepted_where_float_expected() -> None:
    cfg = config_from_dict({"training": {"lr": 1, "label_smoothing": 0}})
    assert cfg.training.lr == 1.0 and isinstance(cfg.training.lr, float)
    assert isinstance(cfg.training.label_smoothing, float)


# ---------------------------------------------------------------- value validation


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.d_model", 0),
        ("model.d_model", -64),
        ("model.layers", 0),
        ("model.layers", -1),
        ("model.heads", 0),
        ("model.d_ff", -5),
        ("model.decoder_layers", -1),
        ("data.max_len", 0),
        ("training.epochs", 0),
        ("training.batch_size", -3),
        ("training.lr", 0),
        ("training.lr", -0.001),
        ("training.max_steps", -1),
        ("training.max_tokens", -1),
        ("tokenizer.vocab_size", -1),
        ("tokenizer.min_frequency", 0),
        ("model.dropout", 1.0),
        ("model.dropout", -0.1),
        ("training.label_smoothing", 1.5),
        ("data.valid_ratio", -0.1),
        ("training.adam_beta2", 1.0),
    ],
)
def test_impossible_values_name_the_key(key: str, value: Any) -> None:
    section, name = key.split(".")
    msg = _error({section: {name: value}})
    assert key in msg


def test_decoding_dtype_lists_the_choices() -> None:
    msg = _error({"decoding": {"dtype": "float8"}})
    assert "decoding.dtype" in msg and "bf16" in msg


def test_d_model_not_divisible_by_heads() -> None:
    msg = _error({"model": {"d_model": 100, "heads": 3}})
    assert "model.heads" in msg and "divisible" in msg


def test_head_dim_must_be_even() -> None:
    assert "model.heads" in _error({"model": {"d_model": 24, "heads": 8}})


def test_ratios_must_leave_some_train() -> None:
    assert "data.valid_ratio" in _error({"data": {"valid_ratio": 0.5, "test_ratio": 0.5}})


def test_languages_must_differ() -> None:
    assert "data.tgt_lang" in _error({"data": {"src_lang": "en", "tgt_lang": "en"}})


def test_max_tokens_must_fit_longest_sentence() -> None:
    msg = _error({"data": {"max_len": 256}, "training": {"max_tokens": 100}})
    assert "training.max_tokens" in msg
    # 0 means "use batch_size" and is always fine
    config_from_dict({"data": {"max_len": 256}, "training": {"max_tokens": 0}})


def test_hub_needs_a_name() -> None:
    assert "data.name" in _error({"data": {"source": "hub"}})


@pytest.mark.parametrize("source", ["text", "tsv"])
def test_file_sources_need_a_dir(source: str) -> None:
    assert "data.dir" in _error({"data": {"source": source}})


def _data_error(raw: Any) -> str:
    """Loading a config checks no file (a trained run translates without its corpus); what
    reads the data checks them, with the same one-line, key-naming error."""
    cfg = config_from_dict(raw)
    with pytest.raises(ConfigError) as info:
        check_data_files(cfg.data)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("source", ["text", "tsv"])
def test_missing_data_dir_names_the_key(tmp_path: Path, source: str) -> None:
    missing = tmp_path / "nowhere"
    msg = _data_error({"data": {"source": source, "dir": str(missing)}})
    assert "data.dir" in msg and str(missing) in msg


def test_text_source_missing_file_names_split_and_path(tmp_path: Path) -> None:
    (tmp_path / "train.en").write_text("a\n", encoding="utf-8")
    data = {"source": "text", "dir": str(tmp_path), "src_lang": "en", "tgt_lang": "de"}
    msg = _data_error({"data": data})
    assert "data.train" in msg and "train.de" in msg
    (tmp_path / "train.de").write_text("b\n", encoding="utf-8")
    assert config_from_dict({"data": data}).data.dir == str(tmp_path)
    msg = _data_error({"data": {**data, "valid": "dev"}})
    assert "data.valid" in msg and "dev.en" in msg


def test_tsv_source_missing_file_names_split_and_path(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("a\tb\n", encoding="utf-8")
    data = {"source": "tsv", "dir": str(tmp_path), "train": "train.tsv"}
    check_data_files(config_from_dict({"data": data}).data)
    msg = _data_error({"data": {**data, "test": "test.tsv"}})
    assert "data.test" in msg and "test.tsv" in msg
    msg = _data_error({"data": {**data, "train": "other.tsv"}})
    assert "data.train" in msg and "other.tsv" in msg


def test_nan_learning_rate_is_rejected() -> None:
    assert "training.lr" in _error({"training": {"lr": float("nan")}})


# ---------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("model.d_model=64", "model", "d_model", 64),
        ("training.lr=0.001", "training", "lr", 0.001),
        ("model.dropout=0", "model", "dropout", 0.0),
        ("model.tie_embeddings=false", "model", "tie_embeddings", False),
        ("model.tie_embeddings=true", "model", "tie_embeddings", True),
        ("output.dir=null", "output", "dir", None),
        ("output.dir=", "output", "dir", None),
        ("output.dir=out/run 1", "output", "dir", "out/run 1"),
        ("data.src_lang=fr", "data", "src_lang", "fr"),
        ("model.norm=post", "model", "norm", "post"),
    ],
)
def test_override_values_are_parsed_as_yaml(override: str, section: str, key: str,
                                            expected: Any) -> None:
    cfg = config_from_dict({"model": {"d_model": 128, "heads": 4}}, overrides=[override])
    value = getattr(getattr(cfg, section), key)
    assert value == expected and type(value) is type(expected)


def test_overrides_apply_in_order_over_the_file_and_do_not_mutate_it() -> None:
    raw = {"model": {"d_model": 128, "heads": 4}, "training": {"lr": 0.01}}
    before = copy.deepcopy(raw)
    cfg = config_from_dict(raw, overrides=["model.d_model=64", "training.lr=0.5",
                                           "model.d_model=32"])
    assert cfg.model.d_model == 32 and cfg.training.lr == 0.5 and cfg.model.heads == 4
    assert raw == before


def test_override_result_is_validated() -> None:
    msg = _error({}, ("model.heads=7",))
    assert "model.heads" in msg


def test_override_with_wrong_type_names_the_key() -> None:
    msg = _error({}, ("model.layers=three",))
    assert "model.layers" in msg


@pytest.mark.parametrize("bad", ["model.d_model", "d_model=64", "model.=3", ".d_model=3",
                                 "a.b.c=1", "=5"])
def test_malformed_override(bad: str) -> None:
    msg = _error({}, (bad,))
    assert "section.key=value" in msg and bad in msg


def test_override_unknown_section_suggests() -> None:
    msg = _error({}, ("modle.d_model=64",))
    assert "unknown section 'modle'" in msg and "did you mean 'model'" in msg


def test_override_unknown_key_suggests() -> None:
    msg = _error({}, ("model.d_modle=64",))
    assert "model.d_modle" in msg and "d_model" in msg


def test_parse_override_splits_at_first_equals() -> None:
    assert parse_override("output.dir=a=b") == ("output", "dir", "a=b")
    assert parse_override(" model.layers = 3") == ("model", "layers", 3)


def test_scientific_notation_float(tmp_path: Path) -> None:
    path = tmp_path / "sci.yaml"
    path.write_text("training:\n  lr: 5e-4\n", encoding="utf-8")
    assert load_config(path).training.lr == pytest.approx(5e-4)
    assert config_from_dict({}, overrides=["training.lr=1e-3"]).training.lr == pytest.approx(1e-3)


def test_override_norwegian_language_code() -> None:
    assert config_from_dict({}, overrides=["data.tgt_lang=no"]).data.tgt_lang == "no"


# ---------------------------------------------------------------- files


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_config(missing)


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  d_model: [64\n  heads: 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"data:\n  src_lang: \xe9\xff\n")
    with pytest.raises(ConfigError, match="latin1.yaml"):
        load_config(path)


def test_load_config_is_safe_yaml(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


def test_load_config_empty_file_is_an_error(tmp_path: Path) -> None:
    # Defaults for everything would silently train the ~45M-parameter base model.
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="empty.yaml is empty"):
        load_config(path)
    assert load_config(path, overrides=["model.layers=2"]) == config_from_dict(
        {"model": {"layers": 2}}, name="empty")
    path.write_text("{}\n", encoding="utf-8")  # an explicit empty mapping: the defaults
    assert load_config(path) == Config(name="empty")


def test_load_config_applies_overrides(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  d_model: 128\n  heads: 4\n", encoding="utf-8")
    cfg = load_config(path, overrides=["model.layers=2"])
    assert (cfg.model.d_model, cfg.model.heads, cfg.model.layers) == (128, 4, 2)


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    raw = {
        "data": {"source": "hub", "name": "Helsinki-NLP/opus_books", "subset": "en-it",
                 "src_lang": "en", "tgt_lang": "it", "valid_ratio": 0.05, "max_len": 100},
        "tokenizer": {"min_frequency": 2, "lowercase": True},
        "model": {"d_model": 64, "layers": 2, "decoder_layers": 3, "heads": 4, "d_ff": 128,
                  "dropout": 0.0, "norm": "post", "tie_embeddings": False},
        "training": {"lr": 0.00025, "max_tokens": 0, "batch_size": 16, "schedule": "constant"},
        "output": {"dir": str(tmp_path / "out")},
    }
    cfg = config_from_dict(raw, name="exp")
    path = tmp_path / "exp.yaml"
    save_config(cfg, path)
    loaded = load_config(path)
    assert loaded == cfg
    assert loaded.to_dict() == cfg.to_dict()


def test_run_dir_defaults_to_runs_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my_experiment.yaml"
    path.write_text("model:\n  layers: 2\n", encoding="utf-8")
    assert load_config(path).run_dir == Path("runs") / "my_experiment"
    out = tmp_path / "elsewhere"
    cfg = load_config(path, overrides=[f"output.dir={out}"])
    assert cfg.run_dir == out
