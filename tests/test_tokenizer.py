"""Tokenizers (word, BPE, Unigram): special ids, lossless round trips, [UNK], decode rules,
shared vocabularies, normalization, save/load, odd input."""

from __future__ import annotations

from pathlib import Path

import pytest

from translator.config import TokenizerConfig
from translator.data.tokenizer import (
    EOS_ID,
    PAD_ID,
    SOS_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    TextTokenizer,
    build_tokenizer,
    build_tokenizers,
    detokenize,
    round_trip_stats,
)
from translator.errors import TranslatorError

SENTENCES = [
    "Der Hund sieht die Katze, weil sie schläft.",
    "Is it well-known?",
    'He said "hello" to me.',
    "The cat (a small one) sleeps; the dog doesn't!",
]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return build_tokenizer(SENTENCES, TokenizerConfig())


def test_special_tokens_have_fixed_ids(tok: TextTokenizer) -> None:
    assert (UNK_ID, PAD_ID, SOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert SPECIAL_TOKENS == ["[UNK]", "[PAD]", "[SOS]", "[EOS]"]
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.tok.token_to_id(name) == i
    assert tok.tokens([UNK_ID, PAD_ID, SOS_ID, EOS_ID]) == SPECIAL_TOKENS


def test_vocab_is_specials_plus_words(tok: TextTokenizer) -> None:
    words = {"Der", "Hund", ",", ".", "well", "-", "known", '"', "hello", "doesn", "'", "t"}
    vocab = set(tok.tok.get_vocab())
    assert words <= vocab
    assert tok.vocab_size == len(vocab)
    # every word is its own id, never a special one
    assert all(i > EOS_ID for i in tok.encode("Der Hund sieht die Katze"))


@pytest.mark.parametrize("text", SENTENCES)
def test_round_trip_is_lossless(tok: TextTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert UNK_ID not in ids
    assert SOS_ID not in ids and EOS_ID not in ids  # encode adds no specials
    assert tok.decode(ids) == text


def test_punctuation_is_split_into_its_own_tokens(tok: TextTokenizer) -> None:
    assert tok.tokens(tok.encode("Is it well-known?")) == ["Is", "it", "well", "-", "known", "?"]


def test_encode_batch_matches_encode(tok: TextTokenizer) -> None:
    assert tok.encode_batch(SENTENCES) == [tok.encode(s) for s in SENTENCES]


def test_unknown_word_becomes_unk_and_stays_visible(tok: TextTokenizer) -> None:
    ids = tok.encode("Der Elefant schläft.")
    assert ids[1] == UNK_ID and ids.count(UNK_ID) == 1
    assert tok.decode(ids) == "Der [UNK] schläft."


def test_min_frequency_maps_rare_words_to_unk() -> None:
    tok = build_tokenizer(["a a b", "a c c", "d"], TokenizerConfig(min_frequency=2))
    a, b, c, d = tok.encode("a b c d")
    assert a > EOS_ID and c > EOS_ID and a != c
    assert b == UNK_ID and d == UNK_ID
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 2


def test_vocab_size_bounds_the_vocabulary() -> None:
    texts = ["x x x x y y y z z w"]
    tok = build_tokenizer(texts, TokenizerConfig(vocab_size=len(SPECIAL_TOKENS) + 2))
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 2
    x, y, z, w = tok.encode("x y z w")
    assert x > EOS_ID and y > EOS_ID  # the most frequent words are kept
    assert z == UNK_ID and w == UNK_ID


def test_decode_stops_at_eos_and_skips_pad_and_sos(tok: TextTokenizer) -> None:
    hund, katze = tok.encode("Hund Katze")
    assert tok.decode([SOS_ID, hund, PAD_ID, katze, EOS_ID, hund, hund]) == "Hund Katze"
    assert tok.decode([EOS_ID, hund]) == ""
    assert tok.decode([PAD_ID, PAD_ID]) == ""
    assert tok.decode([]) == ""


def test_decode_accepts_tensors_of_ids(tok: TextTokenizer) -> None:
    import torch

    ids = tok.encode(SENTENCES[0])
    assert tok.decode(torch.tensor([SOS_ID, *ids, EOS_ID, PAD_ID])) == SENTENCES[0]


def test_lowercase_option() -> None:
    tok = build_tokenizer(["Der Hund", "der HUND"], TokenizerConfig(lowercase=True))
    assert tok.encode("DER Hund") == tok.encode("der hund")
    assert UNK_ID not in tok.encode("DeR hUnD")
    assert tok.decode(tok.encode("Der Hund")) == "der hund"
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 2
    cased = build_tokenizer(["Der Hund", "der HUND"], TokenizerConfig())
    assert cased.encode("Der") != cased.encode("der")


def test_nfc_normalisation_makes_composed_and_decomposed_equal(tok: TextTokenizer) -> None:
    decomposed = "schla\u0308ft"  # a + combining diaeresis
    assert tok.encode(decomposed) == tok.encode("schläft")
    assert UNK_ID not in tok.encode(decomposed)


def test_save_and_load_reproduce_ids(tok: TextTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer_de.json"
    tok.save(path)
    loaded = TextTokenizer.load(path)
    assert loaded.vocab_size == tok.vocab_size
    for text in [*SENTENCES, "Der Elefant"]:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == tok.decode(tok.encode(text))


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "tokenizer_xx.json"
    with pytest.raises(TranslatorError, match="tokenizer_xx.json"):
        TextTokenizer.load(missing)


@pytest.mark.parametrize("content", ["", "{not json", '{"model": 5}', "\x00\x01\x02"])
def test_load_corrupt_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokenizer_de.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TranslatorError, match="tokenizer_de.json"):
        TextTokenizer.load(path)


def test_load_truncated_file(tok: TextTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer_de.json"
    tok.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TranslatorError, match="tokenizer_de.json"):
        TextTokenizer.load(path)


def test_tokenizer_without_the_special_ids_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    other = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    path = tmp_path / "foreign.json"
    other.save(str(path))
    with pytest.raises(TranslatorError, match="special token"):
        TextTokenizer.load(path)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \t  ",
        "Der Hund 😀🐕 schläft 👍🏽.",
        "Der\x00Hund\x07\x1b[31m sieht\r\ndie\u200bKatze",
        "مرحبا بالعالم، كيف حالك؟",
        "שָׁלוֹם עוֹלָם",
        "Hund \u202eetzaK\u202c und \u200fשלום",
        "a" * 5000,
        "\ufeff\ufffd",
    ],
)
def test_odd_input_never_raises(tok: TextTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    out = tok.decode(ids)
    assert isinstance(out, str)
    assert tok.encode_batch([text, "Hund"]) == [ids, tok.encode("Hund")]


def test_lone_surrogate_does_not_crash(tok: TextTokenizer) -> None:
    try:
        tok.encode("Hund \udcff")
    except TranslatorError:
        pass


def test_detokenize_rules() -> None:
    assert detokenize(["Hund", ".", "Katze", ",", "ja", "!"]) == "Hund. Katze, ja!"
    assert detokenize(["(", "a", ")", "b"]) == "(a) b"
    assert detokenize(["don", "'", "t"]) == "don't"
    assert detokenize(["say", '"', "hi", "there", '"', "now"]) == 'say "hi there" now'
    assert detokenize([]) == ""


# ---------------------------------------------------------------- subword tokenizers

CORPUS = [
    "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    "Mehrere Männer mit Schutzhelmen bedienen ein Antriebsradsystem.",
    "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
    "Two young, White males are outside near many bushes.",
    'A man (in an orange hat) says "hello" -- isn\'t it 12.5% cooler?',
    "Ein Mann schläft; eine Frau liest ein Buch...",
] * 5


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def subword(request: pytest.FixtureRequest) -> TextTokenizer:
    return build_tokenizer(CORPUS, TokenizerConfig(kind=request.param, vocab_size=120))


def test_subword_special_ids_and_kind(subword: TextTokenizer) -> None:
    assert subword.tokens([UNK_ID, PAD_ID, SOS_ID, EOS_ID]) == SPECIAL_TOKENS
    assert subword.kind in ("bpe", "unigram")
    assert subword.vocab_size <= 120


@pytest.mark.parametrize("text", [*dict.fromkeys(CORPUS), "Männer klettern, Frauen lesen.",
                                  "Two  young   men", "(Holz)?", "Holz.Holz"])
def test_subword_round_trip_restores_the_text_exactly(subword: TextTokenizer, text: str) -> None:
    ids = subword.encode(text)
    assert UNK_ID not in ids
    assert subword.decode(ids) == text


def test_subword_splits_punctuation_and_marks_spaces(subword: TextTokenizer) -> None:
    tokens = subword.tokens(subword.encode("Holz."))
    assert tokens[-1] == "." and tokens[0].startswith("\u2581")


def test_subword_unseen_characters_become_visible_unk(subword: TextTokenizer) -> None:
    ids = subword.encode("Ein 😀 Mann")
    assert UNK_ID in ids
    assert "[UNK]" in subword.decode(ids)


def test_subword_decode_stops_at_eos_and_skips_pad_sos(subword: TextTokenizer) -> None:
    ids = subword.encode("Ein Mann")
    assert subword.decode([SOS_ID, *ids, EOS_ID, *ids]) == "Ein Mann"
    assert subword.decode([PAD_ID, *ids, PAD_ID]) == "Ein Mann"


def test_subword_save_load_keeps_ids_and_decoding(subword: TextTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    subword.save(path)
    loaded = TextTokenizer.load(path)
    assert loaded.kind == subword.kind
    # Unigram scores may move by a float ulp through JSON, so the fingerprint is that of the
    # file (what every later run loads), not necessarily that of the freshly trained object.
    assert TextTokenizer.load(path).fingerprint == loaded.fingerprint
    for text in CORPUS[:6]:
        assert loaded.encode(text) == subword.encode(text)
        assert loaded.decode(loaded.encode(text)) == text


@pytest.mark.parametrize("kind", ["word", "bpe", "unigram"])
def test_odd_input_never_raises_for_any_kind(kind: str) -> None:
    tok = build_tokenizer(CORPUS, TokenizerConfig(kind=kind, vocab_size=100))
    for text in ["", "   ", "Der\x00Hund\u202e 😀", "a" * 3000, "\ufeff\ufffd"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert isinstance(tok.decode(ids), str)


def test_bpe_vocab_size_is_the_target() -> None:
    small = build_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=80))
    large = build_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=200))
    assert small.vocab_size == 80 and 80 < large.vocab_size <= 200
    text = "Zwei junge weiße Männer"
    assert len(large.encode(text)) < len(small.encode(text))


def test_shared_vocabulary_is_one_tokenizer_for_both_sides() -> None:
    src = ["the dog sleeps", "a cat"]
    tgt = ["der Hund schläft", "eine Katze"]
    cfg = TokenizerConfig(kind="bpe", vocab_size=60, shared=True)
    s, t = build_tokenizers(src, tgt, cfg)
    assert s is t
    assert UNK_ID not in s.encode("der Hund") and UNK_ID not in s.encode("the dog")
    s2, t2 = build_tokenizers(src, tgt, TokenizerConfig(kind="bpe", vocab_size=60))
    assert s2 is not t2 and s2.fingerprint != t2.fingerprint
    assert UNK_ID in s2.encode("Hund")  # 'H' never occurs on the English side


def test_training_accepts_batches_of_strings() -> None:
    one = build_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=90))
    batched = build_tokenizer([CORPUS[:10], CORPUS[10:]], TokenizerConfig(kind="bpe",
                                                                          vocab_size=90))
    assert batched.vocab_size == one.vocab_size
    assert all(batched.decode(batched.encode(t)) == t for t in CORPUS)


def test_nfkc_and_lowercase_normalization() -> None:
    text = "ﬁne Ｆｕｌｌ"  # ligature fi, full-width letters
    nfc = build_tokenizer([text, "fine full"], TokenizerConfig(kind="bpe", vocab_size=60))
    assert nfc.decode(nfc.encode(text)) == text
    nfkc = build_tokenizer(["fine full"], TokenizerConfig(kind="bpe", vocab_size=60, nfkc=True,
                                                          lowercase=True))
    assert nfkc.encode(text) == nfkc.encode("fine full")
    assert nfkc.decode(nfkc.encode(text)) == "fine full"


def test_unigram_too_small_vocabulary_is_a_clear_error() -> None:
    with pytest.raises(TranslatorError, match="unigram"):
        build_tokenizer(CORPUS, TokenizerConfig(kind="unigram", vocab_size=5))


def test_round_trip_stats() -> None:
    tok = build_tokenizer(["a b c", "a b"], TokenizerConfig())
    stats = round_trip_stats(tok, ["a b", "a z", "a  c"])
    assert stats["lines"] == 3 and stats["round_trip"] == 1 / 3
    assert stats["round_trip_without_unk"] == 0.5 and stats["lines_with_unk"] == 1 / 3
    assert stats["unk_rate"] == 1 / 6 and stats["tokens_per_line"] == 2
