"""Tokenizers: build from the train split, save into the run folder, reload, encode, decode.

Three kinds, all from the `tokenizers` library: word-level (one id per word or punctuation
mark; decoding glues punctuation back by rule), and BPE and Unigram subwords, whose
pre-tokenizer turns spaces into ▁ (as SentencePiece does) and splits punctuation off, so that
decoding restores the original spacing: decode(encode(x)) == x for any text whose characters
were seen in training.

This module is the one place that defines the special tokens and their ids; every other module
imports `PAD_ID`, `SOS_ID`, `EOS_ID`, `UNK_ID` from here.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from translator.config import TokenizerConfig
from translator.errors import TranslatorError, first_line

SPECIAL_TOKENS = ["[UNK]", "[PAD]", "[SOS]", "[EOS]"]
UNK_ID, PAD_ID, SOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))
DEFAULT_SUBWORD_VOCAB = 8000
_META = "\u2581"  # ▁, SentencePiece's visible space

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

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
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
        """`word`, `bpe` or `unigram`."""
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
        """Write the tokenizer as the `tokenizers` library's JSON file (atomically; a failed
        write is one WriteError line naming the file)."""
        from translator.files import atomic_write

        atomic_write(path, self.tok.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Read a tokenizer written by `save`; a missing or broken file is a clear error."""
        path = Path(path)
        if not path.is_file():
            raise TranslatorError(f"tokenizer not found: {path}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # the library raises plain Exception subclasses from Rust
            raise TranslatorError(f"cannot read tokenizer {path}: {exc}") from exc


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
                              "(use word, bpe or unigram)")
    norms = [normalizers.NFKC() if cfg.nfkc else normalizers.NFC()]
    if cfg.lowercase:
        norms.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norms)
    return tok, trainer


def build_tokenizer(texts: Iterable[str] | Iterable[list[str]],
                    cfg: TokenizerConfig) -> TextTokenizer:
    """Train a tokenizer on `texts`: strings, or lists of strings (batches, faster)."""
    tok, trainer = _empty_tokenizer(cfg)
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    except TranslatorError:
        raise
    except Exception as exc:  # e.g. a Unigram vocab_size smaller than the alphabet
        first = first_line(exc)
        raise TranslatorError(f"cannot train the {cfg.kind} tokenizer: {first}") from exc
    return TextTokenizer(tok)


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
