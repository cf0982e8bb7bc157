"""A run's corpus: every corpus of `data` (one, or several with `data.corpora`) read from its
source (`translator.data.sources`) and cleaned (`translator.data.cleaning`), valid/test carved
from train by ratio with `data.split_seed` where not given, and several corpora joined into
one train split whose epochs mix them by weight (`CorpusMix`). A single corpus is the same
path with a list of one. `Corpus.record()` describes the outcome, which
`translator.data.split_record` keeps in the run folder's splits.json and compares on resume.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from translator.config import CorpusPart, DataConfig, corpus_parts
from translator.data.cleaning import clean_split, cleaning_summary, filter_train
from translator.data.sources import (
    SPLITS,
    DataError,
    builtin_splits_of,
    check_data_files,
    empty_split,
    fingerprint,
    quiet_datasets,
    read_split,
    source_of,
)

if TYPE_CHECKING:
    import datasets

Pair = tuple[str, str]
Splits = Mapping[str, list[Pair]]
log = logging.getLogger("translator")


@dataclass
class Corpus:
    """The splits of a corpus (Arrow datasets with string columns `src` and `tgt`), how many
    pairs of each were dropped for an empty side, how valid/test were carved, and what the
    train-only filters did (`filtered`: counts by filter name; training adds the token-level
    ones, `ratio` and `too_long`, once the tokenizers exist)."""

    splits: dict[str, datasets.Dataset]
    dropped: dict[str, int] = field(default_factory=dict)
    carved: dict[str, float] = field(default_factory=dict)
    split_seed: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    mix: CorpusMix | None = None
    """With `data.corpora` (even a list of one): where each corpus' pairs lie in the train
    split, with its weight; None for a `data` section without `corpora`."""
    _hashes: dict[str, str] = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> datasets.Dataset:
        return self.splits[name]

    def record(self, mix: CorpusMix | None = None) -> dict[str, Any]:
        """What the run folder's splits.json holds: the seed, the carved ratios, the split
        sizes and content hashes, so that a resume can check it sees the same split; with
        several corpora, each one's train size and weight, and with `mix` (the train
        dataset's, after the token-level filters) each one's share of an epoch."""
        record = {"split_seed": self.split_seed, "carved_ratios": dict(self.carved),
                  "sizes": {k: len(v) for k, v in self.splits.items()},
                  "hashes": self.hashes(),
                  "dropped_empty": dict(self.dropped), "train_filters": dict(self.filtered)}
        if self.mix is not None:
            sizes = self.mix.sizes.tolist()
            shares = mix.record() if mix is not None else {
                label: {"weight": w} for label, w in zip(self.mix.labels, self.mix.weights,
                                                         strict=True)}
            record["corpora"] = {label: {"size": n, **shares[label]}
                                 for label, n in zip(self.mix.labels, sizes, strict=True)}
        return record

    def hashes(self) -> dict[str, str]:
        """A SHA-256 of each split's pairs (after cleaning and carving): what lets a moved
        corpus resume, since equal hashes mean the same pairs in the same order. Computed
        once per corpus."""
        if not self._hashes:
            self._hashes = {k: content_hash(v) for k, v in self.splits.items()}
        return dict(self._hashes)

    def cleaning_summary(self) -> str:
        """The non-zero train filter counts, for log lines."""
        return cleaning_summary(self.filtered)


@dataclass
class CorpusMix:
    """How an epoch mixes several corpora concatenated in one dataset: corpus k holds the
    dataset positions `bounds[k]:bounds[k + 1]`; each epoch draws `counts()[k]` of them."""

    labels: list[str]
    weights: list[float]
    bounds: np.ndarray
    temperature: float = 1.0

    @property
    def sizes(self) -> np.ndarray:
        """Pairs of each corpus in the dataset."""
        return np.diff(self.bounds)

    def counts(self) -> np.ndarray:
        """Pairs drawn from each corpus per epoch: the total is the dataset size, split in
        proportion to weight * size ** (1 / temperature)."""
        sizes = self.sizes.astype(np.float64)
        score = np.asarray(self.weights, dtype=np.float64) * sizes ** (1.0 / self.temperature)
        score[sizes == 0] = 0.0  # an empty corpus cannot be drawn from
        total = float(sizes.sum())
        if total == 0 or score.sum() == 0:
            return np.zeros(len(sizes), dtype=np.int64)
        return np.rint(score / score.sum() * total).astype(np.int64)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """This epoch's dataset positions (with repeats for a corpus drawn more than its
        size): whole copies of the corpus, then a random subset for the remainder."""
        parts = []
        for k, count in enumerate(self.counts().tolist()):
            lo, hi = int(self.bounds[k]), int(self.bounds[k + 1])
            n = hi - lo
            if n == 0 or count == 0:
                continue
            full, rest = divmod(count, n)
            parts += [np.arange(lo, hi, dtype=np.int64)] * full
            if rest:
                parts.append(lo + np.sort(rng.choice(n, rest, replace=False)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def kept_only(self, kept: np.ndarray) -> CorpusMix:
        """The same mix over a dataset that kept only the train rows `kept` (ascending; the
        token-level filters drop pairs), its bounds moved to dataset positions."""
        return CorpusMix(self.labels, self.weights, np.searchsorted(kept, self.bounds),
                         self.temperature)

    def record(self) -> dict[str, dict[str, float]]:
        """Per corpus: pairs kept (after the token-level filters), weight, pairs drawn per
        epoch and their share of it (splits.json)."""
        counts = self.counts()
        total = max(int(counts.sum()), 1)
        return {label: {"kept": int(n), "weight": float(w), "pairs_per_epoch": int(c),
                        "share": round(int(c) / total, 6)}
                for label, n, w, c in zip(self.labels, self.sizes.tolist(), self.weights,
                                          counts.tolist(), strict=True)}

    def summary(self) -> str:
        """'a 9000 pairs x weight 1 -> 9000 a epoch (75.0%), ...' for the log."""
        return ", ".join(f"{label} {r['kept']} pairs x weight {r['weight']:g} -> "
                         f"{r['pairs_per_epoch']} an epoch ({r['share']:.1%})"
                         for label, r in self.record().items())


def content_hash(ds: datasets.Dataset, batch_size: int = 50_000) -> str:
    """SHA-256 of a split's (src, tgt) strings in order; streams the Arrow table in batches."""
    digest = hashlib.sha256()
    for batch in ds.with_format("arrow").iter(batch_size=batch_size):
        for column in ("src", "tgt"):
            digest.update("\0".join(batch.column(column).to_pylist()).encode("utf-8"))
            digest.update(b"\1")
    return digest.hexdigest()


def _carve(train: datasets.Dataset, sizes: dict[str, float],
           seed: int) -> dict[str, datasets.Dataset]:
    """Take `round(ratio * len(train))` (at least 1) random pairs of train for each named
    split; train keeps the rest, in file order. Deterministic for (len(train), seed)."""
    n = len(train)
    # A string seed is hashed (SHA-512) by `random`: any int works and nearby seeds differ.
    rng = np.random.default_rng(random.Random(f"translator-split:{seed}").getrandbits(64))
    order = rng.permutation(n)
    keep = np.ones(n, dtype=bool)
    out, start = {}, 0
    for name, ratio in sizes.items():
        count = min(max(1, round(ratio * n)), n - start)
        idx = np.sort(order[start:start + count])
        start += count
        keep[idx] = False
        out[name] = train.select(idx, new_fingerprint=fingerprint(
            train._fingerprint, "carve", name, seed, sizes))
    out["train"] = train.select(np.flatnonzero(keep), new_fingerprint=fingerprint(
        train._fingerprint, "carve", "train", seed, sizes))
    return out


def load_corpus(cfg: DataConfig) -> Corpus:
    """Every corpus of `cfg` (`corpus_parts`: one, or each of `data.corpora`), each read
    and cleaned as a corpus of its own (duplicates are dropped within a corpus, not across),
    their train splits concatenated in list order (memory-mapped, nothing copied), valid and
    test taken from the corpus that gives them (`data.valid_corpus`, else the first)."""
    parts = corpus_parts(cfg)
    check_data_files(cfg)
    loaded = []
    for part in parts:
        if cfg.corpora:
            log.info("corpus %s (%s):", part.label, part.key)
        loaded.append(_load_one(part.data))
    own = next(c for c, p in zip(loaded, parts, strict=True) if p.gives_valid)
    if len(loaded) == 1:
        train = own["train"]
    else:
        import datasets

        train = datasets.concatenate_datasets([c["train"] for c in loaded])
    splits = {"train": train, "valid": own["valid"], "test": own["test"]}
    filtered: dict[str, int] = {}
    for c in loaded:
        for key, n in c.filtered.items():
            filtered[key] = filtered.get(key, 0) + n
    dropped = {"train": sum(c.dropped.get("train", 0) for c in loaded),
               "valid": own.dropped.get("valid", 0), "test": own.dropped.get("test", 0)}
    return Corpus(splits, dropped, own.carved, cfg.split_seed, filtered,
                  _mix(cfg, parts, loaded))


def _mix(cfg: DataConfig, parts: list[CorpusPart], loaded: list[Corpus]) -> CorpusMix | None:
    """Where each of `data.corpora` lies in the joined train split (None without them)."""
    if not cfg.corpora:
        return None
    sizes = [len(c["train"]) for c in loaded]
    log.info("corpora: %s; valid and test from %s", ", ".join(
        f"{p.label} train {n} (weight {p.weight:g})" for p, n in zip(parts, sizes, strict=True)),
        next(p.label for p in parts if p.gives_valid))
    return CorpusMix([p.label for p in parts], [p.weight for p in parts],
                     np.cumsum([0, *sizes]), cfg.sampling_temperature)


def _load_one(cfg: DataConfig) -> Corpus:
    """All splits of one corpus: explicit ones read, missing ones carved from train by ratio
    with `split_seed` (or left empty). Empty sides are dropped and counted in every split;
    then the train split alone goes through `filter_train` (carving comes first, so the
    carved valid/test are never filtered either)."""
    if source_of(cfg).read is None:
        raw = builtin_splits_of(cfg)
        names = {k: k for k in SPLITS}
    else:
        names = {k: getattr(cfg, k) for k in SPLITS if getattr(cfg, k)}
        raw = {k: read_split(cfg, name) for k, name in names.items()}
    splits, dropped = {}, {}
    for split in list(raw):
        # Popped, so that each raw split is unmapped once cleaned: the pages the cleaning
        # read would otherwise stay resident (and count in RSS) through the train filters.
        ds = raw.pop(split)
        splits[split], dropped[split] = ((empty_split(), 0) if ds is None
                                         else clean_split(ds, cfg, names[split], split))
        del ds
    carved = {k: r for k, r in (("valid", cfg.valid_ratio), ("test", cfg.test_ratio))
              if k not in splits and r > 0}
    if carved:
        splits.update(_carve(splits["train"], carved, cfg.split_seed))
    for split in SPLITS:
        splits.setdefault(split, empty_split())
        dropped.setdefault(split, 0)
    before = len(splits["train"])
    splits["train"], filtered = filter_train(splits["train"], cfg)
    if len(splits["train"]) == 0:
        raise DataError("the train split is empty" + (
            f" after cleaning (of {before} pairs: {cleaning_summary(filtered)}; see "
            "data.clean_text, drop_copies, dedup)" if before else ""))
    corpus = Corpus(splits, dropped, carved, cfg.split_seed, filtered)
    if any(filtered.values()):
        log.info("train cleaning: %s", corpus.cleaning_summary())
    log.info("corpus: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return corpus


def tokenizer_sample(train: datasets.Dataset, limit: int, seed: int) -> datasets.Dataset:
    """The train pairs a tokenizer learns from: all of them up to `limit` (0: no limit),
    else `limit` pairs in random blocks of consecutive ones, seeded by `seed` (blocks, not
    scattered pairs, so that a corpus on disk is read in long runs, not page by page; blocks
    of up to 1000 pairs, at least 100 of them, still see every part of it). Says so in the
    log."""
    n = len(train)
    if limit <= 0 or n <= limit:
        return train
    block = max(1, min(1000, limit // 100))
    n_blocks = -(-n // block)
    rng = np.random.default_rng(random.Random(f"tokenizer-sample:{seed}").getrandbits(64))
    chosen = np.sort(rng.choice(n_blocks, -(-limit // block), replace=False))
    rows = (chosen[:, None] * block + np.arange(block)).ravel()
    rows = rows[rows < n][:limit]
    log.info("tokenizer: training on a sample of %d of %d train pairs (tokenizer.train_sample"
             " = %d; blocks of %d pairs, seeded by data.split_seed)", len(rows), n, limit, block)
    with quiet_datasets():
        return train.select(rows, new_fingerprint=fingerprint(
            train._fingerprint, "tokenizer-sample", limit, seed))


# ---------------------------------------------------------------- plain Python views


def to_pairs(ds: datasets.Dataset) -> list[Pair]:
    """A split as a list of (source, target) strings (for small splits: valid, test)."""
    table = ds.with_format("arrow")[:]
    return list(zip(table.column("src").to_pylist(), table.column("tgt").to_pylist(),
                    strict=True))


def iter_texts(ds: datasets.Dataset, column: str, batch_size: int = 10_000
               ) -> Iterator[list[str]]:
    """One column of a split in batches of strings, without loading it whole."""
    for batch in ds.with_format("arrow").iter(batch_size=batch_size):
        yield batch.column(column).to_pylist()


class _LazySplits(Mapping[str, list[Pair]]):
    """The splits of a Corpus as lists of pairs, each converted when first asked for (so that
    evaluating on the test split never turns a large train split into Python objects)."""

    def __init__(self, corpus: Corpus) -> None:
        self._corpus, self._lists = corpus, {}

    def __getitem__(self, name: str) -> list[Pair]:
        if name not in self._lists:
            self._lists[name] = to_pairs(self._corpus.splits[name])
        return self._lists[name]

    def __iter__(self) -> Iterator[str]:
        return iter(SPLITS)

    def __len__(self) -> int:
        return len(SPLITS)


def load_splits(cfg: DataConfig) -> Splits:
    """The splits of `load_corpus(cfg)` as lists of (source, target) pairs, by split name."""
    return _LazySplits(load_corpus(cfg))
