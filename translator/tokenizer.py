"""Tokenizers: build from the train split, save into the run folder, reload, encode, decode.

This module is the one place that defines the special tokens and their ids; every other module
imports `PAD_ID`, `SOS_ID`, `EOS_ID`, `UNK_ID` from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from translator.config import TokenizerConfig
from translator.errors import TranslatorError

SPECIAL_TOKENS = ["[UNK]", "[PAD]", "[SOS]", "[EOS]"]
UNK_ID, PAD_ID, SOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))

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
    """One language's tokenizer: text <-> ids, with the special tokens at fixed ids."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        for i, name in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(name) != i:
                raise TranslatorError(f"tokenizer error: special token {name} must have id {i}")

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of the words of `text`, without [SOS]/[EOS]."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts at once (parallel inside the tokenizers library)."""
        texts = list(texts)
        try:
            encodings = self.tok.encode_batch(texts, add_special_tokens=False)
        except TypeError:
            # Lone surrogates (undecodable bytes in a command-line argument) are not valid
            # text for the Rust side: replace them rather than fail.
            texts = [_valid_text(t) for t in texts]
            encodings = self.tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """The token strings of `ids` (special tokens included), for display."""
        return [self.tok.id_to_token(int(i)) or "[UNK]" for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Natural text from ids: stops at [EOS], drops [SOS]/[PAD], keeps [UNK] visible."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i in (PAD_ID, SOS_ID):
                continue
            words.append(self.tok.id_to_token(i) or "[UNK]")
        return detokenize(words)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as the `tokenizers` library's JSON file."""
        self.tok.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Read a tokenizer written by `save`; a missing or broken file is a clear error."""
        path = Path(path)
        if not path.is_file():
            raise TranslatorError(f"tokenizer not found: {path}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # the library raises plain Exception subclasses from Rust
            raise TranslatorError(f"cannot read tokenizer {path}: {exc}") from None


def build_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> TextTokenizer:
    """Train a tokenizer on `texts` (the train split of one language)."""
    if cfg.kind != "word":
        raise TranslatorError(f"tokenizer.kind '{cfg.kind}' is not supported")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    norms = [normalizers.NFC()]
    if cfg.lowercase:
        norms.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norms)
    # Whitespace splits on \w+|[^\w\s]+ so punctuation becomes its own token.
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=cfg.vocab_size or 10_000_000,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok)

