"""Fine-tuning: `translator train --config NEW.yaml --init-from RUN` starts from another run's
weights and tokenizers with a fresh optimizer and schedule, records its base, and refuses
what cannot work (a different vocabulary or model shape, --resume, the base's own folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from translator.checkpoint import load_checkpoint
from translator.cli import app
from translator.config import config_from_dict
from translator.data.builtin_corpus import builtin_splits
from translator.data.dataset import BilingualDataset
from translator.decode.translator import Translator
from translator.errors import TranslatorError
from translator.run import RunLayout
from translator.train.loop import train
from translator.train.step import validation_loss

MODEL = {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "dropout": 0.1}
TRAINING = {"max_tokens": 800, "lr": 0.003, "warmup_steps": 5, "log_every": 1,
            "valid_max_sentences": 10, "examples": 0, "threads": 1}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy run on the built-in corpus (30 steps; best.pt from its validations)."""
    run = tmp_path_factory.mktemp("base") / "run"
    raw = {"data": {"source": "builtin", "builtin_size": 400, "max_len": 40},
           "model": MODEL, "training": {**TRAINING, "max_steps": 30, "valid_every": 15},
           "output": {"dir": str(run)}}
    train(config_from_dict(raw, name="base"), quiet=True)
    return run


def _twisted(n: int) -> list[tuple[str, str]]:
    """Built-in sentences the base never saw, the German words in reverse order: the same
    vocabulary, a consistent new "domain" the base model gets wrong."""
    pairs = builtin_splits(400, seed=7, valid_size=1, test_size=1)["train"][:n]
    return [(en, " ".join(reversed(de.split()))) for en, de in pairs]


def _new_config(folder: Path, **changes: Any) -> dict[str, Any]:
    pairs = _twisted(60)
    (folder / "new.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    raw = {"data": {"source": "tsv", "dir": str(folder), "train": "new.tsv", "max_len": 40,
                    "cache_dir": str(folder / "cache")},
           "model": {**MODEL, "dropout": 0.0},  # dropout may change: no weight depends on it
           "training": {**TRAINING, "max_steps": 40, "epochs": 1000},
           "output": {"dir": str(folder / "tuned")}}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return raw


def _loss(run: Path, pairs: list[tuple[str, str]]) -> float:
    t = Translator.from_run(run, device="cpu")
    data = BilingualDataset.from_pairs(pairs, t.src_tok, t.tgt_tok, 40, "new")
    assert len(data) == len(pairs)
    return validation_loss(t.model, data, t.device, 800, 64)


def test_fine_tuning_lowers_the_loss_on_the_new_domain(base: Path, tmp_path: Path) -> None:
    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump(_new_config(tmp_path)), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--init-from",
                                      str(base), "--quiet"])
    assert result.exit_code == 0, result.output
    tuned = RunLayout(tmp_path / "tuned")
    base_layout = RunLayout(base)
    # the base's vocabulary, byte for byte, not one built from the new corpus
    for lang in ("en", "de"):
        assert tuned.tokenizer(lang).read_bytes() == base_layout.tokenizer(lang).read_bytes()
    record = json.loads(tuned.init.read_text())
    assert record["run"] == str(base.resolve())
    assert record["checkpoint"] == str(base_layout.best.resolve()) and record["step"] >= 15
    ckpt = load_checkpoint(tuned.latest)
    assert ckpt["step"] == 40  # a fresh step count and schedule, not the base's 30 + 40
    adam_steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert adam_steps == {40.0}  # a fresh optimizer: its moments saw only these 40 steps
    pairs = _twisted(60)
    base_loss, tuned_loss = _loss(base, pairs), _loss(tuned.root, pairs)
    print(f"loss on the new pairs: base {base_loss:.3f}, fine-tuned {tuned_loss:.3f}")
    assert tuned_loss < base_loss - 0.5, (base_loss, tuned_loss)


def test_init_from_a_checkpoint_file(base: Path, tmp_path: Path) -> None:
    latest = RunLayout(base).latest
    cfg = config_from_dict(_new_config(tmp_path, training__max_steps=1), name="new")
    train(cfg, quiet=True, init_from=latest)
    tuned = RunLayout(tmp_path / "tuned")
    record = json.loads(tuned.init.read_text())
    assert record["checkpoint"] == str(latest.resolve()) and record["step"] == 30
    # the fine-tuned run resumes from its own checkpoint and keeps its record
    from translator.run import training_config

    resumed = train(training_config(None, tuned.root, ["training.max_steps=2"], True),
                    resume=True, quiet=True)
    assert resumed.state.step == 2 and json.loads(tuned.init.read_text()) == record


def test_init_from_starts_from_the_base_weights(base: Path, tmp_path: Path) -> None:
    from translator.train.loop import Trainer

    cfg = config_from_dict(_new_config(tmp_path), name="new")
    trainer = Trainer(cfg, quiet=True, init_from=base)
    weights = load_checkpoint(RunLayout(base).best)["model"]
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert trainer.state.step == 0


def test_a_different_vocabulary_or_model_shape_is_one_error_naming_the_keys(
        base: Path, tmp_path: Path) -> None:
    raw = _new_config(tmp_path, model__d_model=64)
    raw["tokenizer"] = {"kind": "bpe"}
    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--init-from",
                                      str(base)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "tokenizer.kind" in line and "model.d_model" in line
    assert "model.dropout" not in line
    assert not (tmp_path / "tuned").exists()  # refused before the run folder is made


def test_init_from_with_resume_is_an_error(base: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(_new_config(tmp_path), name="new")
    with pytest.raises(TranslatorError, match="--init-from.*--resume"):
        train(cfg, resume=True, quiet=True, init_from=base)


@pytest.mark.parametrize("where", ["missing", "not_a_run", "own_folder", "loose_file"])
def test_bad_init_sources_are_refused(base: Path, tmp_path: Path, where: str) -> None:
    raw = _new_config(tmp_path)
    source = {"missing": tmp_path / "nope", "not_a_run": tmp_path,
              "own_folder": base, "loose_file": tmp_path / "loose.pt"}[where]
    if where == "own_folder":
        raw["output"]["dir"] = str(base)
    if where == "loose_file":
        source.write_bytes((RunLayout(base).latest).read_bytes())
    with pytest.raises(TranslatorError, match="--init-from"):
        train(config_from_dict(raw, name="new"), quiet=True, init_from=source)
    assert RunLayout(base).latest.is_file()  # the base run is untouched
