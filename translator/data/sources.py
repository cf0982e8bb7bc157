"""Where parallel text comes from: every `data.source` (`SOURCES`) reads one split into an Arrow
dataset of the `datasets` library, with whatever columns the source has.

Sources: the built-in grammar corpus (generated in memory), a Hugging Face hub dataset, two
line-aligned text files per split (Moses style), or one TSV, CSV, JSONL or Parquet file per
split. Files are converted to Arrow once, into the datasets cache, and memory-mapped from
there: a corpus of millions of pairs is never held as Python objects, and a second run
reuses the conversion. A file that cannot be read is one `DataError` naming its bad line.
Picking the two columns and cleaning them is `translator.data.cleaning`; carving, mixing and
the corpus itself are `translator.data.corpus`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from translator.config import SOURCE_KINDS, ConfigError, DataConfig, SourceKind, corpus_parts
from translator.errors import TranslatorError, first_line

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "valid", "test")
# Part of every cache key below: bump it when a transform here changes its output.
_CACHE_VERSION = "corpus-1"
_PANDAS_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
log = logging.getLogger("translator")


class DataError(TranslatorError):
    """Corpus files or datasets that cannot be read as parallel text."""

    prefix = "data error: "


def fingerprint(*parts: object) -> str:
    """A datasets cache key from anything printable (previous fingerprint, options, ...)."""
    return hashlib.sha256("\x1f".join(map(str, (_CACHE_VERSION, *parts))).encode()).hexdigest()[:16]


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars and no log lines from datasets: our own log says what happens, and a
    failure becomes one DataError message instead of datasets' error log plus ours."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.utils.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.utils.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


# ---------------------------------------------------------------- diagnosing bad files


def bad_utf8(path: Path) -> str | None:
    """'<path> line N is not valid UTF-8 (byte B)' for the first bad line, else None."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"{path} line {n} is not valid UTF-8 (byte {exc.start})"
    return None


def _bad_json_line(path: Path) -> str | None:
    """'<path> line N ...' for the first line of a JSONL file that is not a JSON object."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"{path} line {n} is not valid JSON ({exc.msg})"
            if not isinstance(value, dict):
                return f"{path} line {n} is a JSON {type(value).__name__}, not an object"
    return None


def _load_file(builder: str, path: Path, cache_dir: str | None,
               **options: Any) -> datasets.Dataset:
    """One file through a packaged datasets builder (text, csv, json, parquet), converted to
    Arrow in the cache (reused while the file's modification time stays the same)."""
    import datasets

    try:
        with quiet_datasets():
            return datasets.load_dataset(builder, data_files={"train": str(path)},
                                         split="train", cache_dir=cache_dir,
                                         trust_remote_code=False, **options)
    except Exception as exc:  # datasets wraps the reader's error; find the bad line ourselves
        reason = None if builder == "parquet" else bad_utf8(path)
        if reason is None and builder == "json":
            reason = _bad_json_line(path)
        if reason is None:
            cause = first_line(exc.__cause__ or exc, 300)
            fields = _PANDAS_FIELDS.search(cause)
            reason = (f"{path} line {fields[2]} has {fields[3]} fields, expected {fields[1]}"
                      if fields else f"cannot read {path}: {cause}")
        raise DataError(reason) from exc


# ---------------------------------------------------------------- one split per source


def _read_text(cfg: DataConfig, stem: str) -> datasets.Dataset:
    """Two line-aligned files, `<dir>/<stem>.<src_lang>` and `<dir>/<stem>.<tgt_lang>`."""
    import datasets

    base = Path(cfg.dir or ".")
    src_path, tgt_path = base / f"{stem}.{cfg.src_lang}", base / f"{stem}.{cfg.tgt_lang}"
    src, tgt = (_load_file("text", path, cfg.cache_dir) if path.stat().st_size
                else empty_split("text") for path in (src_path, tgt_path))
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has "
                        f"{len(tgt)}; the files must be line-aligned")
    return datasets.concatenate_datasets(
        [src.rename_column("text", "src"), tgt.rename_column("text", "tgt")], axis=1)


def _header_fields(path: Path, sep: str, quoting: int) -> list[str]:
    """The fields of the first non-blank line (of the first 1000) of a TSV/CSV file."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter=sep, quoting=quoting)
            for n, row in enumerate(reader):
                if row or n >= 1000:
                    return row
    except UnicodeDecodeError as exc:
        raise DataError(str(bad_utf8(path))) from exc
    except csv.Error as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return []


def _read_delimited(cfg: DataConfig, name: str) -> datasets.Dataset | None:
    """A TSV (tab-separated, no quoting) or CSV (comma-separated, "quoted" fields) file. Column
    names in the config mean the first line is a header; indices or none mean it is not, and
    the columns are then called "0", "1", ..."""
    import datasets

    path = Path(cfg.dir or ".") / name
    sep, quoting = SOURCES[cfg.source].delimiter or ("\t", csv.QUOTE_NONE)  # tsv or csv
    header = isinstance(cfg.src_column, str) or isinstance(cfg.tgt_column, str)
    fields = _header_fields(path, sep, quoting)
    if not fields:
        return None
    names = fields if header else [str(i) for i in range(len(fields))]
    features = datasets.Features({n: datasets.Value("string") for n in names})
    return _load_file(
        "csv", path, cfg.cache_dir, sep=sep, quoting=quoting, header=0 if header else None,
        names=None if header else names, features=features,
        # Text stays text: no "NA" -> NaN, and blank lines are kept so they are counted.
        keep_default_na=False, na_filter=False, skip_blank_lines=False)


def _read_hub(cfg: DataConfig, split: str) -> datasets.Dataset:
    """One split of a Hugging Face dataset (downloaded once into the datasets cache)."""
    import datasets

    try:
        with quiet_datasets():
            # cache_dir only when set: the library's own default applies otherwise.
            extra = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
            # trust_remote_code=False: a config naming a hub dataset with a loading script
            # must not run that script (datasets >= 4 refuses them all; older ones asked).
            return datasets.load_dataset(cfg.name, cfg.subset, split=split,
                                         trust_remote_code=False, **extra)
    except Exception as exc:  # network, missing dataset, unknown split: all user-facing here
        raise DataError(f"cannot load dataset '{cfg.name}' ({cfg.subset}) split "
                        f"'{split}': {first_line(exc, 300)}") from exc


def _read_single(builder: str) -> Callable[[DataConfig, str], datasets.Dataset | None]:
    """The reader of a one-file-per-split source through the datasets builder `builder`."""

    def read(cfg: DataConfig, name: str) -> datasets.Dataset | None:
        path = Path(cfg.dir or ".") / name
        return _load_file(builder, path, cfg.cache_dir) if path.stat().st_size else None

    return read


def _one_file(cfg: DataConfig, name: str) -> list[Path]:
    return [Path(cfg.dir or ".") / name]


def _text_files(cfg: DataConfig, name: str) -> list[Path]:
    base = Path(cfg.dir or ".")
    return [base / f"{name}.{cfg.src_lang}", base / f"{name}.{cfg.tgt_lang}"]


@dataclass(frozen=True)
class Source:
    """What one `data.source` is: its validation facts (`kind`, from the config's table), how
    a split of it is read and which files hold one (evaluate and training read this table)."""

    kind: SourceKind
    """Which key it needs, whether columns apply, whether it is delimited (config.py)."""
    read: Callable[[DataConfig, str], datasets.Dataset | None] | None
    """The raw dataset of a split by name, None for an empty file; None for the built-in
    corpus, which is generated whole (`builtin_splits_of`)."""
    files: Callable[[DataConfig, str], list[Path]] | None = None
    """The files holding a split, in `data.dir`; None: the source reads no files."""
    delimiter: tuple[str, int] | None = None
    """TSV/CSV: the field separator and the csv quoting; such files may have no header."""
    text: bool = True
    """Whether the files are text (a bad byte is then found and named by line)."""

    @property
    def columns(self) -> bool:
        """Whether data.src_column/tgt_column apply."""
        return self.kind.columns

    def split_files(self, cfg: DataConfig, name: str) -> list[Path]:
        """The files of split `name` (none for a source that reads no files)."""
        return self.files(cfg, name) if self.files is not None else []


_KINDS = SOURCE_KINDS
SOURCES: dict[str, Source] = {
    "builtin": Source(_KINDS["builtin"], None),
    "hub": Source(_KINDS["hub"], _read_hub),
    "text": Source(_KINDS["text"], _read_text, _text_files),
    "tsv": Source(_KINDS["tsv"], _read_delimited, _one_file, ("\t", csv.QUOTE_NONE)),
    "csv": Source(_KINDS["csv"], _read_delimited, _one_file, (",", csv.QUOTE_MINIMAL)),
    "jsonl": Source(_KINDS["jsonl"], _read_single("json"), _one_file),
    "parquet": Source(_KINDS["parquet"], _read_single("parquet"), _one_file, text=False),
}
"""Every `data.source` (the keys are DataConfig.source's choices)."""


def source_of(cfg: DataConfig) -> Source:
    """The `SOURCES` entry of `cfg.source` (validated when a config loads; a DataConfig built
    in code may still name none)."""
    if cfg.source not in SOURCES:
        raise DataError(f"unknown data.source '{cfg.source}' (use builtin, hub, text, tsv, "
                        "csv, jsonl or parquet)")
    return SOURCES[cfg.source]


def read_split(cfg: DataConfig, name: str) -> datasets.Dataset | None:
    """The raw dataset of one split, with whatever columns the source has; None for an
    empty file."""
    source = source_of(cfg)
    for path in source.split_files(cfg, name):
        if not path.is_file():  # check_data_files checks this too, when there is one
            raise DataError(f"file not found: {path}")
    assert source.read is not None, "the built-in corpus is generated whole"
    return source.read(cfg, name)


def empty_split(*columns: str) -> datasets.Dataset:
    """A dataset without rows (typed, so that it maps and tokenizes like any other)."""
    import datasets

    columns = columns or ("src", "tgt")
    features = datasets.Features({c: datasets.Value("string") for c in columns})
    return datasets.Dataset.from_dict({c: [] for c in columns}, features=features)


def builtin_splits_of(cfg: DataConfig) -> dict[str, datasets.Dataset]:
    """The built-in grammar corpus' three splits (generated whole, in memory)."""
    import datasets

    from translator.data.builtin_corpus import builtin_splits

    n_eval = max(1, min(1000, cfg.builtin_size // 10))
    splits = builtin_splits(cfg.builtin_size, cfg.builtin_seed, n_eval, n_eval)
    return {k: datasets.Dataset.from_dict({"src": [s for s, _ in v], "tgt": [t for _, t in v]})
            for k, v in splits.items()}


def check_data_files(cfg: DataConfig) -> None:
    """Fail with one line naming the key (`data.dir`, `data.corpora[1].train`, ...) if a
    configured data folder or split file of any of the run's corpora is missing.

    Only what reads data calls this (training, evaluate --split): a trained run translates
    without its corpus, so loading its config must not look for it."""
    for part in corpus_parts(cfg):
        data, key = part.data, part.key
        source = source_of(data)
        if source.files is None or not data.dir:
            continue
        if not os.path.isdir(data.dir):  # False, not an OSError, for an impossible path
            raise ConfigError(f"{key}.dir: folder not found: {data.dir}")
        for split in SPLITS:
            stem = getattr(data, split)
            for path in source.split_files(data, stem) if stem else []:
                if not os.path.isfile(path):
                    raise ConfigError(f"{key}.{split}: file not found: {path}")
