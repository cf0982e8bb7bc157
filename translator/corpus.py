"""Reading parallel text: (source, target) pairs per split, from every kind of `data.source`."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

from translator.config import DataConfig
from translator.errors import TranslatorError

Pair = tuple[str, str]
Splits = dict[str, list[Pair]]
SPLITS = ("train", "valid", "test")
log = logging.getLogger("translator")


class DataError(TranslatorError):
    """Corpus files or datasets that cannot be read as parallel text."""


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file without their line ends; invalid UTF-8 names file and line."""
    lines = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as exc:
                raise DataError(f"data error: {path} line {n} is not valid UTF-8 "
                                f"(byte {exc.start})") from None
    return lines


def _read_text_pair(cfg: DataConfig, stem: str) -> list[Pair]:
    src_path = Path(cfg.dir or ".") / f"{stem}.{cfg.src_lang}"
    tgt_path = Path(cfg.dir or ".") / f"{stem}.{cfg.tgt_lang}"
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"data error: {src_path} has {len(src)} lines but {tgt_path} has "
                        f"{len(tgt)}; the files must be line-aligned")
    return list(zip(src, tgt, strict=True))


def _read_tsv(cfg: DataConfig, name: str) -> list[Pair]:
    path = Path(cfg.dir or ".") / name
    pairs = []
    for n, line in enumerate(_read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"data error: {path} line {n} has {len(fields)} tab-separated "
                            "fields, expected 2 (source<TAB>target)")
        pairs.append((fields[0], fields[1]))
    return pairs


def _hub_pairs(cfg: DataConfig, split: str) -> list[Pair]:
    """One split of a Hugging Face dataset, with a `translation` column of language-keyed
    dicts (as opus_books has) or one text column per language."""
    import datasets  # heavy import, needed only here

    try:
        ds = datasets.load_dataset(cfg.name, cfg.subset, split=split)
    except Exception as exc:  # network, missing dataset, unknown split: all user-facing here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data error: cannot load dataset '{cfg.name}' ({cfg.subset}) split "
                        f"'{split}': {first}") from None
    columns = ds.column_names
    if "translation" in columns:
        pairs = []
        for n, row in enumerate(ds["translation"]):
            for lang in (cfg.src_lang, cfg.tgt_lang):
                if lang not in row:
                    raise DataError(f"data error: row {n} of '{cfg.name}' has no '{lang}' in its "
                                    f"translation column (languages: {', '.join(row)})")
            pairs.append((row[cfg.src_lang], row[cfg.tgt_lang]))
        return pairs
    if cfg.src_lang in columns and cfg.tgt_lang in columns:
        return list(zip(ds[cfg.src_lang], ds[cfg.tgt_lang], strict=True))
    raise DataError(f"data error: dataset '{cfg.name}' has neither a 'translation' column nor "
                    f"columns '{cfg.src_lang}' and '{cfg.tgt_lang}' "
                    f"(columns: {', '.join(columns)})")


def _read_split(cfg: DataConfig, name: str) -> list[Pair]:
    if cfg.source == "text":
        return _read_text_pair(cfg, name)
    if cfg.source == "tsv":
        return _read_tsv(cfg, name)
    if cfg.source == "hub":
        return _hub_pairs(cfg, name)
    raise DataError(f"data error: unknown data.source '{cfg.source}'")


def clean_pairs(pairs: Sequence[Pair]) -> tuple[list[Pair], int]:
    """Strip whitespace and drop pairs with an empty side; returns (kept, dropped count)."""
    kept = [(s.strip(), t.strip()) for s, t in pairs]
    kept = [(s, t) for s, t in kept if s and t]
    return kept, len(pairs) - len(kept)


def load_splits(cfg: DataConfig) -> Splits:
    """All splits of the configured corpus: explicit ones read, missing ones carved from train
    by ratio with `split_seed`. Empty pairs are dropped."""
    if cfg.source == "builtin":
        from translator.builtin_corpus import builtin_splits

        n_eval = max(1, min(1000, cfg.builtin_size // 10))
        splits = builtin_splits(cfg.builtin_size, cfg.builtin_seed, n_eval, n_eval)
        return {k: list(v) for k, v in splits.items()}
    splits: Splits = {"train": _read_split(cfg, cfg.train)}
    for name, ratio in (("valid", cfg.valid_ratio), ("test", cfg.test_ratio)):
        stem = getattr(cfg, name)
        if stem:
            splits[name] = _read_split(cfg, stem)
        elif ratio > 0:
            train = splits["train"]
            order = list(range(len(train)))
            random.Random(f"{cfg.split_seed}-{name}").shuffle(order)
            n = max(1, round(ratio * len(train)))
            carved = set(order[:n])
            splits[name] = [train[i] for i in sorted(carved)]
            splits["train"] = [p for i, p in enumerate(train) if i not in carved]
        else:
            splits[name] = []
    for name in SPLITS:
        splits[name], dropped = clean_pairs(splits[name])
        if dropped:
            log.warning("%s: dropped %d pairs with an empty side", name, dropped)
    if not splits["train"]:
        raise DataError("data error: the train split is empty")
    return splits
