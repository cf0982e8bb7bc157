"""Plain text handling shared by the CLI, evaluation, serving and the Translator: reading UTF-8
lines, cleaning control characters, cutting paragraphs into sentences."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from translator.errors import TranslatorError

# C0 and C1 control characters except the tab; they carry no words.
_CONTROL = {c: " " for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if c != 0x09}


def clean_text(text: str) -> str:
    """`text` with control characters (NUL, escape, bell, line breaks, ...) turned into spaces:
    they carry no words and would only reach the model as [UNK]s."""
    return text.translate(_CONTROL)


def split_lines(text: str) -> list[str]:
    """Lines of `text` split at \\n only (str.splitlines would also split at form feeds and
    Unicode separators, breaking line alignment); a final line end adds no empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def decode_lines(data: bytes, bad_line: Callable[[int], str]) -> list[str]:
    """`split_lines` of UTF-8 `data`; invalid UTF-8 is a TranslatorError whose message
    `bad_line(n)` gives for the 1-based number of the first bad line."""
    try:
        return split_lines(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TranslatorError(bad_line(data[:exc.start].count(b"\n") + 1)) from exc


def read_lines(path: Path, what: str = "file") -> list[str]:
    """The UTF-8 lines of a file without their line ends (only \\n and \\r\\n end a line); a
    missing or unreadable file or invalid UTF-8 is a one-line error (`what not found: path`)."""
    if not path.is_file():
        raise TranslatorError(f"{what} not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TranslatorError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_lines(data, lambda line: f"{path} line {line} is not valid UTF-8")


# A candidate sentence end: . ! ? ? (Arabic) or an ellipsis, then closing quotes or brackets,
# then white space. It is a real end unless the next word starts in lower case or the word
# before is an abbreviation or an initial.
_SENTENCE_END = re.compile(r"""(?<=[.!?؟…])(["'”’»)\]]*)\s+""")
_OPENERS = "\"'“‘«([¿¡"
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e no fig approx ca cf dept est inc ltd co corp "
    "mt ft jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k z.b bzw usw ggf vgl "
    "nr str".split())


def split_into_sentences(text: str) -> list[str]:
    """Cut a paragraph into sentences at . ! ? followed by white space and a word that does
    not start in lower case, except after common abbreviations ("Dr. Smith") and single
    initials ("J. Smith"). Text without such a boundary comes back whole (stripped).

    Linear in the text: each candidate end looks only at the word before it and a few
    characters after it (a server splits what any client sends)."""
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if not _next_word_may_start_sentence(text, m.end()):
            continue
        word_start = m.start()  # back to the white space before the word (or `start`)
        while word_start > start and not text[word_start - 1].isspace():
            word_start -= 1
        word = text[word_start:m.start()].lstrip(_OPENERS).rstrip(".").lower()
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            continue
        parts.append(text[start:m.end(1)].strip())  # closing quotes stay with the sentence
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _next_word_may_start_sentence(text: str, pos: int, look: int = 16) -> bool:
    """Whether the text after `pos`, past opening quotes and brackets (at most `look` of
    them), is neither empty nor starts in lower case."""
    end = min(len(text), pos + look)
    while pos < end and text[pos] in _OPENERS:
        pos += 1
    if pos == len(text):
        return False
    return not text[pos].islower()


def sentence_pieces(texts: Sequence[str], split: bool) -> tuple[list[str], list[int]]:
    """The units to translate (the sentences of each text when `split`) and, for each, the
    index of the text it came from."""
    pieces: list[str] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        for piece in (split_into_sentences(text) if split else [text]):
            pieces.append(piece)
            owner.append(i)
    return pieces, owner
