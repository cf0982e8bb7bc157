"""Turning a source's raw split into clean pairs: picking the two columns (`translation`
dicts, language-named or configured columns), stripping them and dropping pairs with an
empty side (every split), then the train-only filters (control characters, invalid text,
untranslated copies, duplicates; `filter_train`), so that valid and test stay exactly as
given. Every step is a batched `datasets.map` cached next to the corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from translator.config import DataConfig
from translator.data.sources import (
    DataError,
    bad_utf8,
    empty_split,
    fingerprint,
    quiet_datasets,
    source_of,
)
from translator.errors import first_line

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

log = logging.getLogger("translator")


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


def clean_split(ds: datasets.Dataset, cfg: DataConfig, name: str,
           split: str) -> tuple[datasets.Dataset, int]:
    """The split as columns `src`/`tgt`, stripped, empty sides dropped; and how many were."""
    import datasets
    import pyarrow as pa

    what = _describe(cfg, name)
    columns = _pick_columns(ds, cfg, what)
    if len(ds) == 0:  # map would return no columns at all
        return empty_split(), 0
    langs = (cfg.src_lang, cfg.tgt_lang)
    features = datasets.Features({"src": datasets.Value("string"),
                                  "tgt": datasets.Value("string")})
    try:
        with quiet_datasets():
            clean = ds.with_format("arrow").map(
                _clean_batch, batched=True, batch_size=10_000, with_indices=True,
                remove_columns=ds.column_names, features=features,
                fn_kwargs={"columns": columns, "langs": langs, "what": what},
                new_fingerprint=fingerprint(ds._fingerprint, "clean", columns, langs),
            ).with_format(None)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        # Readers that do not check UTF-8 (JSON) leave it to the first string operation.
        reasons = [r for r in map(bad_utf8, _text_files_of(cfg, name)) if r]
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


def filter_train(ds: datasets.Dataset, cfg: DataConfig) -> tuple[datasets.Dataset,
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
    with quiet_datasets():
        mapped = ds.with_format("arrow").map(
            _filter_batch, batched=True, batch_size=10_000, features=features,
            fn_kwargs=dict(zip(("clean_text", "drop_copies", "dedup"), options, strict=True)),
            new_fingerprint=fingerprint(ds._fingerprint, "filter-train", options),
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
            keep, new_fingerprint=fingerprint(mapped._fingerprint, "filter-select"))
        kept = kept.remove_columns(["_flag", "_normalised", "_key"],
                                   new_fingerprint=fingerprint(kept._fingerprint, "filter-cols"))
    return kept, counts
