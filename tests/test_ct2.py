"""CTranslate2 export: the exported model decodes as ours does (token for token in float32),
and the CLI's export / --engine / --model paths and their errors."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("ctranslate2")

from translator.cli import app  # noqa: E402
from translator.config import config_from_dict  # noqa: E402
from translator.decode.ct2 import CT2Translator, cached_export, export_ctranslate2  # noqa: E402
from translator.decode.translator import Translator  # noqa: E402
from translator.evaluate import load_split  # noqa: E402
from translator.train.loop import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _train(run_dir: Path, norm: str, shared: bool, size: int = 1200, d_model: int = 32,
           epochs: int = 3) -> Path:
    cfg = config_from_dict({
        "data": {"source": "builtin", "builtin_size": size, "max_len": 40},
        "tokenizer": {"min_frequency": 1, "shared": shared},
        "model": {"d_model": d_model, "layers": 2, "heads": 4, "d_ff": 2 * d_model,
                  "dropout": 0.0, "norm": norm},
        # Post-norm wants a gentler start than pre-norm to learn anything in a few epochs.
        "training": {"epochs": epochs, "max_tokens": 1500,
                     "lr": 0.003 if norm == "pre" else 0.001,
                     "warmup_steps": 30 if norm == "pre" else 10,
                     "log_every": 10, "valid_max_sentences": 20, "examples": 0,
                     "threads": 1},
        "output": {"dir": str(run_dir)},
    }, name=run_dir.name)
    train(cfg, quiet=True)
    return run_dir


@pytest.fixture(scope="module")
def pre_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pre-norm, a vocabulary per language; trained enough (about a minute, test BLEU ~22)
    that int8 against float32 BLEU means something. (At d_model 64 int8 lost 1.1 BLEU: tiny
    weight matrices quantize worse; the Multi30k model loses 0.2.)"""
    return _train(tmp_path_factory.mktemp("ct2") / "pre", "pre", False, size=6000,
                  d_model=128, epochs=4)


@pytest.fixture(scope="module")
def post_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Post-norm, one shared vocabulary (tied source and target embeddings)."""
    return _train(tmp_path_factory.mktemp("ct2") / "post", "post", True, epochs=5)


def _test_sources(run: Path) -> tuple[Translator, list[str], list[str]]:
    native = Translator.from_run(run, device="cpu")
    pairs = load_split(native.cfg.data, "test")
    return native, [s for s, _ in pairs], [t for _, t in pairs]


@pytest.mark.parametrize("which", ["pre_run", "post_run"])
def test_float32_export_decodes_token_for_token_as_ours(
        which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run = request.getfixturevalue(which)
    native, src, _ = _test_sources(run)
    ct2 = CT2Translator.from_dir(export_ctranslate2(run, tmp_path / "f32", "float32"),
                                 threads=1)
    ids = native.encode(src)
    for beam in (1, 4):
        dec = native.decoding(beam_size=beam, length_penalty=0.0)
        ours = [h[0][0] for h in native.search(ids, dec, None, 32)]
        theirs = [h[0][0] for h in ct2.search(ids, dec, None, 32)]
        same = sum(a == b for a, b in zip(ours, theirs, strict=True))
        assert same == len(src), f"beam {beam}: {same}/{len(src)} identical"
    # Something was actually decoded: the run learned to translate most of its test split.
    hyps = ct2.translate(src, 32, beam_size=1)
    assert sum(bool(h) for h in hyps) == len(src)


def test_export_folder_holds_tokenizers_and_metadata(pre_run: Path, tmp_path: Path) -> None:
    out = export_ctranslate2(pre_run, tmp_path / "m", "int8")
    meta = json.loads((out / "translator.json").read_text())
    assert meta["src_lang"] == "en" and meta["tgt_lang"] == "de"
    assert meta["special_tokens"]["eos"] == "[EOS]" and meta["quantization"] == "int8"
    assert (out / "model.bin").is_file()
    assert (out / "tokenizer_en.json").is_file() and (out / "tokenizer_de.json").is_file()
    # The folder alone translates, wherever it is.
    moved = out.rename(tmp_path / "elsewhere")
    native, src, _ = _test_sources(pre_run)
    fresh = export_ctranslate2(pre_run, tmp_path / "again", "int8")
    assert (CT2Translator.from_dir(moved).translate(src[:20], beam_size=1)
            == CT2Translator.from_dir(fresh).translate(src[:20], beam_size=1))


def test_cached_export_is_reused_until_the_checkpoint_changes(pre_run: Path) -> None:
    first = cached_export(pre_run, "int8")
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert cached_export(pre_run, "int8") == first
    assert (first / "model.bin").stat().st_mtime_ns == stamp
    ckpt = Translator.from_run(pre_run, device="cpu").checkpoint
    ckpt.touch()
    cached_export(pre_run, "int8")
    assert (first / "model.bin").stat().st_mtime_ns != stamp


def _invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_cli_export_translate_and_evaluate(pre_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-export"
    code, _, err = _invoke("export", "--run", str(pre_run), "--out", str(out), "-q", "float32")
    assert code == 0, err
    native = _invoke("translate", "--run", str(pre_run), "--beam", "1",
                     input="The dog sees the cat.\n\nA man reads.\n")
    ct2 = _invoke("translate", "--model", str(out), "--beam", "1",
                  input="The dog sees the cat.\n\nA man reads.\n")
    assert native[0] == 0 and ct2[0] == 0, ct2[2]
    assert ct2[1] == native[1] and ct2[1].count("\n") == 3
    code, stdout, err = _invoke("translate", "--run", str(pre_run), "--engine", "ctranslate2",
                                "--n-best", "2", "--beam", "2", "The dog sees the cat.")
    assert code == 0, err
    assert [line.split("\t")[0] for line in stdout.splitlines()] == ["1", "1"]
    code, stdout, err = _invoke("evaluate", "--run", str(pre_run), "--engine", "ctranslate2",
                                "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["engine"] == "ctranslate2" and report["sentences"] > 0 and "bleu" in report


def test_cli_errors_are_one_line(pre_run: Path, tmp_path: Path) -> None:
    code, _, err = _invoke("export", "--run", str(pre_run), "--out", str(tmp_path / "x"),
                           "-q", "int4")
    assert code == 2 and err.startswith("error: unknown quantization 'int4'")
    code, _, err = _invoke("translate", "--model", str(tmp_path), "hello")
    assert code == 2 and "not a translator CTranslate2 export" in err
    code, _, err = _invoke("translate", "--run", str(pre_run), "--engine", "onnx", "hello")
    assert code == 2 and "unknown engine 'onnx'" in err
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _invoke("export", "--run", str(pre_run), "--out", str(out))
    assert code == 2 and "--force" in err and (out / "keep.txt").is_file()


def test_export_without_ctranslate2_says_how_to_install(
        pre_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ct2(name: str, *args: object, **kwargs: object) -> object:
        if name == "ctranslate2" or name.startswith("ctranslate2."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ct2)
    code, _, err = _invoke("export", "--run", str(pre_run), "--out", str(tmp_path / "y"))
    assert code == 2 and "pip install" in err and len(err.strip().splitlines()) == 1


def test_int8_bleu_is_within_one_point_of_float32(pre_run: Path, tmp_path: Path) -> None:
    import sacrebleu

    native, src, ref = _test_sources(pre_run)
    scores = {}
    for q in ("float32", "int8"):
        ct2 = CT2Translator.from_dir(export_ctranslate2(pre_run, tmp_path / q, q), threads=1)
        scores[q] = sacrebleu.corpus_bleu(ct2.translate(src, 32, beam_size=1), [ref]).score
    # A model that translates (about 21 BLEU), so the gap says something about int8.
    assert scores["float32"] > 12, scores
    assert abs(scores["int8"] - scores["float32"]) <= 1.0, scores
