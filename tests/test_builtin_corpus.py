"""The built-in grammar corpus: determinism, splits, one translation per sentence, and German
grammar checked on hand-built sentences."""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter

import pytest

from translator.data.builtin_corpus import (
    DEFAULT_SEED,
    MAX_WORDS,
    NP,
    PP,
    Clause,
    Rel,
    Sentence,
    builtin_splits,
    generate_pairs,
    iter_pairs,
    noun_phrase,
    render,
)

Pair = tuple[str, str]


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text)


@pytest.fixture(scope="module")
def default_splits() -> dict[str, list[Pair]]:
    return builtin_splits()


def _say(subj: str, verb: str, obj: str | None = None, **kw: object) -> tuple[str, str]:
    """Render a one-clause declarative sentence built from English phrases."""
    clause = Clause(noun_phrase(subj), verb, noun_phrase(obj) if obj else None, **kw)
    return render(Sentence(clause))


# --- corpus API --------------------------------------------------------------------------------


def test_generate_pairs_is_deterministic_per_seed() -> None:
    a = generate_pairs(500, seed=7)
    assert a == generate_pairs(500, seed=7)
    assert a != generate_pairs(500, seed=8)
    assert generate_pairs(200, seed=7) == a[:200]
    assert len(a) == 500 and len({en for en, _ in a}) == 500


def test_iter_pairs_is_deterministic_and_variant_changes_stream() -> None:
    first = list(itertools.islice(iter_pairs(3), 300))
    assert first == list(itertools.islice(iter_pairs(3), 300))
    assert first != list(itertools.islice(iter_pairs(3, variant=1), 300))
    assert first != list(itertools.islice(iter_pairs(4), 300))


def test_default_splits_sizes_and_disjointness(default_splits: dict[str, list[Pair]]) -> None:
    assert DEFAULT_SEED == 1234
    assert {k: len(v) for k, v in default_splits.items()} == {
        "train": 28000, "valid": 1000, "test": 1000}
    train_en = {en for en, _ in default_splits["train"]}
    assert len(train_en) == 28000
    held_out = [en for k in ("valid", "test") for en, _ in default_splits[k]]
    assert len(set(held_out)) == 2000
    assert not train_en & set(held_out)


def test_splits_are_deterministic_and_respect_sizes() -> None:
    a = builtin_splits(size=3000, seed=5, valid_size=200, test_size=100)
    assert [len(a[k]) for k in ("train", "valid", "test")] == [2700, 200, 100]
    assert a == builtin_splits(size=3000, seed=5, valid_size=200, test_size=100)


def test_invalid_requests_raise_value_error() -> None:
    with pytest.raises(ValueError):
        generate_pairs(-1)
    with pytest.raises(ValueError):
        generate_pairs(10**12)
    with pytest.raises(ValueError):
        builtin_splits(size=100, valid_size=60, test_size=40)
    with pytest.raises(ValueError):
        noun_phrase("the purple dog")


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    generate_pairs(30000, seed=99)
    assert time.perf_counter() - start < 5.0


# --- corpus properties -------------------------------------------------------------------------


def test_english_to_german_is_a_function() -> None:
    # Different trees must never print the same English with different German.
    seen: dict[str, str] = {}
    for variant in range(2):
        for en, de in itertools.islice(iter_pairs(11, variant), 25000):
            assert seen.setdefault(en, de) == de, (en, seen[en], de)


def test_length_cap_capitals_and_final_punctuation(
        default_splits: dict[str, list[Pair]]) -> None:
    lengths = []
    for pairs in default_splits.values():
        for en, de in pairs:
            for text in (en, de):
                n = len(text.split())
                assert 1 < n <= MAX_WORDS, text
                assert text[0].isupper() and text[-1] in ".?", text
                assert " ," not in text and " ." not in text and ",," not in text, text
            assert en[-1] == de[-1]
            lengths.append(len(en.split()))
    assert 7 <= sum(lengths) / len(lengths) <= 14


def test_vocabulary_is_small_and_held_out_words_are_seen_in_train(
        default_splits: dict[str, list[Pair]]) -> None:
    for side, (low, high) in ((0, (250, 700)), (1, (400, 1000))):
        counts = Counter(w for p in default_splits["train"] for w in _words(p[side]))
        assert low <= len(counts) <= high, len(counts)
        held_out = [w for k in ("valid", "test") for p in default_splits[k]
                    for w in _words(p[side])]
        unseen = [w for w in held_out if counts[w] < 2]
        # A word-level vocabulary with min frequency 2 misses almost nothing.
        assert len(unseen) <= len(held_out) // 2000, unseen


def test_corpus_mixes_the_sentence_forms(default_splits: dict[str, list[Pair]]) -> None:
    german = [de for _, de in default_splits["train"]]
    share = {name: sum(bool(re.search(pat, de)) for de in german) / len(german)
             for name, pat in {"question": r"\?$", "dass": r", dass ", "weil": r", weil ",
                               "wenn-first": r"^Wenn ", "relative": r", (der|die|das|den|dem) ",
                               "perfect": r" (gesehen|gegangen|gelesen|geschlafen)[.?,]"}.items()}
    for name, value in share.items():
        assert value > 0.005, (name, share)


# --- grammar, on hand-built sentences ----------------------------------------------------------


def test_simple_sentence_with_adjectives() -> None:
    assert _say("the big dog", "see", "the small cat") == (
        "The big dog sees the small cat.", "Der große Hund sieht die kleine Katze.")


@pytest.mark.parametrize("subj, obj, german", [
    ("a big dog", "a small cat", "Ein großer Hund sieht eine kleine Katze."),
    ("the big dogs", "an old horse", "Die großen Hunde sehen ein altes Pferd."),
    ("two big dogs", "the young man", "Zwei große Hunde sehen den jungen Mann."),
    ("my old father", "their red cars", "Mein alter Vater sieht ihre roten Autos."),
    ("the boy", "the boy", "Der Junge sieht den Jungen."),
])
def test_articles_and_adjective_endings(subj: str, obj: str, german: str) -> None:
    assert _say(subj, "see", obj)[1] == german


@pytest.mark.parametrize("prep, np, german", [
    ("with", "the dogs", "Der Mann schläft mit den Hunden."),
    ("with", "two small children", "Der Mann schläft mit zwei kleinen Kindern."),
    ("with", "a small cat", "Der Mann schläft mit einer kleinen Katze."),
    ("with", "him", "Der Mann schläft mit ihm."),
    ("in", "the garden", "Der Mann schläft im Garten."),
    ("in", "the kitchen", "Der Mann schläft in der Küche."),
    ("under", "a big tree", "Der Mann schläft unter einem großen Baum."),
    ("for", "the boy", "Der Mann schläft für den Jungen."),
    ("during", "the game", "Der Mann schläft während des Spiels."),
])
def test_prepositions_govern_case(prep: str, np: str, german: str) -> None:
    assert _say("the man", "sleep", pps=(PP(prep, noun_phrase(np)),))[1] == german


def test_directional_prepositions_take_the_accusative() -> None:
    en, de = _say("the dog", "run", pps=(PP("into", noun_phrase("the house")),))
    assert (en, de) == ("The dog runs into the house.", "Der Hund läuft ins Haus.")
    assert _say("the dog", "run", pps=(PP("to", noun_phrase("the school")),))[1] == (
        "Der Hund läuft zur Schule.")


def test_genitive() -> None:
    assert _say("the man", "see", "the house of the woman")[1] == (
        "Der Mann sieht das Haus der Frau.")
    assert _say("the man", "see", "a dog of the boy")[1] == "Der Mann sieht einen Hund des Jungen."
    assert _say("the house of my father", "be", pred="old") == (
        "The house of my father is old.", "Das Haus meines Vaters ist alt.")


def test_stem_changing_verbs_agree_with_the_subject() -> None:
    assert _say("the child", "read", "a book")[1] == "Das Kind liest ein Buch."
    assert _say("the children", "read", "a book")[1] == "Die Kinder lesen ein Buch."
    assert _say("I", "eat", "the cake") == ("I eat the cake.", "Ich esse den Kuchen.")
    assert _say("he", "give", "a ball", iobj=noun_phrase("the girl")) == (
        "He gives the girl a ball.", "Er gibt dem Mädchen einen Ball.")
    assert _say("we", "be", pred="tired") == ("We are tired.", "Wir sind müde.")


def test_dative_verbs_and_pronoun_order() -> None:
    assert _say("the woman", "help", "the children")[1] == "Die Frau hilft den Kindern."
    # Pronoun objects come before the adverb and before noun objects.
    assert _say("she", "give", "the book", iobj=noun_phrase("him"), to_dative=True,
                adv="today") == ("She gives the book to him today.",
                                 "Sie gibt ihm heute das Buch.")


def test_fronted_adverb_inverts_subject_and_verb() -> None:
    assert _say("the dog", "see", "the cat", adv="today", front=True) == (
        "Today the dog sees the cat.", "Heute sieht der Hund die Katze.")
    assert _say("the dog", "see", "the cat", adv="today") == (
        "The dog sees the cat today.", "Der Hund sieht heute die Katze.")


def test_perfect_modal_and_separable_verbs_put_parts_last() -> None:
    assert _say("the dog", "see", "the cat", tense="perf") == (
        "The dog has seen the cat.", "Der Hund hat die Katze gesehen.")
    assert _say("the children", "go", tense="perf", pps=(PP("to", noun_phrase("the man")),)) == (
        "The children have gone to the man.", "Die Kinder sind zum Mann gegangen.")
    assert _say("the dog", "see", "the cat", tense="can", adv="often") == (
        "The dog can often see the cat.", "Der Hund kann oft die Katze sehen.")
    assert _say("the mother", "pick_up", "the child") == (
        "The mother picks up the child.", "Die Mutter holt das Kind ab.")
    assert _say("the mother", "pick_up", "him", tense="want") == (
        "The mother wants to pick him up.", "Die Mutter will ihn abholen.")


def test_subordinate_clauses_put_the_verb_last() -> None:
    main = Clause(noun_phrase("the man"), "say")
    sub = Clause(noun_phrase("the dog"), "see", noun_phrase("the cat"))
    assert render(Sentence(main, conj="that", sub=sub)) == (
        "The man says that the dog sees the cat.",
        "Der Mann sagt, dass der Hund die Katze sieht.")
    sleeps = Clause(noun_phrase("the woman"), "sleep")
    en, de = render(Sentence(sleeps, conj="because", sub=sub))
    assert (en, de) == ("The woman sleeps because the dog sees the cat.",
                        "Die Frau schläft, weil der Hund die Katze sieht.")
    assert de.split()[-1] == "sieht."
    perfect = Clause(noun_phrase("the boy"), "get_up", tense="perf")
    assert render(Sentence(sleeps, conj="although", sub=perfect))[1] == (
        "Die Frau schläft, obwohl der Junge aufgestanden ist.")


def test_fronted_subordinate_clause_inverts_the_main_clause() -> None:
    main = Clause(noun_phrase("the man"), "read", noun_phrase("a book"))
    sub = Clause(noun_phrase("the dog"), "sleep")
    assert render(Sentence(main, conj="if", sub=sub, sub_first=True)) == (
        "If the dog sleeps, the man reads a book.",
        "Wenn der Hund schläft, liest der Mann ein Buch.")


def test_relative_clauses() -> None:
    dog = noun_phrase("the dog")
    subj = Clause(NP("man", rel=Rel("see", "subj", dog)), "sleep")
    assert render(Sentence(subj)) == ("The man who sees the dog sleeps.",
                                      "Der Mann, der den Hund sieht, schläft.")
    obj = Clause(noun_phrase("the woman"), "see",
                 NP("dog", rel=Rel("help", "obj", noun_phrase("the children"))), tense="perf")
    # The object's relative clause follows the participle.
    assert render(Sentence(obj)) == (
        "The woman has seen the dog that the children help.",
        "Die Frau hat den Hund gesehen, dem die Kinder helfen.")


def test_questions() -> None:
    clause = Clause(noun_phrase("the dog"), "see", noun_phrase("the cat"))
    assert render(Sentence(clause, mood="ynq")) == ("Does the dog see the cat?",
                                                     "Sieht der Hund die Katze?")
    gap = Clause(noun_phrase("the man"), "help", tense="perf")
    assert render(Sentence(gap, mood="wh", wh="whom")) == ("Who has the man helped?",
                                                           "Wem hat der Mann geholfen?")
    subj_gap = Clause(None, "read", noun_phrase("the letter"))
    assert render(Sentence(subj_gap, mood="wh", wh="who")) == ("Who reads the letter?",
                                                               "Wer liest den Brief?")
    where = Clause(noun_phrase("the children"), "live")
    assert render(Sentence(where, mood="wh", wh="where")) == ("Where do the children live?",
                                                              "Wo wohnen die Kinder?")
