"""Corpus BLEU and chrF with sacreBLEU, over a split or any list of pairs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sacrebleu

from translator.config import DataConfig, DecodingConfig
from translator.data.text import read_lines
from translator.errors import TranslatorError

if TYPE_CHECKING:  # training scores with this module and imports no inference module
    from translator.decode.engine import Engine

TOK_LC_LABEL = "tokenized lowercased BLEU (comparable to papers, not to sacreBLEU)"


def moses_tok_lc(texts: Sequence[str], lang: str) -> list[str]:
    """Texts as papers on Multi30k and WMT score them: Moses punctuation normalisation,
    lowercase, Moses tokenization with tokenizer.perl's escaping (this reproduces Multi30k's
    official `*.lc.norm.tok.*` files line for line). Needs `sacremoses`."""
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    norm, tok = MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)
    return [tok.tokenize(norm.normalize(t).lower(), escape=True, return_str=True)
            for t in texts]


def bleu_tok_lc(hypotheses: Sequence[str], references: Sequence[str], lang: str) -> float | None:
    """BLEU on `moses_tok_lc` text with sacreBLEU's `tokenize="none"`: the papers' metric
    (e.g. 41.02 for Transformer-tiny on test_2016_flickr), not comparable to sacreBLEU's. None
    when sacremoses is not installed."""
    try:
        hyps, refs = moses_tok_lc(hypotheses, lang), moses_tok_lc(references, lang)
    except ImportError:
        return None
    return round(sacrebleu.metrics.BLEU(tokenize="none", force=True)
                 .corpus_score(hyps, [refs]).score, 2)


def score(hypotheses: Sequence[str], references: Sequence[str],
          lang: str | None = None) -> dict[str, Any]:
    """sacreBLEU corpus BLEU (13a tokenization, cased) and chrF, with their signatures, and
    the length ratio of hypotheses to references (BLEU's brevity penalty applies below 1).
    With the target language `lang`, also `bleu_tok_lc` (see `bleu_tok_lc`)."""
    if len(hypotheses) != len(references):
        raise TranslatorError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise TranslatorError("nothing to score: no sentences")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    report = {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "sentences": len(references),
        "length_ratio": round(b.sys_len / max(b.ref_len, 1), 3),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(b),
    }
    if lang is not None:
        report["bleu_tok_lc"] = bleu_tok_lc(hypotheses, references, lang)
    return report


def evaluate_pairs(translator: Engine, pairs: Sequence[tuple[str, str]],
                   batch_size: int = 64, *, decoding: DecodingConfig | None = None,
                   **overrides: float | int | None) -> tuple[dict[str, Any], list[str]]:
    """Translate the source side of `pairs` with any engine, score against the target side.

    Decoding settings: `decoding`, else the engine's with `overrides` (`beam_size`,
    `length_penalty`, `max_len_a`, `max_len_b`) applied. Returns the report (bleu, chrf,
    sentences, signatures, the decoding settings, seconds) and the hypotheses.
    """
    dec = decoding if decoding is not None else translator.decoding(**overrides)
    start = time.perf_counter()
    hyps = translator.translate([s for s, _ in pairs], batch_size, decoding=dec)
    seconds = time.perf_counter() - start
    report = score(hyps, [t for _, t in pairs], lang=translator.cfg.data.tgt_lang)
    report.update(
        search="greedy" if dec.beam_size == 1 else "beam",
        beam_size=dec.beam_size,
        length_penalty=dec.length_penalty if dec.beam_size > 1 else 0.0,
        max_len_a=dec.max_len_a,
        max_len_b=dec.max_len_b,
        dtype=dec.dtype,
        seconds=round(seconds, 2),
        sentences_per_second=round(len(pairs) / max(seconds, 1e-9), 1),
    )
    return report, hyps


def report_name(name: str, report: dict[str, Any]) -> str:
    """The file stem of an evaluate report and its translations: the split (or source file)
    name, then what changes the result, so that runs with other settings sit beside it
    instead of overwriting it: a checkpoint other than best.pt/latest.pt, the ctranslate2
    engine with its quantization, a dtype other than fp32, the search (`greedy`, or
    `beam4.lp0.6`) and an output cap other than the default (`len2x+5`). E.g.
    `test.beam4.lp0.6`, `test.greedy`, `test.averaged.ct2-int8.greedy`."""
    parts = [name]
    engine = report.get("engine", "native")
    # The checkpoint the weights came from: for an export, the one it was made from.
    ckpt = Path(str((report.get("checkpoint") if engine == "native"
                     else report.get("source_checkpoint")) or ""))
    if ckpt.name and ckpt.stem not in ("best", "latest"):
        parts.append(ckpt.stem)
    if engine != "native":
        quant = report.get("quantization")
        parts.append("ct2" + (f"-{quant}" if quant else "") if engine == "ctranslate2"
                     else engine)
    elif report.get("dtype", "fp32") != "fp32":
        parts.append(report["dtype"])
    if report["beam_size"] == 1:
        parts.append("greedy")
    else:
        parts.append(f"beam{report['beam_size']}.lp{report['length_penalty']:g}")
    default = DecodingConfig()
    if (report["max_len_a"], report["max_len_b"]) != (default.max_len_a, default.max_len_b):
        parts.append(f"len{report['max_len_a']:g}x+{report['max_len_b']}")
    return ".".join(parts)


def read_parallel_files(src: str | Path, ref: str | Path) -> list[tuple[str, str]]:
    """Line-aligned source and reference files as pairs; a pair with an empty source or
    reference is kept (an empty source translates to "", as it should score)."""
    sources, refs = read_lines(Path(src)), read_lines(Path(ref))
    if len(sources) != len(refs):
        raise TranslatorError(f"{src} has {len(sources)} lines but {ref} has {len(refs)}; "
                              "the files must be line-aligned")
    if not sources:
        raise TranslatorError(f"nothing to evaluate: {src} is empty")
    return list(zip(sources, refs, strict=True))


def load_split(data: DataConfig, name: str) -> list[tuple[str, str]]:
    """The pairs of split `name` of a run's corpus: train, valid or test as configured, or,
    for file and hub corpora, any other split of the same corpus by its name (a file prefix,
    a file name or a hub split)."""
    from translator.config import valid_part
    from translator.data.corpus import load_splits
    from translator.data.sources import source_of

    if name not in ("train", "valid", "test"):
        # Other splits by name come from the corpus that gives valid and test.
        data = valid_part(data).data
    if name in ("train", "valid", "test"):
        pairs = load_splits(data)[name]
    else:
        source = source_of(data)
        if source.read is None:
            raise TranslatorError(f"unknown split '{name}': the built-in corpus has train, "
                                  "valid and test")
        for path in source.split_files(data, name):
            if not path.is_file():
                raise TranslatorError(f"split '{name}' not found: no file {path}")
        # The named split takes the test slot; nothing is carved out of train for it.
        pairs = load_splits(dataclasses.replace(data, test=name, test_ratio=0.0))["test"]
    if not pairs:
        raise TranslatorError(f"the '{name}' split of this run's corpus is empty")
    return pairs
