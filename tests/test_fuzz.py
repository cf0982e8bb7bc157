"""Fuzzing (issue 7, case 5): random Unicode through the tokenizers and `Translator.translate`,
random YAML documents and raw text through the config loader, random `--set` overrides, and
randomly damaged checkpoint files through the checkpoint loader. Nothing may escape but the
project's own error type, `TranslatorError`, and its messages stay on one line."""

from __future__ import annotations

import dataclasses
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from translator.checkpoint import FORMAT_VERSION, CheckpointError, atomic_save, load_checkpoint
from translator.config import SECTIONS, Config, config_from_dict, load_config
from translator.data.tokenizer import TextTokenizer, build_tokenizer
from translator.decode.translator import Translator
from translator.errors import TranslatorError

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

SENTENCES = [
    "The big dog sees the small cat.", "Der große Hund sieht die kleine Katze.",
    "A man reads a book, doesn't he?", "Die Frau schläft (ja!) im Haus; well-known.",
    'He said "hello" to me... 3.50 euros.',
]
# Any code point, lone surrogates included (an undecodable byte of a command-line argument
# arrives as one), control characters, unassigned ones and private use.
ANY_CHAR = st.characters(exclude_categories=())
WORDS = st.sampled_from("The the dog Hund cat . , ! ? \" ' ( ) - 🙂 مرحبا שלום \u202e \u200b "
                        "\x00 \x1b \t \n \r \ufeff \ufffd [UNK] [EOS] [PAD] ▁ \udce9".split(" "))
TEXT = st.one_of(st.text(ANY_CHAR, max_size=60),
                 st.lists(WORDS, max_size=20).map(" ".join),
                 st.lists(st.one_of(WORDS, st.text(ANY_CHAR, max_size=3)), max_size=12)
                 .map("".join))


def _one_line(exc: TranslatorError) -> None:
    assert len(str(exc).splitlines()) == 1, str(exc)


# ---------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module", params=["word", "bpe", "unigram"])
def tok(request: pytest.FixtureRequest) -> TextTokenizer:
    from translator.config import TokenizerConfig

    return build_tokenizer(SENTENCES * 3, TokenizerConfig(kind=request.param, vocab_size=120))


@FUZZ
@given(text=TEXT)
@example(text="Hund \udcff")
@example(text="\ud800")
def test_tokenizer_encode_decode_random_unicode(tok: TextTokenizer, text: str) -> None:
    try:
        ids = tok.encode(text)
    except TranslatorError as exc:
        _one_line(exc)
        return
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.encode_batch([text, "The dog."]) == [ids, tok.encode("The dog.")]
    assert isinstance(tok.decode(ids), str)


@FUZZ
@given(data=st.data())
def test_tokenizer_decodes_any_ids(tok: TextTokenizer, data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    assert isinstance(tok.decode(ids), str)
    assert isinstance(tok.decode(torch.tensor(ids, dtype=torch.long)), str)


# ---------------------------------------------------------------- translate


@pytest.fixture(scope="module")
def translator(trained_run: Path) -> Translator:
    """The session's tiny run (conftest), really trained for one short epoch on the built-in
    corpus."""
    torch.set_num_threads(1)
    return Translator.from_run(trained_run, device="cpu")


@FUZZ
@given(text=TEXT, split=st.booleans(), beam=st.sampled_from([1, 2]))
@example(text="\udce9 " * 300, split=False, beam=2)
@example(text="The dog. " * 100, split=True, beam=1)
def test_translate_random_unicode(translator: Translator, text: str, split: bool,
                                  beam: int) -> None:
    try:
        out = translator.translate([text], split_sentences=split, beam_size=beam)
    except TranslatorError as exc:
        _one_line(exc)
        return
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)
    assert "\n" not in out[0]


@settings(FUZZ, max_examples=20)
@given(texts=st.lists(TEXT, max_size=4))
def test_translate_nbest_random_unicode(translator: Translator, texts: list[str]) -> None:
    out = translator.translate_nbest(texts, n_best=2)
    assert len(out) == len(texts)
    assert all(isinstance(t, str) and isinstance(s, float) for hyps in out for t, s in hyps)


# ---------------------------------------------------------------- configs

FIELDS = {name: {f.name: f.type for f in dataclasses.fields(cls)}
          for name, cls in SECTIONS.items()}
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 600), st.integers(), st.just(10**30),
    st.just(10**400),  # beyond int64, beyond float
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1),
    st.text(max_size=12), st.sampled_from(["word", "bpe", "pre", "post", "builtin", "text",
                                           "tsv", "auto", "cpu", "bleu", "en", "de", "."]))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


@st.composite
def section(draw: st.DrawFn, name: str) -> dict[Any, Any]:
    keys = st.one_of(st.sampled_from(sorted(FIELDS[name])), st.text(max_size=10),
                     st.sampled_from(["d_modle", "lyers", "hedas", "beam"]))
    return draw(st.dictionaries(keys, VALUE, max_size=6))


@st.composite
def config_document(draw: st.DrawFn) -> Any:
    names = draw(st.lists(st.one_of(st.sampled_from(sorted(SECTIONS)), st.text(max_size=8)),
                          max_size=6, unique=True))
    doc = {name: draw(section(name) if name in SECTIONS and draw(st.booleans()) else VALUE)
           for name in names}
    return doc if draw(st.integers(0, 4)) else draw(VALUE)  # mostly a mapping of sections


YAML_BITS = st.sampled_from([
    "model:", "data:", "training:", "decoding:", "\n", "  ", "\t", "d_model: ", "heads: ", "- ",
    "? ", ": ", "[", "]", "{", "}", ",", "&a ", "*a", "*b", "!!python/object/apply:os.system ",
    "!!binary ", "!!set ", "!!float ", "!!int ", "!<tag:yaml.org,2002:str> ", "%YAML 1.2\n",
    "---\n", "...\n", "|\n", ">\n", "'", '"', "#", "\\x00", "\\ud800", "9" * 40, "1e999", ".nan",
    "9" * 400, "-.inf", "0x1F", "0o17", "1_000", "null", "~", "yes", "no", "2001-12-14", "<<: ",
    "=", "\ufeff", "\x85", "\u2028", "é", "🙂"])
YAML_TEXT = st.one_of(st.lists(YAML_BITS, max_size=30).map("".join), st.text(max_size=80))


def _load(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(path)
        except TranslatorError as exc:
            _one_line(exc)
            return
        assert isinstance(cfg, Config)


@settings(FUZZ, max_examples=150)
@given(doc=config_document())
@example(doc={"model": {"d_model": 10**400}})  # math.isfinite: OverflowError
@example(doc={"training": {"lr": 10**400}})     # float(): OverflowError
@example(doc={"data": {"source": "tsv", "dir": "d" * 5000}})  # is_dir: name too long
def test_config_loader_random_documents(doc: Any) -> None:
    _load(yaml.safe_dump(doc, allow_unicode=True))


@settings(FUZZ, max_examples=150)
@given(text=YAML_TEXT)
@example(text="[" * 3000)
@example(text="model:\n  d_model: " + "9" * 5000)
@example(text="!!float ")  # PyYAML: IndexError
@example(text="model:\n  layers: !!timestamp 2001-13-45")  # PyYAML: ValueError
def test_config_loader_random_text(text: str) -> None:
    _load(text)


@settings(FUZZ, max_examples=100)
@given(override=st.one_of(
    st.text(max_size=30),
    st.builds(lambda s, k, v: f"{s}.{k}={v}",
              st.one_of(st.sampled_from(sorted(SECTIONS)), st.text(max_size=5)),
              st.one_of(st.sampled_from(sorted({k for f in FIELDS.values() for k in f})),
                        st.text(max_size=5)),
              YAML_TEXT)))
def test_config_overrides_random(override: str) -> None:
    try:
        cfg = config_from_dict({}, overrides=[override])
    except TranslatorError as exc:
        _one_line(exc)
        return
    assert isinstance(cfg, Config)


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz_ckpt") / "c.pt"
    atomic_save({"format_version": FORMAT_VERSION, "step": 3, "config": {"model": {"d": 1}},
                 "model": {"w": torch.arange(24.0).reshape(4, 6), "b": torch.ones(3)},
                 "vocab": {"src": 10, "tgt": 12}}, path)
    return path.read_bytes()


def _load_damaged(data: bytes) -> None:
    """`load_checkpoint` of `data` gives a checkpoint or a one-line CheckpointError naming the
    file, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.pt"
        path.write_bytes(data)
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            _one_line(exc)
            assert str(path) in str(exc)
            return
        assert isinstance(ckpt, dict) and "model" in ckpt


def _pickle_span(checkpoint: bytes) -> tuple[int, int]:
    """Where the checkpoint zip holds its (uncompressed) data.pkl."""
    with zipfile.ZipFile(io.BytesIO(checkpoint)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
        start = checkpoint.index(z.read(info), info.header_offset)
        return start, start + info.file_size


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: "Detected pickle protocol 230"
@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_checkpoint_loader_randomly_damaged_files(checkpoint_bytes: bytes,
                                                  data: st.DataObject) -> None:
    """Random bytes changed anywhere, or inside the pickle the zip holds, and truncation."""
    n = len(checkpoint_bytes)
    lo, hi = data.draw(st.sampled_from([(0, n), _pickle_span(checkpoint_bytes)]))
    damaged = bytearray(checkpoint_bytes)
    for pos, byte in data.draw(st.lists(st.tuples(st.integers(lo, hi - 1),
                                                  st.integers(0, 255)), min_size=1, max_size=6)):
        damaged[pos] = byte
    _load_damaged(bytes(damaged[:data.draw(st.one_of(st.just(n), st.integers(0, n)))]))


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(FUZZ, max_examples=150)
@given(pickle_bytes=st.one_of(st.binary(max_size=64),
                              st.binary(max_size=40).map(lambda b: b"\x80\x02" + b + b".")))
@example(pickle_bytes=b"\x80\x02h\x05.")  # a memo entry that was never stored: KeyError
@example(pickle_bytes=b"\x80\x02.")        # STOP on an empty stack: IndexError
def test_checkpoint_loader_random_pickles(checkpoint_bytes: bytes, pickle_bytes: bytes) -> None:
    """A well-formed checkpoint zip whose data.pkl is random bytes or random pickle opcodes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(checkpoint_bytes)) as zin, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, pickle_bytes if info.filename.endswith("/data.pkl")
                          else zin.read(info))
    _load_damaged(out.getvalue())
