"""Cutting texts into the units an engine translates, and putting the translations back: the
one place for sentence split, rejoin and the n-best join, used by every engine
(`translator.decode.engine`) and by the server (`translator.serve.service`).

A text is cut into lines (only when asked: the server keeps a text's line breaks; the engines
translate a text as one line, its control characters turned into spaces) and each line into
sentences (`split_into_sentences`, when asked). Rejoining puts sentences back together with a
space and lines with \\n; an empty translation leaves no double space.

The n-best join: variant k of a text joins the k-th hypothesis of each of its sentences (a
sentence with fewer gives its last), and its score is the sum of those hypotheses' scores, so
the variants stay sorted and a one-sentence text keeps its sentence's score.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from translator.data.text import split_into_sentences, split_lines

Hypotheses = Sequence[tuple[str, float]]
"""One unit's translations with their scores, best first ([] for a unit with nothing to
translate)."""


@dataclass
class Pieces:
    """Texts cut into units: `units` in order, and per text, per line, how many units it has."""

    units: list[str]
    layout: list[list[int]]

    def rejoin(self, results: Sequence[Hypotheses], width: int | None = None,
               ) -> list[list[tuple[str, float]]]:
        """Per text, its variants (text, score), best first, from each unit's hypotheses
        (`results`, in the order of `units`). `width`: how many variants each text has (default:
        as many as its unit with the most hypotheses; a text with no units then has none)."""
        it = iter(results)
        return [join_lines(counts, it, width) for counts in self.layout]


def cut(texts: Sequence[str], sentences: bool, lines: bool = False) -> Pieces:
    """The units to translate of each text: the text itself, or its lines (`lines`), each cut
    into sentences when `sentences`. A text (or line) of no sentences has no units."""
    units: list[str] = []
    layout: list[list[int]] = []
    for text in texts:
        counts = []
        for line in (split_lines(text) or [""]) if lines else [text]:
            parts = split_into_sentences(line) if sentences else [line]
            counts.append(len(parts))
            units.extend(parts)
        layout.append(counts)
    return Pieces(units, layout)


def join_lines(line_counts: Sequence[int], results: Iterator[Hypotheses],
               width: int | None = None) -> list[tuple[str, float]]:
    """One text's variants from its units' hypotheses, taken in order from `results` (one
    iterator may be shared by the texts of a request): `line_counts` units per line; variant k
    joins each unit's k-th hypothesis (its last when it has fewer), units with a space and
    lines with \\n, and sums their scores."""
    lines = [[next(results) for _ in range(count)] for count in line_counts]
    if width is None:
        width = max((len(r) for line in lines for r in line), default=0)
    variants = []
    for k in range(width):
        texts, score = [], 0.0
        for line in lines:
            picked = [r[min(k, len(r) - 1)] for r in line if r]
            texts.append(" ".join(t for t, _ in picked if t))
            score += sum(s for _, s in picked)
        variants.append(("\n".join(texts), score))
    return variants
