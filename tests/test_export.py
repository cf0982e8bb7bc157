"""Exports to where translation models live: the sentencepiece tokenizer kind through
train -> translate -> resume -> fine-tune; a Hugging Face transformers folder (Pegasus,
Marian) that generates what we generate; an Argos Translate package that argostranslate
installs and translates with; and every refusal, as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from translator.cli import app
from translator.config import Config, TokenizerConfig, config_from_dict
from translator.data.tokenizer import (
    EOS_ID,
    SOS_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    TextTokenizer,
    build_tokenizer,
    build_tokenizers,
    spm_path,
)
from translator.decode.translator import Translator
from translator.errors import TranslatorError
from translator.modeling import build_model
from translator.train.loop import train

spm = pytest.importorskip("sentencepiece")

pytestmark = pytest.mark.usefixtures("single_thread")

CORPUS = [
    "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
    "Two young, White males are outside near many bushes.",
    'A man (in an orange hat) says "hello" -- isn\'t it 12.5% cooler?',
] * 5
SENTENCES = ["The dog sees the cat.", "A small bird eats the bread.", "Where is the house?"]


# ---------------------------------------------------------------- the sentencepiece kind

@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_kind_matches_its_model(model_type: str, tmp_path: Path) -> None:
    tok = build_tokenizer(CORPUS, TokenizerConfig(kind="sentencepiece", model_type=model_type,
                                                   vocab_size=120))
    assert tok.kind == "sentencepiece"
    assert tok.tokens([0, 1, 2, 3]) == SPECIAL_TOKENS
    proc = spm.SentencePieceProcessor(model_proto=tok.spm_model)
    assert [proc.id_to_piece(i) for i in range(4)] == SPECIAL_TOKENS
    for text in [*dict.fromkeys(CORPUS), "Männer  klettern, Frauen lesen.", " Holz.Holz "]:
        ids = tok.encode(text)
        assert ids == proc.encode(text)  # what Argos' SentencePiece model gives
        assert UNK_ID not in ids and tok.decode(ids) == text
    assert UNK_ID in tok.encode("Ein 😀 Mann")
    tok.save(tmp_path / "tok.json")
    loaded = TextTokenizer.load(tmp_path / "tok.json")
    assert spm_path(tmp_path / "tok.json").read_bytes() == tok.spm_model
    assert loaded.kind == "sentencepiece" and loaded.encode(CORPUS[0]) == tok.encode(CORPUS[0])


def test_sentencepiece_normalizes_as_the_other_kinds() -> None:
    decomposed = "Ma\u0308nner"  # ä as a + combining diaeresis
    tok = build_tokenizer(CORPUS, TokenizerConfig(kind="sentencepiece", vocab_size=100))
    assert tok.encode(decomposed) == tok.encode("Männer")
    lower = build_tokenizer(CORPUS, TokenizerConfig(kind="sentencepiece", vocab_size=100,
                                                    lowercase=True))
    assert lower.decode(lower.encode("ZWEI Männer")) == "zwei männer"
    s, t = build_tokenizers(CORPUS[:2], CORPUS[2:4], TokenizerConfig(
        kind="sentencepiece", vocab_size=60, shared=True))
    assert s is t


def _spm_run(run: Path, **model: object) -> Path:
    cfg = config_from_dict({
        "data": {"source": "builtin", "builtin_size": 600, "max_len": 64},
        "tokenizer": {"kind": "sentencepiece", "vocab_size": 400, "shared": True},
        "model": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "dropout": 0.0, **model},
        # Enough steps for words (poor ones): a garbage model outputs runs of spaces.
        "training": {"max_steps": 150, "epochs": 100, "max_tokens": 1000, "lr": 0.01,
                     "warmup_steps": 10, "valid_max_sentences": 5, "examples": 0,
                     "threads": 1},
        "decoding": {"beam_size": 1},
        "output": {"dir": str(run)},
    }, name=run.name)
    train(cfg, quiet=True)
    return run


@pytest.fixture(scope="module")
def spm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short pre-norm run with a shared sentencepiece tokenizer."""
    return _spm_run(tmp_path_factory.mktemp("spm") / "run")


def test_sentencepiece_run_translates_resumes_and_fine_tunes(spm_run: Path,
                                                             tmp_path: Path) -> None:
    model_file = (spm_run / "tokenizer_en.model").read_bytes()
    runner = CliRunner()
    out = runner.invoke(app, ["translate", "--run", str(spm_run), SENTENCES[0]])
    assert out.exit_code == 0 and len(out.stdout.splitlines()) == 1
    # resume: the same tokenizer files, more steps
    copy = tmp_path / "resumed"
    subprocess.run(["cp", "-r", str(spm_run), str(copy)], check=True)
    res = runner.invoke(app, ["train", "--run", str(copy), "--resume", "--quiet",
                              "--set", "training.max_steps=155"])
    assert res.exit_code == 0, res.output
    assert (copy / "tokenizer_en.model").read_bytes() == model_file
    assert torch.load(copy / "checkpoints" / "latest.pt", weights_only=True)["step"] == 155
    # fine-tune: the base run's tokenizer, SentencePiece model included
    tuned = tmp_path / "tuned"
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        data: {{source: builtin, builtin_size: 300, builtin_seed: 9, max_len: 64}}
        tokenizer: {{kind: sentencepiece, vocab_size: 400, shared: true}}
        model: {{d_model: 32, layers: 1, heads: 2, d_ff: 64, dropout: 0.0}}
        training: {{max_steps: 5, max_tokens: 800, warmup_steps: 2, examples: 0,
                   valid_max_sentences: 5, threads: 1}}
        output: {{dir: {tuned}}}
        """))
    ft = runner.invoke(app, ["train", "-c", str(cfg), "--init-from", str(spm_run), "--quiet"])
    assert ft.exit_code == 0, ft.output
    for lang in ("en", "de"):
        assert (tuned / f"tokenizer_{lang}.model").read_bytes() == model_file
    assert TextTokenizer.load(tuned / "tokenizer_de.json").kind == "sentencepiece"


# ---------------------------------------------------------------- Hugging Face

def _in_memory(norm: str, kind: str = "sentencepiece", shared: bool = True,
               tie: bool = True) -> Translator:
    """A Translator of random weights (no training needed to compare two implementations of
    the same function)."""
    torch.manual_seed(0)
    cfg = Config()
    cfg.data.max_len = 40
    cfg.tokenizer = TokenizerConfig(kind=kind, vocab_size=150, shared=shared)
    cfg.model.d_model, cfg.model.layers, cfg.model.heads, cfg.model.d_ff = 32, 2, 4, 64
    cfg.model.norm, cfg.model.tie_embeddings, cfg.decoding.beam_size = norm, tie, 1
    src, tgt = build_tokenizers(CORPUS[:10], CORPUS[10:], cfg.tokenizer)
    model = build_model(cfg, src.vocab_size, tgt.vocab_size)
    with torch.no_grad():  # a nonzero output bias, so final_logits_bias is checked too
        model.projection.proj.bias.normal_()
    return Translator(cfg, src, tgt, model, torch.device("cpu"))


def _hf_generate(folder: Path, sentences: list[str], translator: Translator) -> list[list[int]]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(sentences, return_tensors="pt", padding=True)
    assert enc.input_ids[0].tolist() == [SOS_ID, *translator.encode(sentences[:1])[0], EOS_ID]
    with torch.no_grad():
        out = model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=12)
    rows = []
    for row in out.tolist():
        ids = row[1:]  # after the decoder start token
        rows.append(ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids)
    return rows


@pytest.mark.parametrize(("norm", "tie", "cls"), [("pre", True, "PegasusForConditionalGeneration"),
                                                  ("post", False, "MarianMTModel")])
def test_huggingface_export_generates_what_we_generate(norm: str, tie: bool, cls: str,
                                                       tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from translator.export.huggingface import save_huggingface

    translator = _in_memory(norm, tie=tie)
    folder = save_huggingface(translator, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [cls]
    texts = ["Zwei junge Männer sind im Freien.", "Ein Mädchen klettert."]
    ours = [h[0][0] for h in translator.search(
        translator.encode(texts), translator.decoding(beam_size=1, max_len_a=0, max_len_b=12),
        None, 8)]
    ours = [ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids for ids in map(list, ours)]
    theirs = _hf_generate(folder, texts, translator)
    assert theirs == ours
    # The same function, not just the same argmax: teacher-forced logits agree.
    from transformers import AutoModelForSeq2SeqLM

    hf = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    src = torch.tensor([[SOS_ID, *translator.encode(texts[:1])[0], EOS_ID]])
    tgt = torch.tensor([[SOS_ID, *range(10, 20)]])
    with torch.no_grad():
        mine = translator.model.project(translator.model.decode(
            translator.model.encode(src, None), None, tgt))
        assert torch.allclose(hf(input_ids=src, decoder_input_ids=tgt).logits, mine,
                              atol=1e-4)
        # A stock model: the position table is transformers' own [sin | cos] layout.
        positions = hf.model.encoder.embed_positions
        assert torch.allclose(positions.weight, positions.create_weight(), atol=1e-4)
    assert "push_to_hub" in (folder / "README.md").read_text()


def test_huggingface_cli_round_trip_of_a_trained_run(spm_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "hf"
    res = CliRunner().invoke(app, ["export", "--run", str(spm_run), "--to", "huggingface",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    translator = Translator.from_run(spm_run, device="cpu")
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(SENTENCES, return_tensors="pt", padding=True)
    # Only what the model takes: transformers 4 refuses `generate(**tok(...))` with
    # token_type_ids (the folder must load there too).
    assert set(enc) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        gen = model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=30)
    assert tok.batch_decode(gen, skip_special_tokens=True) == translator.translate(
        SENTENCES, beam_size=1, max_len_a=0, max_len_b=30)


@pytest.mark.parametrize(("norm", "kind", "shared", "needle"), [
    ("pre", "word", True, "tokenizer.kind: sentencepiece"),
    ("pre", "sentencepiece", False, "tokenizer.shared: true (exports as Pegasus) or "
                                    "model.norm: post"),
    ("post", "bpe", False, "tokenizer.shared: true"),
])
def test_huggingface_refusals(norm: str, kind: str, shared: bool, needle: str,
                              tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from translator.export.huggingface import save_huggingface

    with pytest.raises(TranslatorError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        save_huggingface(_in_memory(norm, kind, shared), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------- Argos Translate

ARGOS_SCRIPT = """
import json, sys
import argostranslate.package as package
import argostranslate.sbd as sbd
import argostranslate.translate as translate

package.install_from_path(sys.argv[1])
(pkg,) = package.get_installed_packages()
langs = {lang.code: lang for lang in translate.get_installed_languages()}
translation = langs[pkg.from_code].get_translation(langs[pkg.to_code])


class OneSentence(sbd.ISentenceBoundaryDetectionModel):
    # Argos' sentence splitters download a model on first use (no network here); each test
    # line is one sentence anyway.
    def split_sentences(self, text):
        return [text]


translation.underlying.sentencizer = OneSentence()
print(json.dumps([translation.translate(line) for line in json.loads(sys.argv[2])]))
"""


def argos_translate(package: Path, sentences: list[str], home: Path,
                    beam_size: int = 1) -> list[str]:
    """Install `package` into a fresh Argos home under `home` and translate `sentences` with
    argostranslate, in a child process (argostranslate reads its settings at import)."""
    env = {**os.environ, "ARGOS_PACKAGES_DIR": str(home / "packages"),
           "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache"), "ARGOS_BEAM_SIZE": str(beam_size),
           "ARGOS_INTRA_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", ARGOS_SCRIPT, str(package),
                          json.dumps(sentences)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_argos_package_installs_and_translates_as_we_do(spm_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("argostranslate")
    pytest.importorskip("ctranslate2")
    from translator.decode.ct2 import CT2Translator

    pkg = tmp_path / "en_de.argosmodel"
    res = CliRunner().invoke(app, ["export", "--run", str(spm_run), "--to", "argos",
                                   "-o", str(pkg)])
    assert res.exit_code == 0, res.output
    with zipfile.ZipFile(pkg) as zf:
        names = set(zf.namelist())
        meta = json.loads(zf.read("translate-en_de-1_0/metadata.json"))
    assert {"translate-en_de-1_0/sentencepiece.model", "translate-en_de-1_0/README.md",
            "translate-en_de-1_0/model/model.bin"} <= names
    assert (meta["from_code"], meta["to_code"], meta["to_name"]) == ("en", "de", "German")
    # Two that end before any length cap (Argos caps at CTranslate2's 256 tokens).
    texts = SENTENCES[:2]
    ours = CT2Translator.from_run(spm_run, "int8").translate(
        texts, beam_size=1, max_len_a=0, max_len_b=200)
    assert argos_translate(pkg, texts, tmp_path / "argos") == ours


def test_argos_refusals(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    from translator.export.argos import save_argos

    with pytest.raises(TranslatorError, match="train with tokenizer.kind: sentencepiece"):
        save_argos(_in_memory("pre", "bpe"), tmp_path / "a.argosmodel")
    with pytest.raises(TranslatorError, match="tokenizer.shared: true"):
        save_argos(_in_memory("pre", "sentencepiece", shared=False), tmp_path / "b.argosmodel")
    assert not list(tmp_path.iterdir())


def test_export_cli_refusals_are_one_line(spm_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["export", "--run", str(spm_run), "--to", "onnx", "-o",
                              str(tmp_path / "x")])
    assert bad.exit_code != 0 and "use ctranslate2, huggingface, argos" in bad.output
    suffix = runner.invoke(app, ["export", "--run", str(spm_run), "--to", "argos", "-o",
                                 str(tmp_path / "x.zip")])
    assert suffix.exit_code != 0 and len(suffix.output.strip().splitlines()) == 1
    assert "Traceback" not in suffix.output


@pytest.mark.parametrize("module", ["transformers", "ctranslate2"])
def test_a_missing_extra_is_a_one_line_hint(module: str, tmp_path: Path) -> None:
    from translator.export.huggingface import INSTALL_HINT

    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # as if not installed
        from typer.testing import CliRunner
        from translator.cli import app
        to = "huggingface" if {module!r} == "transformers" else "argos"
        out = "{tmp_path}/x" + (".argosmodel" if to == "argos" else "")
        res = CliRunner().invoke(app, ["export", "--run", sys.argv[1], "--to", to, "-o", out])
        print(res.exit_code, res.output.strip())
        """)
    run = tmp_path / "no-run"
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    hint = INSTALL_HINT if module == "transformers" else "translator[ct2]"
    assert hint in out.stdout, out.stdout + out.stderr
