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


# -- the `evaluate` verb's report: pairs, scores, files, text ----------------------------------


def check_sources(split: str | None, src: Path | None, ref: Path | None,
                  export: bool) -> None:
    """What `evaluate` refuses before loading a model: --src without --ref (or the reverse),
    a split with them, and an export (which holds no corpus) without them."""
    if (src is None) != (ref is None):
        raise TranslatorError("--src and --ref go together")
    if src is not None and split is not None:
        raise TranslatorError("give either --split or --src/--ref, not both")
    if src is None and export:
        raise TranslatorError("--model (an export) holds no corpus: evaluate it with "
                              "--src/--ref, or use --run with --engine ctranslate2")


def evaluation_pairs(translator: Engine, split: str | None, src: Path | None,
                     ref: Path | None) -> tuple[list[tuple[str, str]], str, dict[str, str]]:
    """What `evaluate` scores: the pairs, their name in the report's file name, and where
    they came from (for the report)."""
    if src is not None and ref is not None:
        return read_parallel_files(src, ref), src.name, {"src": str(src), "ref": str(ref)}
    name = split or "test"
    return load_split(translator.cfg.data, name), name, {"split": name}


def write_report(out_dir: Path, stem: str, report: dict[str, Any], hyps: list[str]) -> None:
    """Write an evaluation's report and translations into `out_dir` (atomically)."""
    import json

    from translator.files import atomic_write

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TranslatorError(f"cannot create {out_dir}: {exc.strerror}") from exc
    atomic_write(out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out_dir / f"{stem}.hyp.txt", "".join(h + "\n" for h in hyps))


def evaluate_engine(translator: Engine, split: str | None, src: Path | None,
                    ref: Path | None, batch_size: int, export: Path | None = None,
                    decoding: DecodingConfig | None = None) -> tuple[dict[str, Any], str]:
    """Score a loaded engine on a split (or on --src/--ref files) with `decoding` (None: the
    run's), write the report and translations into the run's (or the export's) eval/
    folder, and return the report and the name of what was scored."""
    from translator.run import RunLayout

    pairs, name, where = evaluation_pairs(translator, split, src, ref)
    report, hyps = evaluate_pairs(translator, pairs, batch_size, decoding=decoding)
    report.update(where, checkpoint=str(translator.checkpoint),
                  engine=translator.engine_name)
    for key in ("quantization", "source_checkpoint"):
        if getattr(translator, key, None):
            report[key] = getattr(translator, key)
    out_dir = RunLayout(export if export is not None else Path(translator.cfg.run_dir)).eval
    write_report(out_dir, report_name(name, report), report, hyps)
    return report, name


def report_text(report: dict[str, Any], name: str) -> str:
    """The lines `evaluate` prints without --json."""
    search = ("greedy" if report["beam_size"] == 1 else
              f"beam {report['beam_size']}, length penalty {report['length_penalty']}")
    tok_lc = report.get("bleu_tok_lc")
    tok_line = (f"{TOK_LC_LABEL}: {tok_lc:.2f} (sacreBLEU above: {report['bleu']:.2f})"
                if tok_lc is not None else
                "(pip install sacremoses for the papers' tokenized lowercased BLEU)")
    return (f"{report['bleu_detail']}\n{report['bleu_signature']}\n"
            f"chrF2 = {report['chrf']:.2f}\n{report['chrf_signature']}\n"
            f"{tok_line}\nlength ratio (hypotheses / references) "
            f"{report['length_ratio']:.3f}\n"
            f"{report['sentences']} sentences ({name}), {search}, "
            f"{report['sentences_per_second']} sentences/s, "
            f"checkpoint {report['checkpoint']}")
