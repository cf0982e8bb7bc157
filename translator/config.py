"""Typed run configuration: YAML -> dataclasses, `--set section.key=value` overrides, validation.

Every key a user can write lives in one of the dataclasses below, with its type, default and
meaning (the README's config reference is written from them). Loading is strict: an unknown
key, a wrong type or an impossible value raises `ConfigError` with a one-line message that
names the key, so nothing is silently ignored. Loading parses and validates values only:
files and folders are checked where they are used (`data.sources.check_data_files` for the data).
Every section is validated the same way, by `check_section`: a table of rules per key
(`RULES`), then the relations between a section's keys (`RELATIONS`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from translator.errors import TranslatorError, first_line


class ConfigError(TranslatorError):
    """A config file or override that cannot be used."""

    prefix = "config error: "


class _YamlLoader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 scalars: `1e-3` is a float (PyYAML's 1.1 rules read it as
    a string) and only true/false are booleans (1.1 reads `no`, Norwegian's code, as False)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def yaml_load(text: str) -> Any:
    """Parse YAML with the safe loader (no object construction) and YAML 1.2 scalars. Every
    failure is a `yaml.YAMLError`, also those PyYAML lets through on hostile input: an integer
    of more than 4300 digits (ValueError), `!!float ''` (IndexError), nesting deeper than
    Python's stack (RecursionError)."""
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above; the cause stays for --debug
        raise yaml.YAMLError(f"{type(exc).__name__}: {exc}") from exc


@dataclass
class DataConfig:
    """Where the parallel text comes from and how long a sentence may be."""

    source: Literal["builtin", "hub", "text", "tsv", "csv", "jsonl", "parquet"] = "builtin"
    """builtin: the project's grammar corpus; hub: a Hugging Face dataset; text: two
    line-aligned files per split, `<dir>/<split>.<src_lang>` and `<dir>/<split>.<tgt_lang>`
    (Moses style); tsv, csv, jsonl, parquet: one file per split, `<dir>/<split>`, holding both
    sides."""
    src_lang: str = "en"
    """Source language code: file suffix (text), key of a `translation` dict or column name
    (hub, jsonl, parquet, tsv/csv with a header)."""
    tgt_lang: str = "de"
    """Target language code, as `src_lang`."""
    name: str | None = None
    """hub: dataset name, e.g. Helsinki-NLP/opus_books (or a local dataset folder)."""
    subset: str | None = None
    """hub: dataset config name, e.g. en-it."""
    dir: str | None = None
    """text/tsv/csv/jsonl/parquet: folder holding the files."""
    train: str = "train"
    """Train split: hub split name, text file prefix (`train` for train.en + train.de), or file
    name (tsv/csv/jsonl/parquet, e.g. train.tsv)."""
    valid: str | None = None
    """Validation split (same meaning as `train`); empty: carved from train by `valid_ratio`."""
    test: str | None = None
    """Test split (same meaning as `train`); empty: carved from train by `test_ratio`."""
    src_column: str | int | None = None
    """Source column (not for text): a name (tsv/csv: the file's first line is then a header)
    or a 0-based index (tsv/csv: no header line); empty: a `translation` column of
    language-keyed dicts, else the column named `src_lang`, else (tsv/csv) column 0."""
    tgt_column: str | int | None = None
    """Target column, as `src_column` (empty: `translation`, else `tgt_lang`, else column 1)."""
    valid_ratio: float = 0.0
    """Share of train carved out as validation when `valid` is empty."""
    test_ratio: float = 0.0
    """Share of train carved out as test when `test` is empty."""
    split_seed: int = 1234
    """Seed of the shuffle that carves valid/test out of train (the run folder's splits.json
    records it with the split sizes)."""
    builtin_size: int = 30000
    """builtin: number of pairs generated (train + valid + test)."""
    builtin_seed: int = 1234
    """builtin: seed of the grammar generator (same seed, same corpus)."""
    max_len: int = 128
    """Longest sentence in tokens, [SOS]/[EOS] included; longer training pairs are dropped
    (and counted in the log and splits.json), never truncated."""
    clean_text: bool = True
    """Train only: control characters (C0, DEL, C1) become a space, and pairs with a U+FFFD
    replacement character (text once decoded from invalid UTF-8) are dropped."""
    drop_copies: bool = True
    """Train only: drop pairs whose source equals their target (untranslated copies)."""
    dedup: bool = True
    """Train only: drop exact duplicate pairs, keeping the first."""
    max_ratio: float = 3.0
    """Train only: drop pairs whose longer side has more than this many times the tokens of
    the shorter (counted by the run's tokenizers, specials excluded); 0: off."""
    cache_dir: str | None = None
    """Cache of the datasets library (files converted to Arrow, token ids), reused by later
    runs; empty: its default ($HF_DATASETS_CACHE or ~/.cache/huggingface/datasets)."""
    num_proc: int = 0
    """Processes that tokenize the train split (`datasets.map(num_proc=...)`); 0: 2 (or the
    core count, if smaller) for a train split of 200,000 pairs or more, else 1."""
    corpora: list[CorpusConfig] = field(default_factory=list)
    """Several corpora in one run: a list of mappings, each with its own source, files and
    `weight` (keys in the `data.corpora[]` table below). The other data keys (languages,
    max_len, cleaning, cache_dir, split_seed) apply to all of them; source, name, subset, dir,
    train/valid/test, columns, ratios and builtin_* must then be given per corpus. Each epoch
    draws from corpus i a number of pairs proportional to weight_i * size_i ** (1 /
    sampling_temperature), the total being the sum of the sizes (a corpus drawn more often
    than it has pairs repeats them); the log and splits.json show each one's size and share.
    Empty: the single corpus the keys above describe."""
    valid_corpus: str | None = None
    """With `corpora`: the label of the corpus whose valid and test splits (given or carved)
    are used; empty: the first corpus. Only that corpus may set valid, test and the ratios."""
    sampling_temperature: float = 1.0
    """With `corpora`: 1 draws in proportion to size x weight; larger values flatten the mix
    towards weight alone (a small corpus is drawn more often than its size), smaller ones
    sharpen it towards the largest."""


@dataclass
class CorpusConfig:
    """One entry of `data.corpora`: a corpus' own source keys (each with the default of the
    `data` key of the same name) and its sampling weight."""

    label: str | None = None
    """Name of the corpus in logs, splits.json and `data.valid_corpus`; empty: corpus1,
    corpus2, ... by position."""
    weight: float = 1.0
    """Sampling weight (> 0): the corpus' share of an epoch is proportional to weight times
    size (see `data.sampling_temperature`)."""
    source: Literal["builtin", "hub", "text", "tsv", "csv", "jsonl", "parquet"] = "builtin"
    """As `data.source`."""
    name: str | None = None
    """As `data.name` (hub)."""
    subset: str | None = None
    """As `data.subset` (hub)."""
    dir: str | None = None
    """As `data.dir`."""
    train: str = "train"
    """As `data.train`."""
    valid: str | None = None
    """As `data.valid`; the valid corpus only."""
    test: str | None = None
    """As `data.test`; the valid corpus only."""
    src_column: str | int | None = None
    """As `data.src_column`."""
    tgt_column: str | int | None = None
    """As `data.tgt_column`."""
    valid_ratio: float = 0.0
    """As `data.valid_ratio`; the valid corpus only."""
    test_ratio: float = 0.0
    """As `data.test_ratio`; the valid corpus only."""
    builtin_size: int = 30000
    """As `data.builtin_size`."""
    builtin_seed: int = 1234
    """As `data.builtin_seed`."""


@dataclass
class TokenizerConfig:
    """How text becomes token ids (built from the train split, saved in the run folder)."""

    kind: Literal["word", "bpe", "unigram", "sentencepiece"] = "word"
    """word: one id per word or punctuation mark (tokenizers' WordLevel); bpe: byte-pair
    encoding subwords; unigram: unigram-LM subwords (as SentencePiece). Subwords mark spaces
    with ▁ and split punctuation off, so decoding restores the original text. sentencepiece:
    a model trained by the sentencepiece library (`model_type`), punctuation not split off,
    exportable to Argos Translate / LibreTranslate (docs/tokenizers.md)."""
    model_type: Literal["bpe", "unigram"] = "unigram"
    """sentencepiece only: the SentencePiece model type."""
    vocab_size: int = 0
    """Vocabulary size (special tokens included): an upper bound for word (0: no bound), the
    target size for bpe/unigram/sentencepiece (0: 8000)."""
    shared: bool = False
    """One joint vocabulary for both languages (saved as both tokenizer files); otherwise one
    tokenizer per language."""
    min_frequency: int = 1
    """word: words seen fewer times in train become [UNK]; bpe: pairs seen fewer times are not
    merged."""
    lowercase: bool = False
    """Lowercase text before tokenizing (translations then come out lowercase)."""
    nfkc: bool = False
    """Unicode NFKC normalization (compatibility forms: ligatures, full-width letters, ...)
    instead of NFC; decoding then gives the normalized text."""
    train_sample: int = 2_000_000
    """Train the tokenizer on at most this many train pairs: when the train split is larger, a
    sample of blocks of consecutive pairs (up to 1000 each, at least 100 blocks) seeded by
    data.split_seed, said in the log; 0: always the whole split."""


@dataclass
class ModelConfig:
    """Transformer size. The defaults are the paper's base model."""

    d_model: int = 512
    """Width of embeddings and hidden states."""
    layers: int = 6
    """Encoder layers, and decoder layers too unless `decoder_layers` is set."""
    decoder_layers: int = 0
    """0: same as `layers`."""
    heads: int = 8
    """Attention heads; must divide d_model."""
    d_ff: int = 2048
    """Inner width of the feed-forward sublayers."""
    dropout: float = 0.1
    """The paper's P_drop: dropout on embedding + position sums and on each sublayer output."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities and FFN hidden units (not in the paper)."""
    norm: Literal["pre", "post"] = "pre"
    """post: LayerNorm after each residual add (the paper); pre: before each sublayer (trains
    more stably without long warmup)."""
    tie_embeddings: bool = True
    """Share the target embedding matrix with the output projection."""


@dataclass
class TrainingConfig:
    """Optimisation, validation and logging."""

    epochs: int = 10
    """Passes over the training data."""
    max_steps: int = 0
    """Stop after this many optimizer steps; 0: no limit."""
    max_minutes: float = 0.0
    """Stop after this much wall time (checkpoint and validate first); 0: no limit."""
    max_tokens: int = 4096
    """Token budget per batch (padding included, source or target side, whichever is longer);
    0: use `batch_size` sentences instead."""
    batch_size: int = 64
    """Sentences per batch when `max_tokens` is 0."""
    lr: float = 0.0005
    """Peak learning rate, reached at the end of warmup."""
    warmup_steps: int = 4000
    """Steps of linear learning-rate warmup from 0 to `lr`."""
    schedule: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    """After linear warmup: inverse_sqrt: lr * sqrt(warmup / step) (the paper's Noam schedule,
    peak-normalised); cosine: half a cosine down to 0 at the last step (max_steps, else
    epochs); constant."""
    accum_steps: int = 1
    """Micro-batches whose gradients are summed per optimizer step (the scheduler counts
    optimizer steps)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.98
    """Adam beta2 (the paper's 0.98)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); 0: plain Adam."""
    label_smoothing: float = 0.1
    """Label smoothing of the training cross-entropy (padding is always ignored)."""
    clip_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0: no clipping."""
    seed: int = 42
    """Seed of parameter init, dropout and batch shuffling."""
    device: str = "auto"
    """auto: CUDA if available, else MPS, else CPU; or cpu, cuda, cuda:1, mps."""
    threads: int = 0
    """CPU threads for torch; 0: torch's default (all cores)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype. auto: bf16 on CUDA GPUs that support it, else fp16 with a gradient
    scaler on CUDA, fp32 on CPU and MPS. bf16 also works on CPUs (fast with AMX)."""
    compile: bool = False
    """Run the training forward/backward through torch.compile."""
    dist_timeout: float = 300.0
    """Seconds to wait for all processes when a torchrun job starts."""
    log_every: int = 50
    """Every N steps: a progress line when stderr is not a terminal (a file, a pipe), and train
    loss (the mean over those N steps), learning rate and tokens/s to TensorBoard."""
    valid_every: int = 0
    """Validate every N steps; 0: at the end of each epoch."""
    valid_max_sentences: int = 0
    """Validate on N validation sentences drawn at random (seeded by data.split_seed, the same
    ones at every validation and on resume), not the first N: corpora sorted by length would
    otherwise be scored, and best.pt picked, on their shortest sentences; 0: all of them."""
    decode_batch_size: int = 128
    """Sentences per batch when greedy-decoding for validation."""
    examples: int = 3
    """Source/reference/prediction examples printed at each validation."""
    save_every: int = 0
    """Also write a checkpoint every N steps; 0: only at validations and epoch ends."""
    best_metric: Literal["bleu", "chrf", "loss"] = "bleu"
    """Validation metric that picks best.pt and drives early stopping."""
    patience: int = 0
    """Stop after this many validations without a better best_metric; 0: never."""
    max_bad_steps: int = 5
    """Stop after this many steps in a row with a non-finite loss or gradient (each is
    skipped)."""
    keep_last: int = 3
    """Periodic checkpoints kept on disk (best.pt and latest.pt besides); 0: keep all."""


@dataclass
class OutputConfig:
    """Where the run is written."""

    dir: str | None = None
    """Run folder; empty: runs/<config file name without .yaml>."""


# Each `decoding.dtype` name and the torch dtype it stands for (translator.device.DTYPES).
DECODING_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class DecodingConfig:
    """How translate, evaluate and attention search (validation in training is always greedy)."""

    beam_size: int = 4
    """Hypotheses kept per sentence; 1: greedy decoding (then no length penalty applies)."""
    length_penalty: float = 1.0
    """GNMT alpha: beam hypotheses rank by log-probability / ((5 + length) / 6) ** alpha; 0:
    raw log-probability (favours short outputs). 1 ranks by log-probability per token, so a
    hypothesis is not preferred for ending early; GNMT's 0.6 came out shorter and scored lower
    on Multi30k (length ratio 0.91-0.93 against 0.92-0.95, docs/benchmarks.md)."""
    max_len_a: float = 1.5
    """Output cap a * source length + b tokens ([EOS] included; the source length counts its
    [SOS] and [EOS])."""
    max_len_b: int = 10
    """See max_len_a."""
    dtype: str = "fp32"
    """Number format of the weights at translation time: fp32, bf16 (faster in batches on CPUs
    with AMX or AVX512-BF16, about 1.25x greedy and 1.5x beam, but slower at batch 1; also for
    recent GPUs; outputs may differ slightly) or fp16 (GPUs)."""

    def __post_init__(self) -> None:
        # Here and not only at load: Translator.decoding changes settings with
        # dataclasses.replace, which must reject what a config file may not hold.
        check_section("decoding", self)


@dataclass
class Config:
    """A whole run configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    name: str = "run"
    """Run name: the config file's stem. Not a YAML key."""

    @property
    def run_dir(self) -> Path:
        """The run folder: `output.dir`, or `runs/<name>`."""
        return Path(self.output.dir) if self.output.dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of the YAML keys (no `name`), safe for YAML and torch.save."""
        d = dataclasses.asdict(self)
        d.pop("name")
        return d


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "output": OutputConfig,
    "decoding": DecodingConfig,
}


def _suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# Values quoted in error messages are cut short: a YAML alias bomb (lists of aliases of lists)
# expands to billions of items when printed in full.
_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother, _short.maxlong = 2, 60, 60, 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 4


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


_NO = object()  # what a scalar check returns for a value of another type


def _as_int(key: str, value: Any) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        return _NO
    if -2**63 <= value < 2**63:  # what torch (seeds, sizes) can hold
        return value
    raise ConfigError(f"{key}: {_short.repr(value)} is out of range")


def _as_float(key: str, value: Any) -> Any:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return _NO
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return _NO


# Each scalar annotation's check: the accepted value, or _NO.
_SCALARS: dict[Any, typing.Callable[[str, Any], Any]] = {
    type(None): lambda key, value: None if value is None else _NO,
    bool: lambda key, value: value if isinstance(value, bool) else _NO,
    int: _as_int,
    float: _as_float,
    str: lambda key, value: value if isinstance(value, str) else _NO,
}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif tp in _SCALARS:
        accepted = _SCALARS[tp](key, value)
        if accepted is not _NO:
            return accepted
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_short.repr(value)}")


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of keys, "
                          f"got {_short.repr(raw)}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key '{name}.{key}'{_suggest(str(key), fields)}"
            )
        if (name, key) in _NESTED:  # lists of sub-sections, checked key by key
            values[key] = _NESTED[name, key](f"{name}.{key}", value)
            continue
        values[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**values)


def _build_corpora(key: str, value: Any) -> list[CorpusConfig]:
    """`data.corpora`: a list of mappings, each built as a section of its own, so that an
    unknown key or a wrong type is reported as `data.corpora[i].key`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of corpora (mappings of "
                          f"keys), got {_short.repr(value)}")
    return [entry if isinstance(entry, CorpusConfig) else
            _build_section(f"{key}[{i}]", CorpusConfig, entry) for i, entry in enumerate(value)]


_NESTED = {("data", "corpora"): _build_corpora}
# DataConfig keys that describe one corpus; with data.corpora they are given per corpus.
CORPUS_KEYS = tuple(f.name for f in dataclasses.fields(CorpusConfig)
                    if f.name not in ("label", "weight"))
_VALID_ONLY_KEYS = ("valid", "test", "valid_ratio", "test_ratio")


@dataclass(frozen=True)
class CorpusPart:
    """One corpus of a run, in the one shape that validation, reading and messages use: a
    run's corpora are always a list of these (`corpus_parts`), a `data` section without
    `corpora` being a list of one. The YAML keeps both ways of writing them."""

    key: str
    """How messages name its keys: `data` (a single corpus) or `data.corpora[i]`."""
    label: str
    """Its name in logs and splits.json (`corpus1`, ... unless given)."""
    weight: float
    """Its sampling weight (1 for a single corpus)."""
    data: DataConfig
    """Its own source keys with the run's shared ones (languages, lengths, cleaning, cache);
    `corpora` empty."""
    gives_valid: bool
    """Whether its valid and test splits are the run's (data.valid_corpus, else the first)."""


def corpus_labels(data: DataConfig) -> list[str]:
    """The labels of `data.corpora`, `corpus<i>` (1-based) where none is given."""
    return [c.label or f"corpus{i + 1}" for i, c in enumerate(data.corpora)]


def corpus_parts(data: DataConfig) -> list[CorpusPart]:
    """The corpora of a data section as `CorpusPart`s: one for a single corpus (the section
    itself), else one per `data.corpora` entry."""
    if not data.corpora:
        return [CorpusPart("data", "corpus1", 1.0, data, True)]
    labels = corpus_labels(data)
    valid_at = labels.index(data.valid_corpus) if data.valid_corpus in labels else 0
    return [CorpusPart(f"data.corpora[{i}]", label, entry.weight,
                       dataclasses.replace(data, corpora=[], valid_corpus=None,
                                           **{k: getattr(entry, k) for k in CORPUS_KEYS}),
                       i == valid_at)
            for i, (label, entry) in enumerate(zip(labels, data.corpora, strict=True))]


def valid_part(data: DataConfig) -> CorpusPart:
    """The corpus whose valid and test splits a run uses."""
    return next(p for p in corpus_parts(data) if p.gives_valid)


def _check_data(d: DataConfig) -> None:
    """The data section: its shared keys, the list of corpora, then each corpus under the key
    messages name it by (`CorpusPart.key`)."""
    check_section("data", d)
    parts = corpus_parts(d)
    if not d.corpora and d.valid_corpus is not None:
        raise ConfigError("data.valid_corpus: only used with data.corpora")
    if d.corpora:
        _check_corpus_list(d, [p.label for p in parts])
    valid_label = valid_part(d).label
    for part in parts:
        if d.corpora:
            _check_entry(part, valid_label)
        check_section(part.key, part.data, rules="corpus")


def _check_corpus_list(d: DataConfig, labels: list[str]) -> None:
    """With `data.corpora`: no per-corpus key at the top, labels unique, valid_corpus known."""
    defaults = DataConfig()
    for key in CORPUS_KEYS:
        if getattr(d, key) != getattr(defaults, key):
            raise ConfigError(f"data.{key}: not used with data.corpora; give it in each corpus")
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ConfigError(f"data.corpora[{i}].label: '{label}' is used by two corpora")
    if d.valid_corpus is not None and d.valid_corpus not in labels:
        raise ConfigError(f"data.valid_corpus: '{d.valid_corpus}' names no corpus (labels: "
                          f"{', '.join(labels)})")


def _check_entry(part: CorpusPart, valid_label: str) -> None:
    """A `data.corpora` entry's own keys: its weight, and no valid/test keys unless it is the
    valid corpus."""
    if not (math.isfinite(part.weight) and part.weight > 0):
        raise ConfigError(f"{part.key}.weight: must be > 0, got {part.weight}")
    defaults = DataConfig()
    for name in () if part.gives_valid else _VALID_ONLY_KEYS:
        if getattr(part.data, name) != getattr(defaults, name):
            raise ConfigError(f"{part.key}.{name}: only the valid corpus ('{valid_label}', "
                              "see data.valid_corpus) gives valid and test splits")


@dataclass(frozen=True)
class SourceKind:
    """What config validation knows of one `data.source`: the facts its keys are checked
    against. The readers' table (`translator.data.sources.SOURCES`) builds on this one, so
    that config.py needs nothing from the data package."""

    needs: tuple[str, str] = ("dir", "")
    """The data key this source cannot do without, and an example for the error message."""
    columns: bool = True
    """Whether data.src_column/tgt_column apply (text and builtin name their own)."""
    delimited: bool = False
    """TSV/CSV: a file that may have no header line (columns then named by index)."""


SOURCE_KINDS: dict[str, SourceKind] = {
    "builtin": SourceKind(needs=("", ""), columns=False),
    "hub": SourceKind(needs=("name", " (e.g. Helsinki-NLP/opus_books)")),
    "text": SourceKind(columns=False),
    "tsv": SourceKind(delimited=True),
    "csv": SourceKind(delimited=True),
    "jsonl": SourceKind(),
    "parquet": SourceKind(),
}
"""Every `data.source` (the keys are DataConfig.source's choices)."""


# -- validation: one rule table per section, then the relations between keys ----------------

Rule = tuple[typing.Callable[[Any], bool], str]
"""A test a key's value must pass, and how the error message says what it must be."""

# NaN fails every comparison, so it fails every rule below.
_POSITIVE: Rule = (lambda v: math.isfinite(v) and v > 0, "> 0")
_NON_NEGATIVE: Rule = (lambda v: math.isfinite(v) and v >= 0, ">= 0")
_FINITE_NON_NEGATIVE: Rule = (lambda v: 0.0 <= v < math.inf, "finite and >= 0")
_AT_LEAST_1: Rule = (lambda v: v >= 1, ">= 1")
_HALF_OPEN_UNIT: Rule = (lambda v: 0.0 <= v < 1.0, "in [0, 1)")
_OPEN_UNIT: Rule = (lambda v: 0.0 < v < 1.0, "in (0, 1)")

RULES: dict[str, dict[str, Rule]] = {
    "data": {
        "max_len": _POSITIVE,
        "max_ratio": (lambda v: v == 0 or 1.0 <= v < math.inf, "0 (off) or >= 1"),
        "num_proc": _NON_NEGATIVE, "sampling_temperature": _POSITIVE,
    },
    # One corpus' keys (CORPUS_KEYS), checked per corpus under its key (`_check_data`).
    "corpus": {
        "builtin_size": _POSITIVE,
        "valid_ratio": _HALF_OPEN_UNIT, "test_ratio": _HALF_OPEN_UNIT,
    },
    "tokenizer": {"vocab_size": _NON_NEGATIVE, "min_frequency": _AT_LEAST_1,
                  "train_sample": _NON_NEGATIVE},
    "model": {
        "d_model": _POSITIVE, "layers": _POSITIVE, "heads": _POSITIVE, "d_ff": _POSITIVE,
        "decoder_layers": _NON_NEGATIVE,
        "dropout": _HALF_OPEN_UNIT, "attention_dropout": _HALF_OPEN_UNIT,
    },
    "training": {
        **dict.fromkeys(("epochs", "batch_size", "lr", "decode_batch_size", "log_every",
                         "accum_steps", "dist_timeout", "max_bad_steps"), _POSITIVE),
        **dict.fromkeys(("max_steps", "max_minutes", "max_tokens", "warmup_steps",
                         "weight_decay", "clip_grad_norm", "threads", "valid_every",
                         "valid_max_sentences", "examples", "keep_last", "save_every",
                         "patience"), _NON_NEGATIVE),
        "label_smoothing": _HALF_OPEN_UNIT,
        "adam_beta1": _OPEN_UNIT, "adam_beta2": _OPEN_UNIT,
    },
    "decoding": {
        "dtype": (lambda v: v in DECODING_DTYPES, f"one of {', '.join(DECODING_DTYPES)}"),
        "beam_size": _AT_LEAST_1,
        "length_penalty": _FINITE_NON_NEGATIVE, "max_len_a": _FINITE_NON_NEGATIVE,
        "max_len_b": (lambda v: v >= 0, ">= 0"),
    },
}

Problem = tuple[str, str]
"""A key (within its section) and what is wrong with it."""


def _data_relations(d: DataConfig) -> typing.Iterator[Problem]:
    if d.src_lang == d.tgt_lang:
        yield "tgt_lang", f"must differ from data.src_lang ('{d.src_lang}')"


def _corpus_relations(d: DataConfig) -> typing.Iterator[Problem]:
    if d.valid_ratio + d.test_ratio >= 1.0:
        yield "valid_ratio", "valid_ratio + test_ratio must be < 1"
    kind = SOURCE_KINDS[d.source]
    needed, example = kind.needs
    if needed and not getattr(d, needed):
        yield needed, f"required when data.source is '{d.source}'{example}"
    yield from _column_relations(d, kind.columns, kind.delimited)


def _column_relations(d: DataConfig, takes_columns: bool,
                      delimited: bool) -> typing.Iterator[Problem]:
    for key in ("src_column", "tgt_column"):
        value = getattr(d, key)
        if isinstance(value, int) and value < 0:
            yield key, f"a column index must be >= 0, got {value}"
        if value is not None and not takes_columns:
            yield key, f"not used by data.source '{d.source}'; leave it empty"
    if d.src_column is not None and d.src_column == d.tgt_column:
        yield "tgt_column", f"must differ from data.src_column ({d.src_column!r})"
    if (delimited and None not in (d.src_column, d.tgt_column)
            and isinstance(d.src_column, str) != isinstance(d.tgt_column, str)):
        # A name says "the first line is a header", an index says "no header": both or neither.
        yield "tgt_column", ("give both columns as names (the file has a header line) or "
                             "both as 0-based indices (it has none), got "
                             f"{d.src_column!r} and {d.tgt_column!r}")


def _model_relations(m: ModelConfig) -> typing.Iterator[Problem]:
    if m.d_model % m.heads:
        yield "heads", f"d_model ({m.d_model}) must be divisible by heads ({m.heads})"
    elif (m.d_model // m.heads) % 2:
        yield "heads", "d_model / heads must be even"


def _decoding_relations(dec: DecodingConfig) -> typing.Iterator[Problem]:
    if dec.max_len_a == 0 and dec.max_len_b == 0:
        yield "max_len_b", "max_len_a and max_len_b cannot both be 0"


RELATIONS: dict[str, typing.Callable[[Any], typing.Iterator[Problem]]] = {
    "data": _data_relations,
    "corpus": _corpus_relations,
    "model": _model_relations,
    "decoding": _decoding_relations,
}


def check_section(name: str, section: Any, rules: str | None = None) -> None:
    """Raise a one-line ConfigError naming the key (`name.key`) for the first value of config
    section `name` that breaks its rule (`RULES`) or a relation between its keys
    (`RELATIONS`); `rules` picks the tables when they are not the section's own (a corpus)."""
    rules = rules or name
    for key, (ok, rule) in RULES.get(rules, {}).items():
        value = getattr(section, key)
        if not ok(value):
            raise ConfigError(f"{name}.{key}: must be {rule}, got {value!r}")
    relations = RELATIONS.get(rules)
    problem = next(relations(section), None) if relations else None
    if problem is not None:
        raise ConfigError(f"{name}.{problem[0]}: {problem[1]}")


def _validate(cfg: Config) -> None:
    """Every section's checks, then those across sections."""
    for name in SECTIONS:
        if name == "data":
            _check_data(cfg.data)
        else:
            check_section(name, getattr(cfg, name))
    if cfg.training.max_tokens and cfg.training.max_tokens < cfg.data.max_len:
        raise ConfigError(f"training.max_tokens: must be 0 or >= data.max_len "
                          f"({cfg.data.max_len}) so that the longest sentence fits in a batch")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `section.key=value` into its parts; the value is read as YAML (`3`, `true`, `null`)."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected section.key=value")
    dotted, _, raw_value = text.partition("=")
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set '{text}': expected section.key=value")
    try:
        value = yaml_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return parts[0], parts[1], value


def config_from_dict(raw: Any, name: str = "run", overrides: typing.Sequence[str] = ()) -> Config:
    """Build and validate a `Config` from a parsed YAML document plus `--set` overrides."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the file must hold a mapping of sections "
                          f"({', '.join(SECTIONS)}), got {type(raw).__name__}")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"unknown section '{section}' in --set "
                              f"'{text}'{_suggest(section, SECTIONS)}")
        current = raw.get(section)
        if current is None:
            current = raw[section] = {}
        if not isinstance(current, dict):
            raise ConfigError(f"{section}: expected a mapping of keys")
        current[key] = value
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(f"unknown section '{section}'"
                              f"{_suggest(str(section), SECTIONS)}")
    sections = {s: _build_section(s, cls, raw.get(s)) for s, cls in SECTIONS.items()}
    cfg = Config(name=name, **sections)
    _validate(cfg)
    if cfg.data.dir:
        # Absolute, so that a run's saved config still finds its data from any folder.
        cfg.data.dir = str(Path(cfg.data.dir).expanduser().resolve())
    for entry in cfg.data.corpora:
        if entry.dir:
            entry.dir = str(Path(entry.dir).expanduser().resolve())
    return cfg


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (safe loader only), apply overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}")
    try:
        raw = yaml_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML{_yaml_problem(exc)}")\
            from exc
    if raw is None and not overrides:
        # Nothing but blank lines or comments: every default together is the paper's base
        # model on the built-in corpus, hours of training nobody asked for.
        raise ConfigError(f"{path} is empty; with no settings it would train "
                          "the default base Transformer (d_model 512, 6+6 layers, about 45M "
                          "parameters) on the built-in corpus; give at least one section "
                          "(configs/toy.yaml is a small start)")
    return config_from_dict(raw, name=path.stem, overrides=overrides)


def _yaml_problem(exc: Exception) -> str:
    """": <what> at line L, column C" for a YAML syntax error (1-based, as editors count), with
    the construct it was inside when that started elsewhere; else the error's first line."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or not problem:
        return f": {first_line(exc)}"
    text = f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        where = (f" at line {start.line + 1}, column {start.column + 1}"
                 if start is not None and (start.line, start.column) != (mark.line, mark.column)
                 else "")
        text += f" ({context}{where})"
    return text


RUN_CONFIG_HEADER = (
    "# The config this run was trained with. output.dir is left empty: the run is the folder\n"
    "# holding this file, wherever it is moved or copied. Continue it with\n"
    "#   translator train --run <this folder> --resume\n")


def save_run_config(cfg: Config, path: str | Path) -> None:
    """Write a run folder's own config.yaml: the resolved config without `output.dir`, so that
    the file names no path inside the run (a moved or copied run stays self-contained)."""
    d = cfg.to_dict()
    d["output"]["dir"] = None
    text = RUN_CONFIG_HEADER + yaml.safe_dump(d, sort_keys=False)
    from translator.files import atomic_write  # a full disk leaves the old file whole

    atomic_write(path, text)


# Keys that a resumed run may change: when and how long it trains, validates, logs and saves,
# and how it decodes afterwards; nothing that changes what a step computes.
RESUME_SAFE_KEYS = frozenset({
    "training.epochs", "training.max_steps", "training.max_minutes", "training.patience",
    "training.valid_every", "training.valid_max_sentences", "training.decode_batch_size",
    "training.examples", "training.save_every", "training.keep_last", "training.log_every",
    "training.threads", "training.device", "training.dist_timeout", "training.max_bad_steps",
    "training.compile", "data.num_proc", "data.cache_dir",
})


def config_diff(a: Config, b: Config) -> list[str]:
    """The dotted keys whose values differ between two configs, in file order."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{section}.{key}" for section in da for key in da[section]
            if da[section][key] != db[section][key]]


# Model keys that fine-tuning may change: they change no parameter's shape (domain adaptation
# often raises dropout on a small corpus).
INIT_FREE_KEYS = frozenset({"model.dropout", "model.attention_dropout"})


def init_changes(base: Config, new: Config) -> list[str]:
    """Keys in which a fine-tuning config differs from its base run's where it must not: the
    tokenizer and model sections (the base's vocabulary and weights are kept) and the
    language pair (the tokenizer files are named by language)."""
    return [k for k in config_diff(base, new)
            if (k.split(".")[0] in ("tokenizer", "model") and k not in INIT_FREE_KEYS)
            or k in ("data.src_lang", "data.tgt_lang")]
