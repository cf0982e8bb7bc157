"""Reading parallel text: every `data.source` becomes, per split, one Arrow dataset of the
`datasets` library with two string columns, `src` and `tgt`, stripped, without empty sides.

Sources: the built-in grammar corpus (generated in memory), a Hugging Face hub dataset, two
line-aligned text files per split (Moses style), or one TSV, CSV, JSONL or Parquet file per
split. Files are converted to Arrow once, into the datasets cache, and memory-mapped from
there: a corpus of millions of pairs is never held as Python objects, and a second run
reuses the conversion. Splits not given as files are carved from train by ratio with
`data.split_seed`; then the train split alone is cleaned (control characters, invalid text,
untranslated copies, duplicates; see `_filter_train`), so that valid and test stay exactly as
given. `Corpus.record()` describes the outcome, which `check_split_record` keeps in the run
folder's splits.json and compares on resume.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from translator.config import SOURCE_KINDS, ConfigError, DataConfig, SourceKind
from translator.errors import TranslatorError, first_line

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

Pair = tuple[str, str]
Splits = Mapping[str, list[Pair]]
SPLITS = ("train", "valid", "test")
# Part of every cache key below: bump it when a transform here changes its output.
_CACHE_VERSION = "corpus-1"
_PANDAS_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
log = logging.getLogger("translator")


class DataError(TranslatorError):
    """Corpus files or datasets that cannot be read as parallel text."""

    prefix = "data error: "


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
    # Several corpora (data.corpora): per corpus, in train order, its label, weight and
    # cleaned train size; `corpora` is what splits.json shows of them (sizes, shares).
    parts: list[dict[str, Any]] = field(default_factory=list)
    temperature: float = 1.0
    corpora: dict[str, dict[str, Any]] = field(default_factory=dict)
    _hashes: dict[str, str] = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> datasets.Dataset:
        return self.splits[name]

    def record(self) -> dict[str, Any]:
        """What the run folder's splits.json holds: the seed, the carved ratios and the split
        sizes, so that a resume can check it sees the same split; with several corpora, each
        one's size and share of an epoch too."""
        record = {"split_seed": self.split_seed, "carved_ratios": dict(self.carved),
                  "sizes": {k: len(v) for k, v in self.splits.items()},
                  "hashes": self.hashes(),
                  "dropped_empty": dict(self.dropped), "train_filters": dict(self.filtered)}
        if self.parts:
            record["corpora"] = self.corpora or {
                p["label"]: {"size": p["size"], "weight": p["weight"]} for p in self.parts}
        return record

    def hashes(self) -> dict[str, str]:
        """A SHA-256 of each split's pairs (after cleaning and carving): what lets a moved
        corpus resume, since equal hashes mean the same pairs in the same order. Computed
        once per corpus (the record is written twice in a training start)."""
        if not self._hashes:
            self._hashes = {k: content_hash(v) for k, v in self.splits.items()}
        return dict(self._hashes)

    def mix(self, data: Any) -> Any:
        """The `CorpusMix` of a dataset tokenized from this corpus' train split (None for a
        single corpus): each corpus' pairs that survived the token-level filters, with its
        weight; logs and records each corpus' size and share of an epoch."""
        if not self.parts:
            return None
        from translator.data.dataset import CorpusMix

        rows = np.cumsum([0] + [p["size"] for p in self.parts])
        mix = CorpusMix([p["label"] for p in self.parts], [p["weight"] for p in self.parts],
                        np.searchsorted(data._keep, rows), self.temperature)
        self.corpora = {p["label"]: {"size": p["size"], **r}
                        for p, r in zip(self.parts, mix.record().values(), strict=True)}
        log.info("corpora, per epoch: %s", mix.summary())
        return mix

    def cleaning_summary(self) -> str:
        """The non-zero train filter counts, for log lines."""
        return cleaning_summary(self.filtered)


def content_hash(ds: datasets.Dataset, batch_size: int = 50_000) -> str:
    """SHA-256 of a split's (src, tgt) strings in order; streams the Arrow table in batches."""
    digest = hashlib.sha256()
    for batch in ds.with_format("arrow").iter(batch_size=batch_size):
        for column in ("src", "tgt"):
            digest.update("\0".join(batch.column(column).to_pylist()).encode("utf-8"))
            digest.update(b"\1")
    return digest.hexdigest()


def _fingerprint(*parts: object) -> str:
    """A datasets cache key from anything printable (previous fingerprint, options, ...)."""
    return hashlib.sha256("\x1f".join(map(str, (_CACHE_VERSION, *parts))).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
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


def _bad_utf8(path: Path) -> str | None:
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
        with _quiet_datasets():
            return datasets.load_dataset(builder, data_files={"train": str(path)},
                                         split="train", cache_dir=cache_dir,
                                         trust_remote_code=False, **options)
    except Exception as exc:  # datasets wraps the reader's error; find the bad line ourselves
        reason = None if builder == "parquet" else _bad_utf8(path)
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
                else _empty("text") for path in (src_path, tgt_path))
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
        raise DataError(str(_bad_utf8(path))) from exc
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
        with _quiet_datasets():
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
    corpus, which is generated whole (`_builtin`)."""
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


def _read_split(cfg: DataConfig, name: str) -> datasets.Dataset | None:
    """The raw dataset of one split, with whatever columns the source has; None for an
    empty file."""
    source = source_of(cfg)
    for path in source.split_files(cfg, name):
        if not path.is_file():  # check_data_files checks this too, when there is one
            raise DataError(f"file not found: {path}")
    assert source.read is not None, "the built-in corpus is generated whole"
    return source.read(cfg, name)


# ---------------------------------------------------------------- columns and cleaning


def _describe(cfg: DataConfig, name: str) -> str:
    """How messages name split `name`: its file(s), its hub dataset, or the built-in corpus."""
    source = source_of(cfg)
    if source.read is None:
        return "builtin corpus"
    if source.files is None:
        return f"dataset '{cfg.name}' split '{name}'"
    if not source.columns:  # two files, one per language
        return f"{Path(cfg.dir or '.') / name}.{{{cfg.src_lang},{cfg.tgt_lang}}}"
    return str(Path(cfg.dir or ".") / name)


def _pick_columns(ds: datasets.Dataset, cfg: DataConfig, what: str) -> tuple[str, str] | None:
    """The (source, target) column names, or None for a `translation` column of dicts."""
    source = source_of(cfg)
    if not source.columns:
        return "src", "tgt"
    columns = ds.column_names
    if cfg.src_column is not None or cfg.tgt_column is not None:
        pair = _configured_columns(columns, cfg, what)
    elif "translation" in columns:
        _check_translation_languages(ds.features["translation"], cfg, what)
        return None
    elif cfg.src_lang in columns and cfg.tgt_lang in columns:
        pair = (cfg.src_lang, cfg.tgt_lang)
    elif source.delimiter and len(columns) >= 2:
        pair = (columns[0], columns[1])
    else:
        raise DataError(f"{what} has neither a 'translation' column nor columns "
                        f"'{cfg.src_lang}' and '{cfg.tgt_lang}' (columns: "
                        f"{', '.join(columns) or 'none'}); set data.src_column and "
                        "data.tgt_column")
    _check_text_columns(ds, pair, what)
    return pair


def _configured_columns(columns: list[str], cfg: DataConfig, what: str) -> tuple[str, str]:
    """The columns data.src_column/tgt_column name. The side left empty defaults to its
    language's name, or in a headerless TSV/CSV (columns named "0", "1", ...) to column 0
    or 1."""
    indexed = isinstance(cfg.src_column, int) or isinstance(cfg.tgt_column, int)
    headerless = source_of(cfg).delimiter is not None and indexed
    defaults = (0, 1) if headerless else (cfg.src_lang, cfg.tgt_lang)
    src = defaults[0] if cfg.src_column is None else cfg.src_column
    tgt = defaults[1] if cfg.tgt_column is None else cfg.tgt_column
    return (_column(columns, src, "data.src_column", what),
            _column(columns, tgt, "data.tgt_column", what))


def _column(columns: list[str], spec: str | int, key: str, what: str) -> str:
    """The name of column `spec` (a name, or a 0-based index) of `columns`."""
    listed = ", ".join(columns) or "none"
    if isinstance(spec, int):
        if spec >= len(columns):
            raise DataError(f"{key}: {what} has no column {spec} (it has {len(columns)}: "
                            f"{listed})")
        return columns[spec]
    if spec not in columns:
        raise DataError(f"{key}: {what} has no column '{spec}' (columns: {listed})")
    return spec


def _check_translation_languages(feature: Any, cfg: DataConfig, what: str) -> None:
    """A `translation` struct lists its languages up front: both of the run's must be there.
    JSON rows with differing keys (datasets' Json feature) are checked row by row in
    _clean_batch."""
    langs = list(getattr(feature, "languages", None) or
                 (feature.keys() if isinstance(feature, dict) else []))
    for lang in (cfg.src_lang, cfg.tgt_lang) if langs else ():
        if lang not in langs:
            raise DataError(f"the translation column of {what} has no '{lang}' "
                            f"(languages: {', '.join(langs)})")


def _check_text_columns(ds: datasets.Dataset, pair: tuple[str, str], what: str) -> None:
    import datasets

    for col in pair:
        feature = ds.features[col]
        if not (isinstance(feature, datasets.Value) and "string" in feature.dtype):
            raise DataError(f"column '{col}' of {what} holds {feature}, not text")


def _translation_sides(col: pa.ChunkedArray, indices: list[int], langs: tuple[str, str],
                       what: str) -> list[Any]:
    """The two languages of a `translation` column: a struct (fast, in Arrow) or JSON text of
    dicts with differing keys; a row without one of them is an error that names it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_struct(col.type):
        sides = [pc.struct_field(col, [lang]) for lang in langs]
        rows = None
    else:
        rows = [json.loads(v) if isinstance(v, str) else v for v in col.to_pylist()]
        sides = [pa.array([(r or {}).get(lang) for r in rows], pa.string()) for lang in langs]
    for lang, side in zip(langs, sides, strict=True):
        missing = side.is_null()
        if pc.any(missing).as_py():
            k = int(pc.index(missing, True).as_py())
            row = rows[k] if rows is not None else col[k].as_py()
            present = ", ".join(key for key, v in (row or {}).items() if v is not None)
            raise DataError(f"row {indices[k]} (0-based) of {what} has no '{lang}' "
                            f"in its translation (languages: {present or 'none'})")
    return sides


def _clean_batch(table: pa.Table, indices: list[int], columns: tuple[str, str] | None,
                 langs: tuple[str, str], what: str) -> pa.Table:
    """Select the two sides, strip them, and drop pairs with an empty side."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if columns is None:
        sides = _translation_sides(table.column("translation"), indices, langs, what)
    else:
        sides = [table.column(c) for c in columns]
    src, tgt = (pc.utf8_trim_whitespace(pc.fill_null(s.cast(pa.string()), "")) for s in sides)
    keep = pc.and_(pc.greater(pc.utf8_length(src), 0), pc.greater(pc.utf8_length(tgt), 0))
    return pa.table({"src": src.filter(keep), "tgt": tgt.filter(keep)})


def _text_files_of(cfg: DataConfig, name: str) -> list[Path]:
    """The text files of split `name` (where a bad UTF-8 byte can be looked for)."""
    source = source_of(cfg)
    return source.split_files(cfg, name) if source.text else []


def _clean(ds: datasets.Dataset, cfg: DataConfig, name: str,
           split: str) -> tuple[datasets.Dataset, int]:
    """The split as columns `src`/`tgt`, stripped, empty sides dropped; and how many were."""
    import datasets
    import pyarrow as pa

    what = _describe(cfg, name)
    columns = _pick_columns(ds, cfg, what)
    if len(ds) == 0:  # map would return no columns at all
        return _empty(), 0
    langs = (cfg.src_lang, cfg.tgt_lang)
    features = datasets.Features({"src": datasets.Value("string"),
                                  "tgt": datasets.Value("string")})
    try:
        with _quiet_datasets():
            clean = ds.with_format("arrow").map(
                _clean_batch, batched=True, batch_size=10_000, with_indices=True,
                remove_columns=ds.column_names, features=features,
                fn_kwargs={"columns": columns, "langs": langs, "what": what},
                new_fingerprint=_fingerprint(ds._fingerprint, "clean", columns, langs),
            ).with_format(None)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        # Readers that do not check UTF-8 (JSON) leave it to the first string operation.
        reasons = [r for r in map(_bad_utf8, _text_files_of(cfg, name)) if r]
        raise DataError(f"{reasons[0] if reasons else first_line(exc, 300)}") from exc
    dropped = len(ds) - len(clean)
    if dropped:
        log.warning("%s: dropped %d of %d pairs with an empty side (%s)", split, dropped,
                    len(ds), what)
    return clean, dropped


# ---------------------------------------------------------------- train-only filters

# Keys of `Corpus.filtered` (and splits.json's train_filters) and how log lines name them.
FILTER_NAMES = {
    "controls_normalised": "with control characters made spaces",
    "invalid": "invalid (U+FFFD or nothing left)", "copies": "copies (source = target)",
    "duplicates": "duplicates", "ratio": "over data.max_ratio", "too_long": "over data.max_len",
}
# C0 controls (tab and newline included: inside one sentence they are debris too), DEL, C1.
_CONTROL = r"[\x00-\x1f\x7f-\x9f]"
# A run of whitespace holding at least one control character: it becomes one space.
_CONTROL_RUN = rf"[\s\x00-\x1f\x7f-\x9f]*{_CONTROL}[\s\x00-\x1f\x7f-\x9f]*"
_KEEP, _INVALID, _COPY = 0, 1, 2


def cleaning_summary(filtered: Mapping[str, int]) -> str:
    """'3 duplicates, 1 copies (source = target), ...': the non-zero counts, or 'nothing'."""
    return ", ".join(f"{n} {FILTER_NAMES.get(k, k)}" for k, n in filtered.items() if n) or "nothing"


def _pair_key(src: str, tgt: str) -> int:
    """A 64-bit hash of a pair, the same in every process (Python's `hash` of a string is
    salted per process, which would break exact resume); the length prefix keeps ("ab", "c")
    and ("a", "bc") apart. At 64 bits, 100M distinct pairs collide with odds of about 1/3000,
    and a collision only drops one pair."""
    digest = hashlib.blake2b(f"{len(src)}:{src}{tgt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _filter_batch(table: pa.Table, clean_text: bool, drop_copies: bool,
                  dedup: bool) -> pa.Table:
    """The batch with control characters normalised, plus per pair a verdict (`_flag`:
    keep, invalid, copy), whether it was normalised and its hash (`_key`, for dedup).
    Verdicts are columns, not a filter, so that the counts can be read back from the
    datasets cache, where a second run finds this map's result without calling it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    src, tgt = table.column("src"), table.column("tgt")
    n = table.num_rows
    flag = np.zeros(n, dtype=np.int8)
    normalised = np.zeros(n, dtype=bool)
    if clean_text:
        normalised = pc.or_(pc.match_substring_regex(src, _CONTROL),
                            pc.match_substring_regex(tgt, _CONTROL)).to_numpy(
                                zero_copy_only=False)
        src, tgt = (pc.utf8_trim_whitespace(pc.replace_substring_regex(side, _CONTROL_RUN, " "))
                    for side in (src, tgt))
        empty = pc.or_(pc.equal(pc.utf8_length(src), 0), pc.equal(pc.utf8_length(tgt), 0))
        replaced = pc.or_(pc.match_substring(src, "\ufffd"), pc.match_substring(tgt, "\ufffd"))
        bad = pc.or_(empty, replaced)
        flag[bad.to_numpy(zero_copy_only=False)] = _INVALID
    if drop_copies:
        copy = pc.equal(src, tgt).to_numpy(zero_copy_only=False)
        flag[copy & (flag == _KEEP)] = _COPY
    keys = (np.fromiter(map(_pair_key, src.to_pylist(), tgt.to_pylist()), dtype=np.uint64,
                        count=n) if dedup else np.zeros(n, dtype=np.uint64))
    return pa.table({"src": src, "tgt": tgt, "_flag": flag, "_normalised": normalised,
                     "_key": pa.array(keys, pa.uint64())})


def _filter_train(ds: datasets.Dataset, cfg: DataConfig) -> tuple[datasets.Dataset,
                                                                   dict[str, int]]:
    """The train split after the filters the config turns on, and how many pairs each one
    dropped (or, `controls_normalised`, changed). One batched map computes the verdicts;
    dedup keeps the first of each hash (numpy over 8 bytes a pair, not Python objects of the
    whole split); the survivors are an index selection of the map's result. All of it is a
    pure function of the split and the options, so a resume sees the same train split."""
    import datasets

    counts = {"controls_normalised": 0, "invalid": 0, "copies": 0, "duplicates": 0}
    options = (cfg.clean_text, cfg.drop_copies, cfg.dedup)
    if len(ds) == 0 or not any(options):
        return ds, counts
    features = datasets.Features({
        "src": datasets.Value("string"), "tgt": datasets.Value("string"),
        "_flag": datasets.Value("int8"), "_normalised": datasets.Value("bool"),
        "_key": datasets.Value("uint64")})
    with _quiet_datasets():
        mapped = ds.with_format("arrow").map(
            _filter_batch, batched=True, batch_size=10_000, features=features,
            fn_kwargs=dict(zip(("clean_text", "drop_copies", "dedup"), options, strict=True)),
            new_fingerprint=_fingerprint(ds._fingerprint, "filter-train", options),
        ).with_format(None)
        table = mapped.data  # the map's own Arrow table: no index mapping, in split order
        flag = table.column("_flag").to_numpy()
        counts["controls_normalised"] = int(table.column("_normalised").to_numpy().sum())
        counts["invalid"] = int((flag == _INVALID).sum())
        counts["copies"] = int((flag == _COPY).sum())
        keep = np.flatnonzero(flag == _KEEP)
        if cfg.dedup and len(keep):
            keys = table.column("_key").to_numpy()[keep]
            first = np.sort(np.unique(keys, return_index=True)[1])
            counts["duplicates"] = len(keep) - len(first)
            keep = keep[first]
        kept = mapped if len(keep) == len(mapped) else mapped.select(
            keep, new_fingerprint=_fingerprint(mapped._fingerprint, "filter-select"))
        kept = kept.remove_columns(["_flag", "_normalised", "_key"],
                                   new_fingerprint=_fingerprint(kept._fingerprint, "filter-cols"))
    return kept, counts


# ---------------------------------------------------------------- the corpus


def _empty(*columns: str) -> datasets.Dataset:
    """A dataset without rows (typed, so that it maps and tokenizes like any other)."""
    import datasets

    columns = columns or ("src", "tgt")
    features = datasets.Features({c: datasets.Value("string") for c in columns})
    return datasets.Dataset.from_dict({c: [] for c in columns}, features=features)


def _builtin(cfg: DataConfig) -> dict[str, datasets.Dataset]:
    import datasets

    from translator.data.builtin_corpus import builtin_splits

    n_eval = max(1, min(1000, cfg.builtin_size // 10))
    splits = builtin_splits(cfg.builtin_size, cfg.builtin_seed, n_eval, n_eval)
    return {k: datasets.Dataset.from_dict({"src": [s for s, _ in v], "tgt": [t for _, t in v]})
            for k, v in splits.items()}


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
        out[name] = train.select(idx, new_fingerprint=_fingerprint(
            train._fingerprint, "carve", name, seed, sizes))
    out["train"] = train.select(np.flatnonzero(keep), new_fingerprint=_fingerprint(
        train._fingerprint, "carve", "train", seed, sizes))
    return out


def check_data_files(cfg: DataConfig) -> None:
    """Fail with one line naming the key if a configured data folder or split file is missing.

    Only what reads data calls this (training, evaluate --split): a trained run translates
    without its corpus, so loading its config must not look for it."""
    source = source_of(cfg)
    if source.files is None or not cfg.dir:
        return
    if not os.path.isdir(cfg.dir):  # False, not an OSError, for an impossible path
        raise ConfigError(f"data.dir: folder not found: {cfg.dir}")
    for split in SPLITS:
        stem = getattr(cfg, split)
        for path in source.split_files(cfg, stem) if stem else []:
            if not os.path.isfile(path):
                raise ConfigError(f"data.{split}: file not found: {path}")


def load_corpus(cfg: DataConfig) -> Corpus:
    """All splits of the configured corpus: explicit ones read, missing ones carved from
    train by ratio with `split_seed` (or left empty). Empty sides are dropped and counted in
    every split; then the train split alone goes through the filters `_filter_train` applies
    (carving comes first, so the carved valid/test are never filtered either). With
    `data.corpora`, see `load_corpora`."""
    if cfg.corpora:
        return load_corpora(cfg)
    check_data_files(cfg)
    if source_of(cfg).read is None:
        raw = _builtin(cfg)
        names = {k: k for k in SPLITS}
    else:
        names = {k: getattr(cfg, k) for k in SPLITS if getattr(cfg, k)}
        raw = {k: _read_split(cfg, name) for k, name in names.items()}
    splits, dropped = {}, {}
    for split in list(raw):
        # Popped, so that each raw split is unmapped once cleaned: the pages the cleaning
        # read would otherwise stay resident (and count in RSS) through the train filters.
        ds = raw.pop(split)
        splits[split], dropped[split] = ((_empty(), 0) if ds is None
                                         else _clean(ds, cfg, names[split], split))
        del ds
    carved = {k: r for k, r in (("valid", cfg.valid_ratio), ("test", cfg.test_ratio))
              if k not in splits and r > 0}
    if carved:
        splits.update(_carve(splits["train"], carved, cfg.split_seed))
    for split in SPLITS:
        splits.setdefault(split, _empty())
        dropped.setdefault(split, 0)
    before = len(splits["train"])
    splits["train"], filtered = _filter_train(splits["train"], cfg)
    if len(splits["train"]) == 0:
        raise DataError("the train split is empty" + (
            f" after cleaning (of {before} pairs: {cleaning_summary(filtered)}; see "
            "data.clean_text, drop_copies, dedup)" if before else ""))
    corpus = Corpus(splits, dropped, carved, cfg.split_seed, filtered)
    if any(filtered.values()):
        log.info("train cleaning: %s", corpus.cleaning_summary())
    log.info("corpus: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return corpus


def load_corpora(cfg: DataConfig) -> Corpus:
    """Several corpora (`data.corpora`) as one: each read and cleaned as a corpus of its own
    (duplicates are dropped within a corpus, not across), their train splits concatenated in
    list order (memory-mapped, nothing copied), valid and test taken from the valid corpus
    (`data.valid_corpus`, else the first). `Corpus.parts` keeps each one's label, weight and
    train size, from which `Corpus.mix` makes the per-epoch draw."""
    import datasets

    from translator.config import corpus_data_config, corpus_labels, valid_corpus_index

    labels = corpus_labels(cfg)
    valid_at = valid_corpus_index(cfg)
    for i in range(len(cfg.corpora)):
        try:
            check_data_files(corpus_data_config(cfg, i))
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("config error: data.",
                                               f"config error: data.corpora[{i}].", 1)) from None
    loaded = []
    for i, label in enumerate(labels):
        log.info("corpus %s (data.corpora[%d]):", label, i)
        loaded.append(load_corpus(corpus_data_config(cfg, i)))
    own = loaded[valid_at]
    splits = {"train": datasets.concatenate_datasets([c["train"] for c in loaded]),
              "valid": own["valid"], "test": own["test"]}
    filtered: dict[str, int] = {}
    for c in loaded:
        for key, n in c.filtered.items():
            filtered[key] = filtered.get(key, 0) + n
    dropped = {"train": sum(c.dropped.get("train", 0) for c in loaded),
               "valid": own.dropped.get("valid", 0), "test": own.dropped.get("test", 0)}
    parts = [{"label": label, "weight": entry.weight, "size": len(c["train"])}
             for label, entry, c in zip(labels, cfg.corpora, loaded, strict=True)]
    log.info("corpora: %s; valid and test from %s", ", ".join(
        f"{p['label']} train {p['size']} (weight {p['weight']:g})" for p in parts),
        labels[valid_at])
    return Corpus(splits, dropped, own.carved, cfg.split_seed, filtered, parts,
                  cfg.sampling_temperature)


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
    with _quiet_datasets():
        return train.select(rows, new_fingerprint=_fingerprint(
            train._fingerprint, "tokenizer-sample", limit, seed))


def check_split_record(path: str | Path, corpus: Corpus, resume: bool,
                       moved: bool = False) -> None:
    """Write the corpus' split record to `path`; when resuming, first check that it matches
    the one the run started with, so training goes on over the same split. Training calls
    it twice: once after reading the corpus and again when the token-level filter counts are
    known; each time only the train filter counts present on both sides are compared (a
    record from before the filters existed has none). Content hashes are compared when both
    records have them; a `moved` corpus (data.dir changed) must have them to resume."""
    from translator.files import atomic_write

    path = Path(path)
    record = corpus.record()
    if resume and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {first_line(exc, 300)}") from exc
        if moved and not saved.get("hashes"):
            raise DataError(f"--resume: data.dir changed, and {path} predates content "
                            "hashes, so the new files cannot be shown to hold the same data; "
                            "resume from the original data.dir")
        saved_filters = saved.get("train_filters") or {}
        compared = {"split_seed": (saved.get("split_seed"), record["split_seed"]),
                    "sizes": (saved.get("sizes"), record["sizes"]),
                    # per-corpus train sizes (the shares follow from them and the config)
                    "corpora": ({k: v.get("size") for k, v in (saved.get("corpora") or
                                                               {}).items()},
                                {k: v.get("size") for k, v in (record.get("corpora") or
                                                               {}).items()}),
                    "train_filters": ({k: saved_filters[k] for k in record["train_filters"]
                                       if k in saved_filters},
                                      {k: v for k, v in record["train_filters"].items()
                                       if k in saved_filters})}
        if saved.get("hashes"):
            compared["content"] = (saved["hashes"], record["hashes"])
        for key, (old, new) in compared.items():
            if old != new:
                if key == "content":
                    differ = [k for k in new if old.get(k) != new[k]]
                    raise DataError(f"--resume: the {', '.join(differ)} split's pairs differ "
                                    f"from those {path} recorded (same sizes, other "
                                    "content); resume with the same data or start a new run")
                raise DataError(f"--resume: the corpus now gives {key} "
                                f"{new} but {path} recorded {old}; resume "
                                "with the same data or start a new run")
    atomic_write(path, json.dumps(record, indent=2) + "\n")


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
