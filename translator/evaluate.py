"""Corpus BLEU and chrF with sacreBLEU, over a split or any list of pairs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sacrebleu

from translator.errors import TranslatorError
from translator.inference import Translator


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """sacreBLEU corpus BLEU (13a tokenization, cased) and chrF, with their signatures."""
    if len(hypotheses) != len(references):
        raise TranslatorError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise TranslatorError("nothing to score: no sentences")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "sentences": len(references),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(b),
    }


def evaluate_pairs(translator: Translator, pairs: Sequence[tuple[str, str]],
                   batch_size: int = 64) -> tuple[dict[str, Any], list[str]]:
    """Translate the source side of `pairs`, score against the target side.

    Returns the report (bleu, chrf, sentences, signatures, seconds) and the hypotheses.
    """
    start = time.perf_counter()
    hyps = translator.translate([s for s, _ in pairs], batch_size=batch_size)
    report = score(hyps, [t for _, t in pairs])
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report, hyps
