"""The papers' metric beside sacreBLEU: tokenized lowercased BLEU, and the length ratio."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sacrebleu

from translator.evaluate import bleu_tok_lc, moses_tok_lc, score

pytest.importorskip("sacremoses")

MULTI30K = Path(os.environ.get("MULTI30K_DIR", Path(__file__).resolve().parents[2] / "shared"
                               / "data" / "multi30k-en-de"))


def test_tok_lc_bleu_ignores_case_and_tokenization_that_sacrebleu_counts() -> None:
    hyps = ["Ein Hund, der läuft.", "Zwei Männer spielen \"Fußball\"."]
    refs = ["ein hund, der läuft.", "zwei männer spielen \"fußball\"."]
    report = score(hyps, refs, lang="de")
    assert report["bleu_tok_lc"] == 100.0
    assert report["bleu"] < 60  # sacreBLEU is cased


def test_length_ratio_is_hypothesis_over_reference_length() -> None:
    report = score(["a b"], ["a b c d"])
    assert report["length_ratio"] == 0.5
    assert "bleu_tok_lc" not in report  # only with the target language


def test_without_sacremoses_the_metric_is_absent_not_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_sacremoses(name: str, *args: object, **kwargs: object) -> object:
        if name == "sacremoses":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sacremoses)
    assert bleu_tok_lc(["a"], ["a"], "de") is None


@pytest.mark.skipif(not (MULTI30K / "tok").is_dir(), reason="Multi30k not beside the repo")
def test_our_tokenization_reproduces_multi30ks_official_tokenized_references() -> None:
    raw = (MULTI30K / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    official = (MULTI30K / "tok" / "test_2016_flickr.lc.norm.tok.de").read_text(
        encoding="utf-8").splitlines()
    assert moses_tok_lc(raw, "de") == official
    # Hypotheses with words dropped and case changed: scored against the official files and
    # against our tokenization of the raw references, the two agree (here exactly).
    hyps = [" ".join(w for i, w in enumerate(s.split()) if i % 4 != 1).upper() if n % 3 == 0
            else s for n, s in enumerate(raw)]
    theirs = sacrebleu.metrics.BLEU(tokenize="none", force=True).corpus_score(
        moses_tok_lc(hyps, "de"), [official]).score
    ours = bleu_tok_lc(hyps, raw, "de")
    assert 30 < ours < 95
    assert abs(ours - theirs) <= 0.2
