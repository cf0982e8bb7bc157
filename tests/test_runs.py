"""The run folder is the handle: a moved or copied run translates without its corpus, resumes
from its own folder (never writing outside it), and `translator info` describes it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from translator.checkpoint import load_checkpoint
from translator.cli import app
from translator.config import DataConfig, config_from_dict, load_config
from translator.data.corpus import load_splits
from translator.decode.translator import Translator
from translator.model.transformer import count_parameters
from translator.run import RunLayout
from translator.train.loop import train

pytestmark = pytest.mark.usefixtures("single_thread")


def _write_tsv_corpus(folder: Path) -> None:
    """The built-in corpus's first pairs as train/valid/test TSV files."""
    splits = load_splits(DataConfig(builtin_size=500))
    folder.mkdir(parents=True)
    for name in ("train", "valid", "test"):
        pairs = splits[name][:400 if name == "train" else 20]
        (folder / f"{name}.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs),
                                            encoding="utf-8")


def _raw(data_dir: Path, run_dir: Path, epochs: int = 1) -> dict[str, Any]:
    return {
        "data": {"source": "tsv", "dir": str(data_dir), "train": "train.tsv",
                 "valid": "valid.tsv", "test": "test.tsv", "max_len": 40},
        "model": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "dropout": 0.0},
        "training": {"epochs": epochs, "max_tokens": 800, "lr": 0.003, "warmup_steps": 5,
                     "log_every": 5, "valid_max_sentences": 5, "examples": 0, "threads": 1},
        "decoding": {"beam_size": 2},
        "output": {"dir": str(run_dir)},
    }


@pytest.fixture(scope="module")
def tsv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained on a TSV corpus that lives in its own temp folder."""
    root = tmp_path_factory.mktemp("runs")
    _write_tsv_corpus(root / "data")
    run = root / "run"
    train(config_from_dict(_raw(root / "data", run), name="run"), quiet=True)
    return run


def _cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.stdout, res.stderr


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and mtime: what must not change."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                         p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_saved_config_names_no_path_inside_the_run(tsv_run: Path) -> None:
    text = (tsv_run / "config.yaml").read_text(encoding="utf-8")
    assert str(tsv_run) not in text
    assert yaml.safe_load(text)["output"]["dir"] is None
    assert load_checkpoint(RunLayout(tsv_run).latest)["config"]["output"]["dir"] is None


def test_moved_run_without_its_corpus_translates_from_anywhere(
        tsv_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run of its own (a few seconds), as the module's run is shared with other tests.
    data = tmp_path / "data"
    _write_tsv_corpus(data)
    first = tmp_path / "first"
    train(config_from_dict(_raw(data, first), name="first"), quiet=True)
    shutil.rmtree(data)  # the corpus is gone...
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)  # ...and the run folder is somewhere new
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # and the user is in yet another folder
    sentence = load_splits(DataConfig(builtin_size=500))["test"][0][0]

    code, out, err = _cli("translate", "--run", str(moved), sentence)
    assert code == 0, err
    assert out.strip()
    src, ref = work / "src.txt", work / "ref.txt"
    src.write_text(sentence + "\n", encoding="utf-8")
    ref.write_text("irgendwas\n", encoding="utf-8")
    code, out, err = _cli("evaluate", "--run", str(moved), "--src", str(src), "--ref",
                          str(ref), "--json")
    assert code == 0, err
    assert json.loads(out)["sentences"] == 1
    code, _, err = _cli("attention", sentence, "--run", str(moved), "--out", str(work / "att"))
    assert code == 0, err
    assert list((work / "att").glob("*.png"))
    code, _, err = _cli("average", "--run", str(moved), "--last", "1")
    assert code == 0, err
    code, out, err = _cli("info", str(moved))
    assert code == 0, err
    assert "not found here" in out and "en -> de" in out
    # --checkpoint alone names its run folder.
    code, out, err = _cli("translate", "--checkpoint",
                          str(moved / "checkpoints" / "latest.pt"), sentence)
    assert code == 0, err
    assert out.strip()

    # Reading data is what needs the corpus, and --set with --run says where it is now.
    code, out, err = _cli("evaluate", "--run", str(moved), "--split", "test")
    assert code == 2 and "data.dir: folder not found" in err, err
    _write_tsv_corpus(tmp_path / "data_again")
    code, out, err = _cli("evaluate", "--run", str(moved), "--split", "test", "--json",
                          "--set", f"data.dir={tmp_path / 'data_again'}")
    assert code == 0, err
    assert json.loads(out)["sentences"] == 20


def test_set_with_run_is_applied_or_refused_never_ignored(tsv_run: Path) -> None:
    code, _, err = _cli("translate", "--run", str(tsv_run), "--set", "model.d_model=64", "x")
    assert code == 2 and "model.d_model" in err and "Traceback" not in err
    sentence = load_splits(DataConfig(builtin_size=500))["test"][0][0]
    code, out, err = _cli("translate", "--run", str(tsv_run), "--n-best", "3",
                          "--set", "decoding.beam_size=3", sentence)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 3  # the beam was 3, from --set


def test_resume_of_a_copy_changes_only_the_copy(tsv_run: Path, tmp_path: Path) -> None:
    original = tmp_path / "original"
    shutil.copytree(tsv_run, original)  # a private original: other tests share tsv_run
    before = _snapshot(original)
    steps = load_checkpoint(RunLayout(original).latest)["step"]
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    code, _, err = _cli("train", "--run", str(copy), "--resume", "--quiet",
                        "--set", "training.epochs=2")
    assert code == 0, err
    after_first = load_checkpoint(RunLayout(copy).latest)["step"]
    assert after_first > steps
    # The copy's own config.yaml, given as --config, also means the copy.
    code, _, err = _cli("train", "--config", str(copy / "config.yaml"), "--resume",
                        "--quiet", "--set", "training.epochs=3")
    assert code == 0, err
    assert load_checkpoint(RunLayout(copy).latest)["step"] > after_first
    assert _snapshot(original) == before
    assert load_config(copy / "config.yaml").training.epochs == 3


def test_resume_by_folder_refuses_unsafe_changes_naming_them(tsv_run: Path) -> None:
    before = _snapshot(tsv_run)
    code, out, err = _cli("train", "--run", str(tsv_run), "--resume", "--set",
                          "training.lr=0.1", "--set", "model.d_model=64")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "training.lr" in err and "model.d_model" in err
    code, _, err = _cli("train", "--run", str(tsv_run))
    assert code == 2 and "--resume" in err
    code, _, err = _cli("train", "--run", str(tsv_run), "--resume", "--set",
                        "output.dir=/tmp/elsewhere")
    assert code == 2 and "output" in err
    assert _snapshot(tsv_run) == before


def test_config_resume_names_the_keys_that_differ(tsv_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tsv_run, run)
    raw = _raw(tsv_run.parent / "data", run)
    raw["model"]["d_ff"] = 128
    raw["tokenizer"] = {"min_frequency": 3}
    config = tmp_path / "changed.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code, _, err = _cli("train", "--config", str(config), "--resume", "--quiet")
    assert code == 2
    assert "model.d_ff" in err and "tokenizer.min_frequency" in err, err


def test_missing_data_fails_training_before_a_run_folder_exists(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "no-such-data", tmp_path / "run")
    cfg = config_from_dict(raw)  # a config is values: reading it checks no folder
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code, _, err = _cli("train", "--config", str(config), "--quiet")
    assert code == 2 and "data.dir: folder not found" in err
    assert not Path(cfg.run_dir).exists()


def test_info_reports_what_a_user_asks_of_a_run(tsv_run: Path) -> None:
    code, out, err = _cli("info", str(tsv_run), "--json")
    assert code == 0, err
    info = json.loads(out)
    latest = load_checkpoint(RunLayout(tsv_run).latest)
    assert info["languages"] == {"src": "en", "tgt": "de"}
    assert info["trained"]["steps"] == latest["step"]
    assert info["model"]["d_model"] == 32
    model = Translator.from_run(tsv_run, device="cpu").model
    assert info["model"]["parameters"] == count_parameters(model)
    assert info["tokenizers"]["src"]["vocab_size"] > 10
    assert info["best"]["checkpoint"].startswith("best.pt = epoch")
    assert "config.yaml" in {f["path"] for f in info["files"]}
    code, out, _ = _cli("info", str(tsv_run))
    assert "languages    en -> de" in out and "best.pt" in out
    code, _, err = _cli("info", str(tsv_run / "nope"))
    assert code == 2 and "run folder not found" in err


@pytest.mark.parametrize("route", ["run", "config"])
def test_both_resume_routes_apply_one_rule(route: str, tsv_run: Path, tmp_path: Path) -> None:
    """`--run DIR --resume` and `--config FILE --resume` refuse and allow the same keys
    (issue 30.7): a seed or lr change is refused by both, data.num_proc allowed by both."""
    run = tmp_path / "run"
    shutil.copytree(tsv_run, run)
    where = (["--run", str(run)] if route == "run"
             else ["--config", str(run / "config.yaml")])
    for key in ("training.lr=0.1", "training.seed=7", "training.max_tokens=900"):
        code, out, err = _cli("train", *where, "--resume", "--quiet", "--set", key)
        assert code == 2 and out == "", err
        assert len(err.strip().splitlines()) == 1 and key.split("=")[0] in err, err
    steps = load_checkpoint(RunLayout(run).latest)["step"]
    code, _, err = _cli("train", *where, "--resume", "--quiet", "--set", "data.num_proc=1",
                        "--set", "training.epochs=2")
    assert code == 0, err
    assert load_checkpoint(RunLayout(run).latest)["step"] > steps


def test_moved_corpus_resumes_when_its_files_hold_the_same_data(tsv_run: Path,
                                                                 tmp_path: Path) -> None:
    """The README's promise: a moved run resumes with `--set data.dir=...` when the files
    there give the same split record (sizes and content hashes); the run then reads them."""
    run = tmp_path / "run"
    shutil.copytree(tsv_run, run)
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(tsv_run.parent / "data", moved)
    steps = load_checkpoint(RunLayout(run).latest)["step"]
    code, _, err = _cli("train", "--run", str(run), "--resume", "--quiet",
                        "--set", f"data.dir={moved}", "--set", "training.epochs=2")
    assert code == 0, err
    assert load_checkpoint(RunLayout(run).latest)["step"] > steps
    assert load_config(run / "config.yaml").data.dir == str(moved)


def test_moved_corpus_with_other_content_is_refused(tsv_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tsv_run, run)
    moved = tmp_path / "other"
    shutil.copytree(tsv_run.parent / "data", moved)
    lines = (moved / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = "A different sentence .\tEin anderer Satz .\n"  # same size, other content
    (moved / "train.tsv").write_text("".join(lines), encoding="utf-8")
    before = _snapshot(run)
    code, out, err = _cli("train", "--run", str(run), "--resume", "--quiet",
                          "--set", f"data.dir={moved}", "--set", "training.epochs=2")
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and "train split's pairs differ" in err, err
    after = _snapshot(run)
    for snapshot in (before, after):
        snapshot.pop(".lock", None)  # the trainer's lock file (its PID) is rewritten
    assert after == before  # config.yaml still names the original data.dir
