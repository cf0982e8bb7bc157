"""End to end on the built-in corpus with a tiny config: train -> checkpoint -> translate,
evaluate, resume, and the CLI's error handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from translator.checkpoint import load_checkpoint
from translator.cli import app
from translator.config import Config, config_from_dict
from translator.decode.translator import Translator
from translator.run import RunLayout
from translator.train.loop import train

TINY = {
    "data": {"source": "builtin", "builtin_size": 400, "max_len": 40},
    "tokenizer": {"min_frequency": 1},
    "model": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "dropout": 0.0},
    "training": {"epochs": 2, "max_tokens": 800, "lr": 0.003, "warmup_steps": 5,
                 "log_every": 1, "valid_max_sentences": 20, "examples": 1, "threads": 1},
}


def tiny_config(run_dir: Path, **training: object) -> Config:
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["training"].update(training)
    raw["output"] = {"dir": str(run_dir)}
    return config_from_dict(raw, name="tiny")


def test_run_folder_holds_everything(trained_run: Path) -> None:
    """The session's tiny run (conftest: one epoch, validated at its end)."""
    layout = RunLayout(trained_run)
    assert layout.config.is_file()
    assert layout.tokenizer("en").is_file() and layout.tokenizer("de").is_file()
    assert layout.latest.is_file() and layout.best.is_file()
    ckpt = load_checkpoint(layout.latest)
    assert ckpt["epoch"] == 1 and ckpt["step"] > 0
    for key in ("model", "optimizer", "scheduler", "config", "rng", "vocab"):
        assert key in ckpt
    events = list(layout.tensorboard.glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(layout.tensorboard))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "valid/loss", "valid/bleu"} <= set(tags)
    assert len(acc.Scalars("train/loss")) == ckpt["step"]


def test_translate_library_and_cli(trained_run: Path) -> None:
    translator = Translator.from_run(trained_run, device="cpu")
    out = translator.translate(["The dog sees the cat.", "   ", "🙂 \u202e zzz qqq"])
    assert out[1] == ""
    assert isinstance(out[0], str) and isinstance(out[2], str)

    runner = CliRunner()
    res = runner.invoke(app, ["translate", "The dog sees the cat.", "--run", str(trained_run)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == out[0]

    res = runner.invoke(app, ["translate", "--run", str(trained_run)],
                        input="The dog sees the cat.\n\nA man sleeps.\n")
    assert res.exit_code == 0, res.output
    assert res.stdout.split("\n")[:2] == [out[0], ""]


def test_evaluate_cli_json(trained_run: Path, tmp_path: Path) -> None:
    trained_run = shutil.copytree(trained_run, tmp_path / "run")  # evaluate writes eval/
    res = CliRunner().invoke(app, ["evaluate", "--run", str(trained_run), "--split", "test",
                                   "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"bleu", "chrf", "sentences"} <= set(report)
    assert report["sentences"] == 40
    assert (trained_run / "eval" / "test.beam2.lp1.json").is_file()  # the run's defaults


def test_bf16_translation_matches_fp32(trained_run: Path, tmp_path: Path) -> None:
    """`--dtype bf16` casts the weights, says so in the report, and translates about as well."""
    trained_run = shutil.copytree(trained_run, tmp_path / "run")  # evaluate writes eval/
    runner = CliRunner()
    reports = {}
    for dtype in ("fp32", "bf16"):
        res = runner.invoke(app, ["evaluate", "--run", str(trained_run), "--split", "test",
                                  "--json", "--beam", "1", "--dtype", dtype])
        assert res.exit_code == 0, res.output
        reports[dtype] = json.loads(res.stdout.strip().splitlines()[-1])
        assert reports[dtype]["dtype"] == dtype
    assert abs(reports["bf16"]["bleu"] - reports["fp32"]["bleu"]) < 5.0
    translator = Translator.from_run(trained_run, device="cpu", dtype="bf16")
    assert next(translator.model.parameters()).dtype == torch.bfloat16
    res = runner.invoke(app, ["translate", "x", "--run", str(trained_run), "--dtype", "int4"])
    assert res.exit_code == 2 and "decoding.dtype" in res.output


def test_resume_continues_from_saved_step(tmp_path: Path) -> None:
    """N steps, stop, resume to 2N gives the same parameters as 2N steps in one go."""
    straight = train(tiny_config(tmp_path / "a", max_steps=12, epochs=5), quiet=True)
    assert straight.state.step == 12
    first = train(tiny_config(tmp_path / "b", max_steps=6, epochs=5), quiet=True)
    assert first.state.step == 6
    resumed = train(tiny_config(tmp_path / "b", max_steps=12, epochs=5), resume=True,
                    quiet=True)
    assert resumed.state.step == 12
    a = load_checkpoint(RunLayout(tmp_path / "a").latest)["model"]
    b = load_checkpoint(RunLayout(tmp_path / "b").latest)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_existing_run_is_not_overwritten(trained_run: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--config", str(trained_run / "config.yaml"),
                                   "--set", f"output.dir={trained_run}"])
    assert res.exit_code == 2
    assert "already holds a run" in res.output
    assert "Traceback" not in res.output


def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  d_modle: 64\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.d_modle" in lines[0] and "d_model" in lines[0]


def test_cli_bad_override_names_key(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--config", "configs/toy.yaml",
                                   "--set", "model.layers=three"])
    assert res.exit_code == 2
    assert "model.layers" in res.output


def test_cli_translate_errors(trained_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["translate", "   ", "--run", str(trained_run)])
    assert res.exit_code == 2 and "empty" in res.output
    res = runner.invoke(app, ["translate", "Hello.", "--run", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not found" in res.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    res = runner.invoke(app, ["translate", "Hello.", "--run", str(trained_run),
                              "--checkpoint", str(bad)])
    assert res.exit_code == 2 and "bad.pt" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["translate", "--run", str(trained_run)], input=b"caf\xe9\n")
    assert res.exit_code == 2 and "UTF-8" in res.output


def test_hub_config_loads_through_local_stand_in(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """configs/opus_books_en_it.yaml trains through the hub loading path, with
    `datasets.load_dataset` answered by a local dataset of the same structure."""
    import datasets

    from translator.config import load_config

    rows = [{"en": f"The book number {i} is red.", "it": f"Il libro numero {i} è rosso."}
            for i in range(60)]
    calls = []

    def fake_load_dataset(name: str, subset: str | None = None, split: str | None = None,
                          trust_remote_code: bool | None = None):
        assert trust_remote_code is False  # a hub dataset's loading script never runs
        calls.append((name, subset, split))
        return datasets.Dataset.from_dict({"id": [str(i) for i in range(60)],
                                           "translation": rows})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = load_config("configs/opus_books_en_it.yaml", [
        "model.d_model=32", "model.layers=1", "model.heads=2", "model.d_ff=64",
        "training.max_steps=2", "training.threads=1", f"output.dir={tmp_path / 'opus'}"])
    result = train(cfg, quiet=True)
    assert calls[0] == ("Helsinki-NLP/opus_books", "en-it", "train")
    assert result.state.step == 2
    translator = Translator.from_run(tmp_path / "opus", device="cpu")
    assert translator.src_tok.encode("book") != [0]


def test_wmt14_base_recipe_loads_through_local_stand_in(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """configs/wmt14_en_de_base.yaml reads the hub's wmt14 de-en train/validation/test splits
    (answered here by a local dataset of the same structure) and is the paper's base model."""
    import datasets

    from translator.config import load_config

    calls = []

    def fake_load_dataset(name: str, subset: str | None = None, split: str | None = None,
                          trust_remote_code: bool | None = None):
        assert trust_remote_code is False  # a hub dataset's loading script never runs
        calls.append((name, subset, split))
        rows = [{"de": f"Das Haus {i} ist rot.", "en": f"The house {i} is red."}
                for i in range(40 if split == "train" else 8)]
        return datasets.Dataset.from_dict({"translation": rows})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = load_config("configs/wmt14_en_de_base.yaml")
    m, t = cfg.model, cfg.training
    assert (m.d_model, m.layers, m.heads, m.d_ff, m.tie_embeddings) == (512, 6, 8, 2048, True)
    assert (cfg.tokenizer.kind, cfg.tokenizer.shared, t.warmup_steps) == ("bpe", True, 4000)
    assert 20_000 <= t.max_tokens * t.accum_steps <= 30_000  # ~25k target tokens per step
    cfg = load_config("configs/wmt14_en_de_base.yaml", [
        "model.d_model=32", "model.layers=1", "model.heads=2", "model.d_ff=64",
        "tokenizer.vocab_size=200", "training.max_steps=2", "training.threads=1",
        "training.max_tokens=400", f"output.dir={tmp_path / 'wmt'}"])
    result = train(cfg, quiet=True)
    assert {c[2] for c in calls} == {"train", "validation", "test"}
    assert all(c[:2] == ("wmt14", "de-en") for c in calls)
    assert result.state.step == 2
    translator = Translator.from_run(tmp_path / "wmt", device="cpu")
    assert translator.translate(["The house 3 is red."], beam_size=1)[0]
