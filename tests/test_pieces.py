"""Sentence split, rejoin and the n-best join (`translator.decode.pieces`), the one place the
engines and the server cut texts and put translations back, on hand-written hypotheses."""

from __future__ import annotations

from translator.decode.pieces import cut


def test_cut_by_lines_and_sentences_keeps_the_layout() -> None:
    pieces = cut(["Dogs run. Cats sit.\n\nMen read.", "", "Go."], sentences=True, lines=True)
    assert pieces.units == ["Dogs run.", "Cats sit.", "Men read.", "Go."]
    assert pieces.layout == [[2, 0, 1], [0], [1]]
    whole = cut(["Dogs run. Cats sit.", ""], sentences=False)
    assert whole.units == ["Dogs run. Cats sit.", ""] and whole.layout == [[1], [1]]


def test_rejoin_joins_sentences_with_a_space_and_lines_with_a_line_feed() -> None:
    pieces = cut(["Dogs run. Cats sit.\n\nMen read."], sentences=True, lines=True)
    results = [[("a", -1.0)], [("c", -2.0)], [("e", -0.5)]]
    assert pieces.rejoin(results) == [[("a c\n\ne", -3.5)]]


def test_nbest_join_takes_the_kth_of_each_sentence_or_its_last_and_sums_scores() -> None:
    pieces = cut(["One. Two. Three."], sentences=True)
    results = [[("1a", -1.0), ("1b", -2.0), ("1c", -3.0)],
               [("2a", -0.5)],  # fewer hypotheses: its last stands in
               [("3a", -0.1), ("3b", -0.2)]]
    assert pieces.rejoin(results) == [[("1a 2a 3a", -1.6), ("1b 2a 3b", -2.7),
                                       ("1c 2a 3b", -3.7)]]


def test_empty_units_leave_no_double_space_and_empty_texts_no_variants() -> None:
    pieces = cut(["One. Two. Three.", "  "], sentences=True)
    results = [[("x", -1.0)], [], [("", -0.3)], ]  # "Two." gave nothing, "Three." ""
    assert pieces.rejoin(results) == [[("x", -1.3)], []]
    # The server asks for a fixed number of variants: an empty text gives that many "".
    assert pieces.rejoin(results, width=2) == [[("x", -1.3), ("x", -1.3)], [("", 0.0)] * 2]
