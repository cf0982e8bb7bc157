"""Tokenizers: build from the train split, save into the run folder, reload, encode, decode.

Four kinds. Three from the `tokenizers` library: word-level (one id per word or punctuation
mark; decoding glues punctuation back by rule), and BPE and Unigram subwords, whose
pre-tokenizer turns spaces into ▁ (as SentencePiece does) and splits punctuation off, so that
decoding restores the original spacing: decode(encode(x)) == x for any text whose characters
were seen in training. The fourth, `sentencepiece`, is trained by the `sentencepiece` library
(BPE or Unigram, no punctuation split, so that the model file alone tokenizes as we do: what
Argos Translate needs) and converted into an equivalent `tokenizers` JSON, which everything
here uses; the SentencePiece model travels beside it (`<name>.model`) for the exports.

This module is the one place that defines the special tokens and their ids; every other module
imports `PAD_ID`, `SOS_ID`, `EOS_ID`, `UNK_ID` from here.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from translator.config import TokenizerConfig
from translator.errors import TranslatorError, first_line

SPECIAL_TOKENS = ["[UNK]", "[PAD]", "[SOS]", "[EOS]"]
UNK_ID, PAD_ID, SOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))
DEFAULT_SUBWORD_VOCAB = 8000
_META = "\u2581"  # ▁, SentencePiece's visible space
SPM_SUFFIX = ".model"
"""A sentencepiece-kind tokenizer file `x.json` has its SentencePiece model in `x.model`."""
SPM_INSTALL_HINT = ("tokenizer.kind sentencepiece needs the sentencepiece library: "
                    "pip install 'translator[spm]' (or sentencepiece)")

# Detokenization rules: the pre-tokenizer splits every punctuation mark off its word, so
# decoding must glue them back to give natural text ("Hund ." -> "Hund.").
_NO_SPACE_BEFORE = re.compile(r" ([.,!?;:%)\]}…])")
_NO_SPACE_AFTER = re.compile(r"([(\[{¿¡]) ")
_JOINERS = re.compile(r"(?<=\w) ([-'’/]) (?=\w)")


def detokenize(tokens: Sequence[str]) -> str:
    """Join word-level tokens into natural text: no space before punctuation, none in
    "well-known" or "don't", and straight double quotes attached to what they enclose."""
    words: list[str] = []
    open_quote = False
    for tok in tokens:
        if tok == '"':
            if open_quote and words:
                words[-1] += '"'
            else:
                words.append('"')
            open_quote = not open_quote
        elif words and words[-1] == '"' and open_quote:
            words[-1] += tok
        else:
            words.append(tok)
    text = " ".join(words)
    text = _NO_SPACE_BEFORE.sub(r"\1", text)
    text = _NO_SPACE_AFTER.sub(r"\1", text)
    return _JOINERS.sub(r"\1", text)


def _valid_text(text: object) -> str:
    return str(text).encode("utf-8", "replace").decode("utf-8")


class TextTokenizer:
    """One tokenizer (of one language, or shared by both): text <-> ids, with the special
    tokens at fixed ids."""

    def __init__(self, tokenizer: Tokenizer, spm_model: bytes | None = None) -> None:
        self.tok = tokenizer
        self.spm_model = spm_model
        """The SentencePiece model (serialized) of a sentencepiece-kind tokenizer, else None."""
        for i, name in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(name) != i:
                raise TranslatorError(f"tokenizer error: special token {name} must have id {i}")
        # Word-level tokenizers have no decoder (their pre-tokenizer drops the spaces), so
        # `detokenize` rebuilds the spacing; subword ones carry the Metaspace decoder.
        self._subword = tokenizer.decoder is not None
        self._fingerprint: str | None = None

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tok.get_vocab_size()

    @property
    def kind(self) -> str:
        """`word`, `bpe`, `unigram` or `sentencepiece`."""
        if self.spm_model is not None:
            return "sentencepiece"
        model = type(self.tok.model).__name__
        return {"WordLevel": "word", "BPE": "bpe", "Unigram": "unigram"}.get(model, model)

    @property
    def fingerprint(self) -> str:
        """A hash of the whole tokenizer (vocabulary, normalizer, ...): equal fingerprints give
        equal ids, so it keys the cache of tokenized corpora."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:16]
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        """Ids of the tokens of `text`, without [SOS]/[EOS]."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts at once (parallel inside the tokenizers library)."""
        texts = list(texts)
        # encode_batch_fast skips computing character offsets, which we never use.
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        try:
            encodings = encode(texts, add_special_tokens=False)
        except TypeError:
            # Lone surrogates (undecodable bytes in a command-line argument) are not valid
            # text for the Rust side: replace them rather than fail.
            texts = [_valid_text(t) for t in texts]
            encodings = encode(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """The token strings of `ids` (special tokens included), for display."""
        return [self.tok.id_to_token(int(i)) or "[UNK]" for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Natural text from ids: stops at [EOS], drops [SOS]/[PAD], keeps [UNK] visible."""
        kept = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, SOS_ID):
                kept.append(i)
        if self._subword:
            return self.tok.decode(kept, skip_special_tokens=False)
        return detokenize([self.tok.id_to_token(i) or "[UNK]" for i in kept])

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as the `tokenizers` library's JSON file (and a sentencepiece
        kind's model beside it, `spm_path(path)`), each file atomically; a failed write is
        one WriteError line naming the file."""
        from translator.files import atomic_write

        path = Path(path)
        if self.spm_model is not None:
            atomic_write(spm_path(path), self.spm_model)
        atomic_write(path, self.tok.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Read a tokenizer written by `save`; a missing or broken file is a clear error."""
        path = Path(path)
        if not path.is_file():
            raise TranslatorError(f"tokenizer not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises plain Exception subclasses from Rust
            raise TranslatorError(f"cannot read tokenizer {path}: {exc}") from exc
        model = spm_path(path)
        try:
            return cls(tok, model.read_bytes() if model.is_file() else None)
        except TranslatorError as exc:
            raise TranslatorError(f"cannot read tokenizer {path}: {exc}") from exc


def spm_path(path: str | Path) -> Path:
    """Where the SentencePiece model of the tokenizer file `path` lives."""
    return Path(path).with_suffix(SPM_SUFFIX)


def _empty_tokenizer(cfg: TokenizerConfig) -> tuple[Tokenizer, Any]:
    """An untrained tokenizer of `cfg.kind` with its normalizer, pre-tokenizer and decoder,
    and the trainer that fills its vocabulary."""
    subword_vocab = cfg.vocab_size or DEFAULT_SUBWORD_VOCAB
    if cfg.kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        # Whitespace splits on \w+|[^\w\s]+ so punctuation becomes its own token.
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=cfg.vocab_size or 10_000_000, min_frequency=cfg.min_frequency,
            special_tokens=SPECIAL_TOKENS, show_progress=False)
    elif cfg.kind in ("bpe", "unigram"):
        if cfg.kind == "bpe":
            tok = Tokenizer(models.BPE(unk_token="[UNK]"))
            trainer = trainers.BpeTrainer(
                vocab_size=subword_vocab, min_frequency=cfg.min_frequency,
                special_tokens=SPECIAL_TOKENS, show_progress=False)
        else:
            tok = Tokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(
                vocab_size=subword_vocab, special_tokens=SPECIAL_TOKENS, unk_token="[UNK]",
                show_progress=False)
        # Spaces become ▁ glued to the next word, then punctuation is split off: "dog." and
        # "dog" share the subword "▁dog", and the decoder turns ▁ back into spaces exactly.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ])
        tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    else:
        raise TranslatorError(f"tokenizer.kind '{cfg.kind}' is not supported "
                              "(use word, bpe, unigram or sentencepiece)")
    norms = [normalizers.NFKC() if cfg.nfkc else normalizers.NFC()]
    if cfg.lowercase:
        norms.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norms)
    return tok, trainer


def build_tokenizer(texts: Iterable[str] | Iterable[list[str]],
                    cfg: TokenizerConfig) -> TextTokenizer:
    """Train a tokenizer on `texts`: strings, or lists of strings (batches, faster)."""
    if cfg.kind == "sentencepiece":
        return _train_sentencepiece(texts, cfg)
    tok, trainer = _empty_tokenizer(cfg)
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    except TranslatorError:
        raise
    except Exception as exc:  # e.g. a Unigram vocab_size smaller than the alphabet
        first = first_line(exc)
        raise TranslatorError(f"cannot train the {cfg.kind} tokenizer: {first}") from exc
    return TextTokenizer(tok)


# -- sentencepiece -------------------------------------------------------------------------


def _normalization_rules(lowercase: bool) -> str:
    """A SentencePiece normalization rule table (TSV: source code points, target code points)
    giving NFC composition, and with `lowercase` lowercasing, as the other kinds' normalizers
    do: SentencePiece has no NFC rule of its own, and its model file must carry every rule, as
    Argos Translate normalizes with that file alone."""
    rules: dict[str, str] = {}
    for cp in range(0x110000):
        c = chr(cp)
        if unicodedata.category(c) in ("Cs", "Cn"):
            continue
        out = c.lower() if lowercase else c
        out = unicodedata.normalize("NFC", out)
        decomposed = unicodedata.normalize("NFD", c)
        for src in (c, decomposed):
            if src != out:
                rules[src] = out
    return "".join(" ".join(f"{ord(ch):X}" for ch in src) + "\t"
                   + " ".join(f"{ord(ch):X}" for ch in dst) + "\n"
                   for src, dst in rules.items())


def _flat(texts: Iterable[str] | Iterable[list[str]]) -> Iterable[str]:
    for item in texts:
        if isinstance(item, str):
            yield item
        else:
            yield from item


def _train_sentencepiece(texts: Iterable[str] | Iterable[list[str]],
                         cfg: TokenizerConfig) -> TextTokenizer:
    """Train a SentencePiece model (`cfg.model_type`) with our special tokens at our ids and
    convert it (`sentencepiece_tokenizer`)."""
    try:
        import sentencepiece as spm
    except ImportError as exc:
        raise TranslatorError(SPM_INSTALL_HINT) from exc
    import tempfile

    options: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.nfkc:
            # SentencePiece's own rules; nfkc_cf case-folds, its nearest to lowercasing.
            options["normalization_rule_name"] = "nfkc_cf" if cfg.lowercase else "nfkc"
        else:
            tsv = Path(tmp) / "rules.tsv"
            tsv.write_text(_normalization_rules(cfg.lowercase), encoding="utf-8")
            options["normalization_rule_tsv"] = str(tsv)
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(_flat(texts)), model_writer=out,
                model_type=cfg.model_type, vocab_size=cfg.vocab_size or DEFAULT_SUBWORD_VOCAB,
                # Every character seen becomes a piece, so seen text round-trips.
                character_coverage=1.0, hard_vocab_limit=False,
                unk_id=UNK_ID, pad_id=PAD_ID, bos_id=SOS_ID, eos_id=EOS_ID,
                unk_piece=SPECIAL_TOKENS[UNK_ID], pad_piece=SPECIAL_TOKENS[PAD_ID],
                bos_piece=SPECIAL_TOKENS[SOS_ID], eos_piece=SPECIAL_TOKENS[EOS_ID],
                # Keep spaces as they are: decode(encode(x)) == x, as for the other kinds.
                remove_extra_whitespaces=False,
                # The caller samples the train split already (tokenizer.train_sample).
                input_sentence_size=0, max_sentence_length=1 << 16,
                num_threads=os.cpu_count() or 1, minloglevel=2, **options)
        except (RuntimeError, ValueError, OSError) as exc:
            raise TranslatorError("cannot train the sentencepiece tokenizer: "
                                  f"{first_line(exc)}") from exc
    return sentencepiece_tokenizer(out.getvalue())


def sentencepiece_tokenizer(model: bytes) -> TextTokenizer:
    """The `tokenizers` equivalent of a SentencePiece model (the same pieces, ids, normalizer,
    dummy prefix and decoding; BPE merges ranked by piece score), as transformers' SpmConverter
    builds it, holding the model too."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if proto.trainer_spec.model_type == proto.trainer_spec.BPE:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
        ranked = sorted((-normal[t][0], normal[t][1], t[:k], t[k:])
                        for t in normal for k in range(1, len(t))
                        if t[:k] in normal and t[k:] in normal)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in ranked],
                                   unk_token=SPECIAL_TOKENS[UNK_ID], fuse_unk=True))
    else:
        tok = Tokenizer(models.Unigram(pieces, unk_id=UNK_ID))
    spec = proto.normalizer_spec
    norms: list[Any] = []
    if spec.precompiled_charsmap:
        norms.append(normalizers.Precompiled(spec.precompiled_charsmap))
    norms.append(normalizers.Replace(" ", _META))
    # Metaspace adds no dummy prefix to text that starts with ▁; SentencePiece does.
    norms.append(normalizers.Replace(Regex(r"\A" + _META), _META * 2))
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace(_META, " "), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPECIAL_TOKENS])
    return TextTokenizer(tok, model)


def build_tokenizers(src_texts: Iterable[str] | Iterable[list[str]],
                     tgt_texts: Iterable[str] | Iterable[list[str]],
                     cfg: TokenizerConfig) -> tuple[TextTokenizer, TextTokenizer]:
    """The source and target tokenizers: one per language, or, with `cfg.shared`, one joint
    tokenizer trained on both sides and returned twice."""
    if cfg.shared:
        joint = build_tokenizer(itertools.chain(src_texts, tgt_texts), cfg)
        return joint, joint
    return build_tokenizer(src_texts, cfg), build_tokenizer(tgt_texts, cfg)


def round_trip_stats(tok: TextTokenizer, texts: Sequence[str]) -> dict[str, float]:
    """How well `tok` represents `texts`: the share of lines with decode(encode(x)) == x, the
    same among lines without [UNK] (what detokenization alone loses), the share of lines with
    an [UNK], and the share of tokens that are [UNK]."""
    ids = tok.encode_batch(texts)
    exact = [tok.decode(i) == t for i, t in zip(ids, texts, strict=True)]
    clean = [ok for ok, i in zip(exact, ids, strict=True) if UNK_ID not in i]
    tokens = sum(len(i) for i in ids)
    n = max(len(texts), 1)
    return {"lines": len(texts), "round_trip": sum(exact) / n,
            "round_trip_without_unk": sum(clean) / max(len(clean), 1),
            "lines_with_unk": (len(texts) - len(clean)) / n,
            "unk_rate": sum(i.count(UNK_ID) for i in ids) / max(tokens, 1),
            "tokens_per_line": tokens / n}
