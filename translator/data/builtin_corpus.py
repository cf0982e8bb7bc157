"""The built-in English->German corpus: sentence pairs generated offline from our own grammar.

Every pair comes from one abstract sentence (a `Sentence` of `Clause`s and noun phrases) that is
rendered twice, once by English rules and once by German rules. Because the German side is a
pure function of the tree and the English string fixes the tree, each English sentence has
exactly one German translation; a model can reach a near-perfect BLEU on held-out sentences
only by learning the grammar below, not by guessing between synonyms.

What the grammar covers:

* Lexicon: 68 nouns of all three genders (with stored German plurals, genitive forms and
  weak masculines such as Junge/Jungen), 24 adjectives, 49 verbs (strong, stem-changing,
  separable, dative-taking, ditransitive and clause-taking ones), 21 prepositions with the
  case they govern, numbers two..twelve and the pronouns I/he/she/it/we/they. Small on
  purpose: every word form should occur many times in a 30k-pair training split.
* Noun phrases: definite, indefinite, possessive, numbered and bare determiners with German
  article and adjective declension (weak after der, mixed after ein/mein, strong after
  numbers or no article) in all four cases, the dative plural -n, and three optional
  modifiers: a genitive ("the house of the man" -> "das Haus des Mannes"), a "with" phrase and
  a relative clause ("the dog that the man sees" -> "der Hund, den der Mann sieht").
* Prepositions: one fixed case per English preposition; static "in/on/under ..." always take
  the dative, "into/onto" the accusative, and "in/an/zu/von + dem/das/der" always contract
  (im, ins, am, zum, zur, vom).
* Clauses: present, perfect (haben/sein + participle at the end) and modals (can/must/want
  to -> kann/muss/will + infinitive at the end); German V2 order with inversion after a
  fronted adverb, separable prefixes at the end of the clause, verb-final subordinate clauses
  (dass, weil, obwohl, wenn, während) that may also come first ("Wenn ..., liest der Mann"),
  object relative clauses moved after the verb, yes/no and wh-questions.
* Middle field order: subject, pronoun objects, time/frequency adverb, dative then accusative
  noun objects, manner adverb, prepositional phrase, predicative adjective.

English sentences are at most 30 words long (so are German ones), start with a capital and
end with "." or "?"; punctuation is attached to the preceding word as in ordinary text.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

DEFAULT_SEED: int = 1234
MAX_WORDS: int = 30
# Far beyond any corpus we build uniquely; asking for more is a mistake, not a wait.
MAX_UNIQUE_PAIRS: int = 5_000_000

# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------


class _Noun(NamedTuple):
    en: str
    en_pl: str
    gender: str  # m, f, n; "w" marks a weak masculine (den/dem/des Jungen)
    de: str
    de_pl: str
    de_dat_pl: str
    de_gen: str  # genitive singular (for weak masculines: the form of all oblique cases)
    tags: str
    mass: bool


# Tags choose which slots a noun may fill.
#   classes: p person, a animal, t thing, f food, d drink, l place, e event
#   roles:   i "in" place, o surface (on), u "under", b landmark (behind, in front of,
#            around), x traversable (through), v crossable (over), g "at", r readable,
#            w writable, n openable, c buildable, m machine, k catchable, z throwable,
#            h giftable, q story
# Columns: en_sg en_pl gender de_sg de_pl de_gen tags ("-" = none: mass noun or feminine gen).
_NOUN_TABLE = """
man men m Mann Männer Mannes p
woman women f Frau Frauen - p
child children n Kind Kinder Kindes p
boy boys w Junge Jungen Jungen p
girl girls n Mädchen Mädchen Mädchens p
teacher teachers m Lehrer Lehrer Lehrers p
doctor doctors m Arzt Ärzte Arztes p
student students w Student Studenten Studenten p
friend friends m Freund Freunde Freundes p
king kings m König Könige Königs p
mother mothers f Mutter Mütter - p
father fathers m Vater Väter Vaters p
dog dogs m Hund Hunde Hundes a
cat cats f Katze Katzen - a
horse horses n Pferd Pferde Pferdes a
cow cows f Kuh Kühe - a
bird birds m Vogel Vögel Vogels a
mouse mice f Maus Mäuse - a
pig pigs n Schwein Schweine Schweins a
bear bears w Bär Bären Bären a
lion lions w Löwe Löwen Löwen a
elephant elephants w Elefant Elefanten Elefanten a
book books n Buch Bücher Buches trnh
letter letters m Brief Briefe Briefes trwh
newspaper newspapers f Zeitung Zeitungen - tr
story stories f Geschichte Geschichten - trwq
car cars n Auto Autos Autos tmni
ball balls m Ball Bälle Balles tkzh
table tables m Tisch Tische Tisches toug
chair chairs m Stuhl Stühle Stuhles tou
bed beds n Bett Betten Bettes toui
door doors f Tür Türen - tngb
window windows n Fenster Fenster Fensters tng
key keys m Schlüssel Schlüssel Schlüssels th
bag bags f Tasche Taschen - tnh
picture pictures n Bild Bilder Bildes th
flower flowers f Blume Blumen - th
tree trees m Baum Bäume Baumes tub
box boxes f Kiste Kisten - tnoh
song songs n Lied Lieder Liedes tsw
stone stones m Stein Steine Steines tz
gift gifts n Geschenk Geschenke Geschenks th
boat boats n Boot Boote Boots tmci
apple apples m Apfel Äpfel Apfels fh
cake cakes m Kuchen Kuchen Kuchens fh
egg eggs n Ei Eier Eies f
bread - n Brot - Brotes f
milk - f Milch - - d
water - n Wasser - Wassers d
coffee - m Kaffee - Kaffees d
tea - m Tee - Tees d
house houses n Haus Häuser Hauses lixcb
garden gardens m Garten Gärten Gartens lix
school schools f Schule Schulen - lib
park parks m Park Parks Parks lix
forest forests m Wald Wälder Waldes lixb
kitchen kitchens f Küche Küchen - li
city cities f Stadt Städte - lix
street streets f Straße Straßen - loxv
lake lakes m See Seen Sees ligvb
river rivers m Fluss Flüsse Flusses ligv
bridge bridges f Brücke Brücken - louvcb
church churches f Kirche Kirchen - licb
station stations m Bahnhof Bahnhöfe Bahnhofs ligb
mountain mountains m Berg Berge Berges lov
game games n Spiel Spiele Spiels e
party parties f Party Partys - e
film films m Film Filme Films e
"""


def _dat_pl(pl: str) -> str:
    # German dative plural adds -n unless the plural already ends in -n or -s.
    return pl if pl.endswith(("n", "s")) else pl + "n"


def _parse_nouns() -> dict[str, _Noun]:
    nouns: dict[str, _Noun] = {}
    for line in _NOUN_TABLE.strip().splitlines():
        en, en_pl, gender, de, de_pl, de_gen, tags = line.split()
        mass = en_pl == "-"
        nouns[en] = _Noun(
            en=en,
            en_pl=en_pl,
            gender=gender,
            de=de,
            de_pl=de_pl,
            de_dat_pl="-" if mass else _dat_pl(de_pl),
            de_gen=de if de_gen == "-" else de_gen,
            tags=tags,
            mass=mass,
        )
    return nouns


_NOUNS = _parse_nouns()
_NOUN_BY_PLURAL = {n.en_pl: n for n in _NOUNS.values() if not n.mass}


class _Adj(NamedTuple):
    en: str
    pred: str  # predicative form: "Der Hund ist müde."
    stem: str  # attributive stem that takes the endings: "müd" + "e"
    cats: str  # noun classes it can describe
    group: str  # o opinion, s size, q quality, a age, c colour: two adjectives differ in group


# Ordered as English stacks adjectives (opinion, size, quality, age, colour), so two
# adjectives are always printed in this order on both sides.
_ADJ_TABLE = """
beautiful schön schön patl o
interesting interessant interessant tre o
friendly freundlich freundlich pa o
clever klug klug pa o
expensive teuer teur tf o
big groß groß patl s
small klein klein patlf s
heavy schwer schwer t s
strong stark stark pad q
tired müde müd pa q
hungry hungrig hungrig pa q
happy glücklich glücklich pa q
sad traurig traurig pae q
quiet ruhig ruhig pal q
cold kalt kalt dfl q
warm warm warm dfl q
dark dunkel dunkl tl q
old alt alt patl a
young jung jung pa a
new neu neu tl a
red rot rot t c
green grün grün tl c
black schwarz schwarz at c
white weiß weiß at c
"""

_ADJS: dict[str, _Adj] = {}
for _line in _ADJ_TABLE.strip().splitlines():
    _a = _Adj(*_line.split())
    _ADJS[_a.en] = _a
_ADJ_ORDER = {a: i for i, a in enumerate(_ADJS)}


class _Verb(NamedTuple):
    key: str
    en: str  # base form: "see", also used for I/we/they
    en3: str  # "sees"
    en_pp: str  # "seen"
    de_inf: str  # infinitive without a separable prefix: "kommen" for ankommen
    de3: str  # 3rd person singular: "sieht"
    de1: str  # 1st person singular: "sehe"
    de_pl: str  # plural (= infinitive, except sein -> sind)
    de_pp: str  # participle with any separable prefix: "angekommen"
    prefix: str  # separable prefix ("an", "auf"), "" if none
    aux: str  # perfect auxiliary: "haben" or "sein"
    frame: str  # acc, dat, ditr, intr, motion, cop, comp
    subj: str  # noun classes allowed as subject
    obj: str  # noun tags allowed as (direct) object
    iobj: str  # noun tags allowed as indirect (dative) object of ditransitives
    particle: str  # English particle: "up" (picks up) or "for" (looks for)
    pp_groups: str  # which preposition groups may follow (see _PREPS)
    opt_obj: bool  # the object may be left out ("The man reads.")
    manner: bool  # takes manner adverbs ("quickly")
    needs_pp: bool  # only sensible with a place ("lives in the city")


def _v(key: str, en: str, en3: str, en_pp: str, de_inf: str, de3: str, de_pp: str, frame: str,
       subj: str = "pa", obj: str = "", *, aux: str = "haben", prefix: str = "", iobj: str = "",
       particle: str = "", pp: str = "", de1: str = "", opt_obj: bool = False,
       manner: bool = True, needs_pp: bool = False) -> _Verb:
    default_pp = {"motion": "DLC", "comp": "", "cop": "LCT"}.get(frame, "LCT")
    return _Verb(key, en, en3, en_pp, de_inf, de3, de1 or de_inf[:-2] + "e", de_inf, de_pp,
                 prefix, aux, frame, subj, obj, iobj, particle, pp or default_pp, opt_obj,
                 manner, needs_pp)


_VERB_LIST = [
    # transitive, accusative object
    _v("see", "see", "sees", "seen", "sehen", "sieht", "gesehen", "acc", obj="patle"),
    _v("read", "read", "reads", "read", "lesen", "liest", "gelesen", "acc", "p", "r",
       opt_obj=True),
    _v("eat", "eat", "eats", "eaten", "essen", "isst", "gegessen", "acc", "p", "f",
       opt_obj=True),
    _v("drink", "drink", "drinks", "drunk", "trinken", "trinkt", "getrunken", "acc", "p", "d",
       opt_obj=True),
    _v("find", "find", "finds", "found", "finden", "findet", "gefunden", "acc", obj="at"),
    _v("buy", "buy", "buys", "bought", "kaufen", "kauft", "gekauft", "acc", "p", "tfd",
       pp="LCTF"),
    _v("love", "love", "loves", "loved", "lieben", "liebt", "geliebt", "acc", obj="pa",
       manner=False),
    _v("like", "like", "likes", "liked", "mögen", "mag", "gemocht", "acc", obj="patfde",
       de1="mag", manner=False),
    _v("know", "know", "knows", "known", "kennen", "kennt", "gekannt", "acc", "p", "pl",
       manner=False),
    _v("hear", "hear", "hears", "heard", "hören", "hört", "gehört", "acc", obj="pas"),
    _v("visit", "visit", "visits", "visited", "besuchen", "besucht", "besucht", "acc", "p",
       "pl"),
    _v("open", "open", "opens", "opened", "öffnen", "öffnet", "geöffnet", "acc", "p", "n"),
    _v("catch", "catch", "catches", "caught", "fangen", "fängt", "gefangen", "acc", obj="ak"),
    _v("build", "build", "builds", "built", "bauen", "baut", "gebaut", "acc", "p", "c"),
    _v("write", "write", "writes", "written", "schreiben", "schreibt", "geschrieben", "acc",
       "p", "w", opt_obj=True),
    _v("cook", "cook", "cooks", "cooked", "kochen", "kocht", "gekocht", "acc", "p", "f",
       opt_obj=True),
    _v("look_for", "look", "looks", "looked", "suchen", "sucht", "gesucht", "acc", obj="pat",
       particle="for"),
    _v("meet", "meet", "meets", "met", "treffen", "trifft", "getroffen", "acc", "p", "p"),
    _v("need", "need", "needs", "needed", "brauchen", "braucht", "gebraucht", "acc", obj="tfd",
       manner=False),
    _v("have", "have", "has", "had", "haben", "hat", "gehabt", "acc", obj="pat", de1="habe",
       manner=False),
    _v("call", "call", "calls", "called", "rufen", "ruft", "angerufen", "acc", "p", "p",
       prefix="an"),
    _v("pick_up", "pick", "picks", "picked", "holen", "holt", "abgeholt", "acc", "p", "p",
       prefix="ab", particle="up"),
    # dative object
    _v("help", "help", "helps", "helped", "helfen", "hilft", "geholfen", "dat", obj="pa"),
    _v("follow", "follow", "follows", "followed", "folgen", "folgt", "gefolgt", "dat",
       obj="pa", aux="sein"),
    _v("answer", "answer", "answers", "answered", "antworten", "antwortet", "geantwortet",
       "dat", "p", "p"),
    # ditransitive: dative person + accusative thing
    _v("give", "give", "gives", "given", "geben", "gibt", "gegeben", "ditr", "p", "tf",
       iobj="pa"),
    _v("show", "show", "shows", "shown", "zeigen", "zeigt", "gezeigt", "ditr", "p", "t",
       iobj="p"),
    _v("bring", "bring", "brings", "brought", "bringen", "bringt", "gebracht", "ditr", "p",
       "tfd", iobj="pa"),
    _v("tell", "tell", "tells", "told", "erzählen", "erzählt", "erzählt", "ditr", "p", "q",
       iobj="p"),
    # intransitive
    _v("sleep", "sleep", "sleeps", "slept", "schlafen", "schläft", "geschlafen", "intr"),
    _v("play", "play", "plays", "played", "spielen", "spielt", "gespielt", "intr"),
    _v("work", "work", "works", "worked", "arbeiten", "arbeitet", "gearbeitet", "intr", "p"),
    _v("sing", "sing", "sings", "sung", "singen", "singt", "gesungen", "acc", obj="s",
       opt_obj=True),
    _v("laugh", "laugh", "laughs", "laughed", "lachen", "lacht", "gelacht", "intr", "p"),
    _v("wait", "wait", "waits", "waited", "warten", "wartet", "gewartet", "intr"),
    _v("live", "live", "lives", "lived", "wohnen", "wohnt", "gewohnt", "intr", pp="L",
       manner=False, needs_pp=True),
    _v("get_up", "get", "gets", "got", "stehen", "steht", "aufgestanden", "intr", "p",
       aux="sein", prefix="auf", particle="up"),
    _v("arrive", "arrive", "arrives", "arrived", "kommen", "kommt", "angekommen", "intr", "p",
       aux="sein", prefix="an"),
    # motion: take directional phrases ("into the garden")
    _v("run", "run", "runs", "run", "laufen", "läuft", "gelaufen", "motion", aux="sein"),
    _v("go", "go", "goes", "gone", "gehen", "geht", "gegangen", "motion", aux="sein"),
    _v("swim", "swim", "swims", "swum", "schwimmen", "schwimmt", "geschwommen", "motion",
       aux="sein"),
    _v("drive", "drive", "drives", "driven", "fahren", "fährt", "gefahren", "motion", "p",
       aux="sein"),
    _v("come", "come", "comes", "come", "kommen", "kommt", "gekommen", "motion", aux="sein"),
    _v("fly", "fly", "flies", "flown", "fliegen", "fliegt", "geflogen", "motion", aux="sein"),
    # copula
    _v("be", "be", "is", "been", "sein", "ist", "gewesen", "cop", "patfdle", aux="sein",
       de1="bin", manner=False),
    # clause-taking: "says that ..."
    _v("say", "say", "says", "said", "sagen", "sagt", "gesagt", "comp", "p"),
    _v("think", "think", "thinks", "thought", "denken", "denkt", "gedacht", "comp", "p",
       manner=False),
    _v("believe", "believe", "believes", "believed", "glauben", "glaubt", "geglaubt", "comp",
       "p", manner=False),
    _v("know_that", "know", "knows", "known", "wissen", "weiß", "gewusst", "comp", "p",
       de1="weiß", manner=False),
]
_VERBS: dict[str, _Verb] = {v.key: v for v in _VERB_LIST}
_VERBS["be"] = _VERBS["be"]._replace(de_pl="sind")

# Finite forms by person ("1sg", "3sg", "pl"; 1st and 3rd plural agree in both languages).
_AUX_DE = {
    "haben": {"1sg": "habe", "3sg": "hat", "pl": "haben"},
    "sein": {"1sg": "bin", "3sg": "ist", "pl": "sind"},
}
# Modal tenses: German finite forms; the main verb's infinitive goes to the end.
_MODALS = {
    "can": {"1sg": "kann", "3sg": "kann", "pl": "können"},
    "must": {"1sg": "muss", "3sg": "muss", "pl": "müssen"},
    "want": {"1sg": "will", "3sg": "will", "pl": "wollen"},
}
TENSES = ("pres", "perf", "can", "must", "want")


class _Pron(NamedTuple):
    en_nom: str
    en_acc: str
    de_nom: str
    de_acc: str
    de_dat: str
    person: str


# "you" (du/Sie/ihr) and object "her" (which English shares with the possessive) are left
# out so that every English word has a single reading.
_PRONOUNS = {
    "I": _Pron("I", "me", "ich", "mich", "mir", "1sg"),
    "he": _Pron("he", "him", "er", "ihn", "ihm", "3sg"),
    "she": _Pron("she", "her", "sie", "sie", "ihr", "3sg"),
    "it": _Pron("it", "it", "es", "es", "ihm", "3sg"),
    "we": _Pron("we", "us", "wir", "uns", "uns", "pl"),
    "they": _Pron("they", "them", "sie", "sie", "ihnen", "pl"),
}
_PRON_BY_FORM = {p.en_acc: k for k, p in _PRONOUNS.items() if k != "she"}
_PRON_BY_FORM.update({k: k for k in _PRONOUNS})

_POSSESSIVES = {"my": "mein", "his": "sein", "her": "ihr", "our": "unser", "their": "ihr"}
_NUMBERS = {
    "two": "zwei", "three": "drei", "four": "vier", "five": "fünf", "six": "sechs",
    "seven": "sieben", "eight": "acht", "nine": "neun", "ten": "zehn", "eleven": "elf",
    "twelve": "zwölf",
}


class _Prep(NamedTuple):
    de: str
    case: str
    cats: str  # noun tags allowed as its object
    group: str  # L location, C company, D direction, T event, F source


_PREPS: dict[str, _Prep] = {
    "in": _Prep("in", "dat", "i", "L"),
    "on": _Prep("auf", "dat", "o", "L"),
    "under": _Prep("unter", "dat", "u", "L"),
    "behind": _Prep("hinter", "dat", "b", "L"),
    "next to": _Prep("neben", "dat", "pab", "L"),
    "in front of": _Prep("vor", "dat", "b", "L"),
    "at": _Prep("an", "dat", "g", "L"),
    "with": _Prep("mit", "dat", "pat", "C"),
    "without": _Prep("ohne", "acc", "pat", "C"),
    "for": _Prep("für", "acc", "pa", "C"),
    "into": _Prep("in", "acc", "i", "D"),
    "onto": _Prep("auf", "acc", "o", "D"),
    "to": _Prep("zu", "dat", "lp", "D"),
    "through": _Prep("durch", "acc", "x", "D"),
    "out of": _Prep("aus", "dat", "i", "D"),
    "over": _Prep("über", "acc", "v", "D"),
    "around": _Prep("um", "acc", "b", "D"),
    "after": _Prep("nach", "dat", "e", "T"),
    "during": _Prep("während", "gen", "e", "T"),
    "because of": _Prep("wegen", "gen", "e", "T"),
    "from": _Prep("von", "dat", "p", "F"),
}
# One contraction rule, always applied: preposition + singular definite article.
_CONTRACTIONS = {
    ("in", "dem"): "im", ("in", "das"): "ins", ("an", "dem"): "am",
    ("zu", "dem"): "zum", ("zu", "der"): "zur", ("von", "dem"): "vom",
}

# Adverbs: English text -> (German text, kind). Time adverbs go last in English and may be
# fronted; frequency adverbs stand before the verb; manner adverbs follow the objects.
_ADVERBS: dict[str, tuple[str, str]] = {
    "today": ("heute", "time"),
    "now": ("jetzt", "time"),
    "tomorrow": ("morgen", "time"),
    "in the morning": ("am Morgen", "time"),
    "at night": ("in der Nacht", "time"),
    "often": ("oft", "freq"),
    "always": ("immer", "freq"),
    "sometimes": ("manchmal", "freq"),
    "usually": ("meistens", "freq"),
    "quickly": ("schnell", "manner"),
    "slowly": ("langsam", "manner"),
    "carefully": ("vorsichtig", "manner"),
}
_FRONTABLE_FREQ = ("sometimes", "usually")

_CONJUNCTIONS = {
    "that": "dass", "because": "weil", "although": "obwohl", "if": "wenn", "when": "wenn",
    "while": "während",
}
_WH_WORDS = ("who", "whom", "what", "where", "why", "when")

# German article and adjective endings, indexed [case][m, f, n, plural].
_G_INDEX = {"m": 0, "w": 0, "f": 1, "n": 2}
_DEF_ART = {
    "nom": ("der", "die", "das", "die"), "acc": ("den", "die", "das", "die"),
    "dat": ("dem", "der", "dem", "den"), "gen": ("des", "der", "des", "der"),
}
_EIN_END = {
    "nom": ("", "e", "", "e"), "acc": ("en", "e", "", "e"),
    "dat": ("em", "er", "em", "en"), "gen": ("es", "er", "es", "er"),
}
_WEAK = {
    "nom": ("e", "e", "e", "en"), "acc": ("en", "e", "e", "en"),
    "dat": ("en", "en", "en", "en"), "gen": ("en", "en", "en", "en"),
}
_STRONG = {
    "nom": ("er", "e", "es", "e"), "acc": ("en", "e", "es", "e"),
    "dat": ("em", "er", "em", "en"), "gen": ("en", "er", "en", "er"),
}
_REL_PRON = {
    "nom": ("der", "die", "das", "die"), "acc": ("den", "die", "das", "die"),
    "dat": ("dem", "der", "dem", "denen"),
}

# ---------------------------------------------------------------------------------------------
# Abstract sentences
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rel:
    """A present-tense relative clause on a noun. role "subj": the noun is its subject and
    `other` its object ("the dog that sees the cat"); role "obj": the noun is its object and
    `other` its subject ("the dog that the cat sees"). `pred` is the adjective with "be"."""

    verb: str
    role: str = "subj"
    other: NP | None = None
    pred: str | None = None


@dataclass(frozen=True)
class NP:
    """A noun phrase. `head` is an English singular noun or a subject pronoun (I, he, she,
    it, we, they); `det` is "the", "a", a possessive (my, his, her, our, their), a number
    word (two..twelve) or "" for none. At most one of `of`, `with_`, `rel` is set."""

    head: str
    det: str = "the"
    plural: bool = False
    adjs: tuple[str, ...] = ()
    of: NP | None = None
    with_: NP | None = None
    rel: Rel | None = None


@dataclass(frozen=True)
class PP:
    """A prepositional phrase: an English preposition key of `_PREPS` and its object."""

    prep: str
    np: NP


@dataclass(frozen=True)
class Clause:
    """One clause. `verb` is a verb key ("see", "pick_up", "be", ...); `tense` is one of
    TENSES; `subj`/`obj` are None where a wh-question asks for them; `to_dative` prints a
    ditransitive's indirect object as "to X" in English; `front` puts `adv` first."""

    subj: NP | None
    verb: str
    obj: NP | None = None
    iobj: NP | None = None
    pred: str | None = None
    pps: tuple[PP, ...] = ()
    adv: str | None = None
    front: bool = False
    tense: str = "pres"
    to_dative: bool = False


@dataclass(frozen=True)
class Sentence:
    """A whole sentence. mood: "decl", "ynq" (yes/no question) or "wh" (with `wh` one of
    who/whom/what/where/why/when). `conj` + `sub` add a subordinate clause, after the main
    clause or, with `sub_first`, before it ("that" only after)."""

    main: Clause
    mood: str = "decl"
    wh: str | None = None
    conj: str | None = None
    sub: Clause | None = None
    sub_first: bool = False


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _is_pron(np: NP) -> bool:
    return np.head in _PRONOUNS


def _person(np: NP | None) -> str:
    if np is None:  # "Who ...?" agrees in the singular
        return "3sg"
    if np.head in _PRONOUNS:
        return _PRONOUNS[np.head].person
    return "pl" if np.plural else "3sg"


def _obj_case(v: _Verb) -> str:
    return "dat" if v.frame == "dat" else "acc"


def _en_np(np: NP, case: str = "acc") -> list[str]:
    if np.head in _PRONOUNS:
        p = _PRONOUNS[np.head]
        return [p.en_nom if case == "nom" else p.en_acc]
    noun = _NOUNS[np.head]
    toks: list[str] = []
    if np.det == "a":
        first = np.adjs[0] if np.adjs else noun.en
        toks.append("an" if first[0] in "aeiou" else "a")
    elif np.det:
        toks.append(np.det)
    toks.extend(np.adjs)
    toks.append(noun.en_pl if np.plural else noun.en)
    if np.of is not None:
        toks += ["of", *_en_np(np.of)]
    if np.with_ is not None:
        toks += ["with", *_en_np(np.with_)]
    if np.rel is not None:
        toks += _en_rel(np, np.rel)
    return toks


def _en_finite(v: _Verb, person: str) -> str:
    if v.key == "be":
        return {"1sg": "am", "3sg": "is", "pl": "are"}[person]
    return v.en3 if person == "3sg" else v.en


def _en_rel(head: NP, rel: Rel) -> list[str]:
    v = _VERBS[rel.verb]
    person_noun = _NOUNS[head.head]
    if rel.role == "subj":
        word = "who" if "p" in person_noun.tags else "that"
        toks = [word, _en_finite(v, _person(head))]
        if v.particle:
            toks.append(v.particle)
        if rel.pred:
            toks.append(rel.pred)
        if rel.other is not None:
            toks += _en_np(rel.other)
        return toks
    assert rel.other is not None
    word = "whom" if "p" in person_noun.tags else "that"
    toks = [word, *_en_np(rel.other, "nom"), _en_finite(v, _person(rel.other))]
    if v.particle:
        toks.append(v.particle)
    return toks


def _de_np(np: NP, case: str) -> list[str]:
    """German words of a noun phrase in `case`; relative clauses are left to the clause."""
    if np.head in _PRONOUNS:
        p = _PRONOUNS[np.head]
        return [{"nom": p.de_nom, "acc": p.de_acc, "dat": p.de_dat}[case]]
    noun = _NOUNS[np.head]
    gi = 3 if np.plural else _G_INDEX[noun.gender]
    toks, ending = _de_determiner(np.det, case, gi)
    toks.extend(_ADJS[a].stem + ending for a in np.adjs)
    toks.append(_de_noun(noun, case, np.plural))
    if np.of is not None:
        toks += _de_np(np.of, "gen")
    if np.with_ is not None:
        toks += ["mit", *_de_np(np.with_, "dat")]
    return toks


def _de_determiner(det: str, case: str, gi: int) -> tuple[list[str], str]:
    """The German article (or number) of English determiner `det` for gender/number index
    `gi` in `case`, and the ending that adjectives after it take."""
    if det == "the":
        return [_DEF_ART[case][gi]], _WEAK[case][gi]
    if det == "a" or det in _POSSESSIVES:
        end = _EIN_END[case][gi]
        # Mixed declension: the adjective shows the gender where the article cannot.
        return ([("ein" if det == "a" else _POSSESSIVES[det]) + end],
                _STRONG[case][gi] if end == "" else _WEAK[case][gi])
    return ([_NUMBERS[det]] if det else []), _STRONG[case][gi]


def _de_noun(noun: _Noun, case: str, plural: bool) -> str:
    """The German form of a noun in `case` (weak feminine-style forms are the genitive's)."""
    if plural:
        return noun.de_dat_pl if case == "dat" else noun.de_pl
    if noun.gender == "w" and case != "nom":
        return noun.de_gen
    if case == "gen" and noun.gender in "mn":
        return noun.de_gen
    return noun.de


def _de_rel(head: NP, rel: Rel) -> list[str]:
    v = _VERBS[rel.verb]
    noun = _NOUNS[head.head]
    gi = 3 if head.plural else _G_INDEX[noun.gender]
    if rel.role == "subj":
        toks = [",", _REL_PRON["nom"][gi]]
        person = _person(head)
        if rel.other is not None:
            toks += _de_np(rel.other, _obj_case(v))
        if rel.pred:
            toks.append(_ADJS[rel.pred].pred)
    else:
        assert rel.other is not None
        toks = [",", _REL_PRON[_obj_case(v)][gi], *_de_np(rel.other, "nom")]
        person = _person(rel.other)
    finite = _de_finite(v, person)
    toks += [v.prefix + finite, ","]
    return toks


def _de_subject(np: NP) -> list[str]:
    toks = _de_np(np, "nom")
    if np.rel is not None:
        toks += _de_rel(np, np.rel)
    return toks


def _de_pp(pp: PP) -> list[str]:
    prep = _PREPS[pp.prep]
    toks = _de_np(pp.np, prep.case)
    if pp.np.det == "the" and not pp.np.plural and not _is_pron(pp.np):
        short = _CONTRACTIONS.get((prep.de, toks[0]))
        if short:
            return [short, *toks[1:]]
    return [prep.de, *toks]


def _de_finite(v: _Verb, person: str) -> str:
    return {"1sg": v.de1, "3sg": v.de3, "pl": v.de_pl}[person]


def _en_verb_group(c: Clause, inverted: bool) -> tuple[list[str], list[str]]:
    """(words before the subject when inverted, words after it). Frequency adverbs sit right
    before the main verb, after any auxiliary."""
    v = _VERBS[c.verb]
    person = _person(c.subj)
    freq = [c.adv] if c.adv and not c.front and _ADVERBS[c.adv][1] == "freq" else []
    has_ = "have" if person != "3sg" else "has"
    do_ = "do" if person != "3sg" else "does"
    if c.tense == "perf":
        return [has_], [*freq, v.en_pp]
    if c.tense in ("can", "must"):
        return [c.tense], [*freq, v.en]
    if c.tense == "want":
        wants = "want" if person != "3sg" else "wants"
        if inverted:
            return [do_], [*freq, "want", "to", v.en]
        return [], [*freq, wants, "to", v.en]
    if v.key == "be":
        return [_en_finite(v, person)], freq
    if inverted:
        return [do_], [*freq, v.en]
    return [], [*freq, _en_finite(v, person)]


def _en_clause(c: Clause, inverted: bool = False) -> list[str]:
    first, rest = _en_verb_group(c, inverted)
    subj = _en_np(c.subj, "nom") if c.subj is not None else []
    toks: list[str] = [c.adv] if c.adv and c.front else []
    toks += first + subj + rest if inverted else subj + first + rest
    return toks + _en_objects(c) + _en_tail(c)


def _en_objects(c: Clause) -> list[str]:
    """The verb's particle and objects in English order."""
    v = _VERBS[c.verb]
    # "picks up the child" but "picks him up"; "looks for him" keeps its particle in place.
    late_particle = v.particle == "up" and c.obj is not None and _is_pron(c.obj)
    toks = [v.particle] if v.particle and not late_particle else []
    if c.iobj is not None and c.obj is not None:
        if c.to_dative:
            toks += [*_en_np(c.obj), "to", *_en_np(c.iobj)]
        else:
            toks += [*_en_np(c.iobj), *_en_np(c.obj)]
    elif c.obj is not None:
        toks += _en_np(c.obj)
    if late_particle:
        toks.append(v.particle)
    return toks


def _en_tail(c: Clause) -> list[str]:
    """What follows the objects: a manner adverb, the predicate, the prepositional phrases,
    a time adverb that is not fronted."""
    kind = _ADVERBS[c.adv][1] if c.adv else ""
    toks: list[str] = []
    if kind == "manner":
        toks.append(c.adv)
    if c.pred:
        toks.append(c.pred)
    for pp in c.pps:
        toks += [pp.prep, *_en_np(pp.np)]
    if kind == "time" and not c.front:
        toks.append(c.adv)
    return toks


def _de_clause(c: Clause, order: str, prefield: list[str] | None = None) -> list[str]:
    """German words of a clause. order: "v2" (subject or fronted adverb, then the finite
    verb), "v1" (finite verb first: questions, a main clause after a subordinate one; pass
    a wh-word as `prefield`) or "final" (subordinate clause, finite verb last)."""
    v = _VERBS[c.verb]
    finite, nonfinite = _de_verb_forms(c, v)
    adv_de = _ADVERBS[c.adv][0] if c.adv else ""
    subj = _de_subject(c.subj) if c.subj is not None else []
    subject_first = order == "v2" and not c.front
    middle = _de_middle_field(c, [] if subject_first else subj, adv_de)
    if order == "final":
        out = middle + ([v.prefix + finite] if c.tense == "pres" else nonfinite + [finite])
    else:
        right = [v.prefix] if c.tense == "pres" and v.prefix else nonfinite
        out = _de_front(c, order, subj, adv_de, prefield) + [finite] + middle + right
    # An object's relative clause moves behind the verb: "hat den Hund gesehen, der schläft".
    if c.obj is not None and c.obj.rel is not None:
        out += _de_rel(c.obj, c.obj.rel)
    return out


def _de_front(c: Clause, order: str, subj: list[str], adv_de: str,
              prefield: list[str] | None) -> list[str]:
    """What comes before the finite verb of a "v2" clause (its subject or fronted adverb) or
    a "v1" one (the wh-word, if any)."""
    if order == "v2":
        return [adv_de] if c.front else subj
    return prefield or []


def _de_verb_forms(c: Clause, v: _Verb) -> tuple[str, list[str]]:
    """The finite verb of a clause (an auxiliary or modal outside the present) and the
    non-finite forms that go to the end (participle or infinitive)."""
    person = _person(c.subj)
    if c.tense == "pres":
        return _de_finite(v, person), []
    if c.tense == "perf":
        return _AUX_DE[v.aux][person], [v.de_pp]
    return _MODALS[c.tense][person], [v.prefix + v.de_inf]


def _de_middle_field(c: Clause, lead: list[str], adv_de: str) -> list[str]:
    """The words between the finite verb and the clause's end: `lead` (the subject when it
    does not come first), pronoun objects, a time or frequency adverb, noun objects, a
    manner adverb, prepositional phrases and the predicate."""
    v = _VERBS[c.verb]
    objs = []  # (np, case) in German order: indirect (dative) before direct
    if c.iobj is not None:
        objs.append((c.iobj, "dat"))
    if c.obj is not None:
        objs.append((c.obj, _obj_case(v)))
    # Pronouns come first in the middle field, accusative before dative.
    pron_objs = sorted((o for o in objs if _is_pron(o[0])), key=lambda o: o[1] != "acc")
    noun_objs = [o for o in objs if not _is_pron(o[0])]
    kind = _ADVERBS[c.adv][1] if c.adv else ""
    middle = list(lead)
    for np, case in pron_objs:
        middle += _de_np(np, case)
    if kind in ("time", "freq") and not c.front:
        middle.append(adv_de)
    for np, case in noun_objs:
        middle += _de_np(np, case)
    if kind == "manner":
        middle.append(adv_de)
    for pp in c.pps:
        middle += _de_pp(pp)
    if c.pred:
        middle.append(_ADJS[c.pred].pred)
    return middle


def _join(tokens: list[str]) -> str:
    """Text from words: punctuation attached to the previous word, no doubled or dangling
    commas (relative clauses close with a comma that a following "." replaces)."""
    out: list[str] = []
    for tok in tokens:
        if tok in (",", ".", "?"):
            if out and out[-1].endswith(","):
                if tok == ",":
                    continue
                out[-1] = out[-1][:-1]
            out[-1] += tok
        else:
            out.append(tok)
    text = " ".join(out)
    return text[:1].upper() + text[1:]


def render(sentence: Sentence) -> tuple[str, str]:
    """The (English, German) text of an abstract sentence; a pure function of its input."""
    main = sentence.main
    if sentence.mood == "ynq":
        en = _en_clause(main, inverted=True) + ["?"]
        de = _de_clause(main, "v1") + ["?"]
    elif sentence.mood == "wh":
        wh = sentence.wh
        v = _VERBS[main.verb]
        if wh == "who":
            en = ["who", *_en_clause(main)]
            de = _de_clause(main, "v1", ["wer"])
        else:
            en_word = {"whom": "who"}.get(wh or "", wh or "")
            en = [en_word, *_en_clause(main, inverted=True)]
            if wh == "whom":
                de_word = "wem" if _obj_case(v) == "dat" else "wen"
            else:
                de_word = {"what": "was", "where": "wo", "why": "warum", "when": "wann"}[wh or ""]
            de = _de_clause(main, "v1", [de_word])
        en.append("?")
        de.append("?")
    elif sentence.sub is None:
        en = _en_clause(main) + ["."]
        de = _de_clause(main, "v2") + ["."]
    else:
        conj = sentence.conj or "that"
        sub_en = [conj, *_en_clause(sentence.sub)]
        sub_de = [_CONJUNCTIONS[conj], *_de_clause(sentence.sub, "final")]
        if sentence.sub_first:
            en = sub_en + [","] + _en_clause(main) + ["."]
            # The subordinate clause fills the first position, so the verb comes next.
            de = sub_de + [","] + _de_clause(main, "v1") + ["."]
        else:
            en = _en_clause(main) + sub_en + ["."]
            de = _de_clause(main, "v2") + [","] + sub_de + ["."]
    return _join(en), _join(de)


def noun_phrase(text: str) -> NP:
    """An NP from a simple English phrase: "the big dog", "two small cats", "an old man",
    "my father", "milk", "him", "the house of the man", "the man with a dog"."""
    for word, attr in ((" of ", "of"), (" with ", "with_")):
        if word in text:
            head, _, rest = text.partition(word)
            return replace(noun_phrase(head), **{attr: noun_phrase(rest)})
    words = text.split()
    if len(words) == 1 and words[0] in _PRON_BY_FORM:
        return NP(_PRON_BY_FORM[words[0]])
    det, words = _split_determiner(words)
    if not words:
        raise ValueError(f"no noun in {text!r}")
    *adjs, last = words
    for a in adjs:
        if a not in _ADJS:
            raise ValueError(f"unknown adjective {a!r} in {text!r}")
    if last in _NOUNS:
        return NP(last, det, False, tuple(adjs))
    if last in _NOUN_BY_PLURAL:
        return NP(_NOUN_BY_PLURAL[last].en, det, True, tuple(adjs))
    raise ValueError(f"unknown noun {last!r} in {text!r}")


def _split_determiner(words: list[str]) -> tuple[str, list[str]]:
    """A phrase's determiner ("" for none; "an" read as "a") and the words after it."""
    first = words[0]
    if first in ("the", "a", "an") or first in _POSSESSIVES or first in _NUMBERS:
        return ("a" if first == "an" else first), words[1:]
    return "", words


# ---------------------------------------------------------------------------------------------
# Random generation
# ---------------------------------------------------------------------------------------------

_CLASS_LETTERS = "patfdle"
_pool_cache: dict[str, list[_Noun]] = {}


def _noun_pool(cats: str) -> list[_Noun]:
    pool = _pool_cache.get(cats)
    if pool is None:
        pool = [n for n in _NOUNS.values() if any(t in cats for t in n.tags)]
        _pool_cache[cats] = pool
    return pool


_adj_cache: dict[str, list[str]] = {}


def _adj_pool(noun: _Noun) -> list[str]:
    pool = _adj_cache.get(noun.en)
    if pool is None:
        classes = [t for t in noun.tags if t in _CLASS_LETTERS]
        pool = [a.en for a in _ADJS.values() if any(c in a.cats for c in classes)]
        _adj_cache[noun.en] = pool
    return pool


_POSS_WORDS = tuple(_POSSESSIVES)
_NUMBER_WORDS = tuple(_NUMBERS)
_SUBJ_PRONOUNS_P = ("I", "he", "she", "we", "they")
_OBJ_PRONOUNS_P = ("I", "he", "we", "they")  # printed me/him/us/them


def _sample_adjs(rng: random.Random, noun: _Noun) -> tuple[str, ...]:
    r = rng.random()
    if r < 0.63:
        return ()
    pool = _adj_pool(noun)
    first = rng.choice(pool)
    if r < 0.94:
        return (first,)
    second = rng.choice(pool)
    if _ADJS[first].group == _ADJS[second].group:  # not "big small", "black white"
        return (first,)
    return tuple(sorted((first, second), key=_ADJ_ORDER.__getitem__))


def _sample_np(rng: random.Random, cats: str, *, pron: tuple[str, ...] = (),
               genitive: bool = False, subject: bool = False) -> NP:
    """A noun phrase whose noun carries one of the tags in `cats`; with probability 0.15 one
    of the pronouns in `pron` instead. Subjects always have a determiner, which keeps
    sentence-initial words (capitalised, so distinct tokens) few."""
    if pron and rng.random() < 0.15:
        return NP(rng.choice(pron))
    noun = rng.choice(_noun_pool(cats))
    adjs = _sample_adjs(rng, noun)
    r = rng.random()
    if noun.mass:
        return NP(noun.en, _mass_det(rng, r, genitive, subject), False, adjs)
    if rng.random() < 0.35:
        return NP(noun.en, _plural_det(rng, r, genitive, subject), True, adjs)
    return NP(noun.en, _singular_det(rng, r), False, adjs)


# The determiners of a sampled noun phrase, drawn from `r` (one uniform draw) and `rng`.

def _mass_det(rng: random.Random, r: float, genitive: bool, subject: bool) -> str:
    if r < 0.5 or (subject and r < 0.8):
        return "the"
    if r < 0.8 and not genitive:
        return ""
    return rng.choice(_POSS_WORDS)


def _plural_det(rng: random.Random, r: float, genitive: bool, subject: bool) -> str:
    if genitive:  # bare and numbered plurals have no visible German genitive
        return "the" if r < 0.75 else rng.choice(_POSS_WORDS)
    if r < 0.55:
        return "the"
    if r < 0.7:
        return rng.choice(_POSS_WORDS)
    if r < 0.9 or subject:
        return rng.choice(_NUMBER_WORDS)
    return ""


def _singular_det(rng: random.Random, r: float) -> str:
    if r < 0.55:
        return "the"
    if r < 0.85:
        return "a"
    return rng.choice(_POSS_WORDS)


def _pronouns_for(cats: str, subject: bool) -> tuple[str, ...]:
    prons: tuple[str, ...] = ()
    if "p" in cats:
        prons += _SUBJ_PRONOUNS_P if subject else _OBJ_PRONOUNS_P
    if "a" in cats:
        prons += ("it",) if subject else ("it", "they")
    return prons


def _sample_pp(rng: random.Random, groups: str) -> PP:
    prep = rng.choice(_PREPS_BY_GROUPS[groups])
    info = _PREPS[prep]
    prons = _OBJ_PRONOUNS_P if "p" in info.cats and info.group in "CF" else ()
    return PP(prep, _sample_np(rng, info.cats, pron=prons, genitive=info.case == "gen"))


_PREPS_BY_GROUPS: dict[str, list[str]] = {}


def _preps_for(groups: str) -> list[str]:
    # Prepositions are drawn uniformly, so a group weighs as much as it has prepositions.
    return [p for p, info in _PREPS.items() if info.group in groups]


for _verb in _VERB_LIST:
    for _g in (_verb.pp_groups, "L"):
        _PREPS_BY_GROUPS.setdefault(_g, _preps_for(_g))


def _add_modifier(rng: random.Random, np: NP, allow_with: bool) -> NP:
    """Optionally give a noun phrase a genitive ("of the man") or a "with" phrase."""
    if _is_pron(np) or rng.random() >= 0.08:
        return np
    noun = _NOUNS[np.head]
    if allow_with and "p" in noun.tags and rng.random() < 0.5:
        return replace(np, with_=_sample_np(rng, "pat"))
    if np.det in ("the", "a") and not noun.mass and any(t in noun.tags for t in "atl"):
        return replace(np, of=_sample_np(rng, "p", genitive=True))
    return np


_REL_VERBS = [v for v in _VERB_LIST
              if v.frame in ("acc", "dat", "intr", "motion", "cop") and not v.needs_pp]
_REL_OBJ_VERBS = [v for v in _VERB_LIST if v.frame in ("acc", "dat")]


def _sample_rel(rng: random.Random, head: NP) -> Rel | None:
    noun = _NOUNS[head.head]
    if rng.random() < 0.5:
        verbs = [v for v in _REL_VERBS if any(t in v.subj for t in noun.tags)]
        v = rng.choice(verbs)
        if v.frame == "cop":
            return Rel(v.key, "subj", pred=rng.choice(_adj_pool(noun)))
        if v.frame in ("acc", "dat") and not (v.opt_obj and rng.random() < 0.3):
            return Rel(v.key, "subj", _sample_np(rng, v.obj))
        return Rel(v.key, "subj")
    verbs = [v for v in _REL_OBJ_VERBS if any(t in v.obj for t in noun.tags)]
    if not verbs:
        return None
    v = rng.choice(verbs)
    return Rel(v.key, "obj", _sample_np(rng, v.subj))


_MAIN_VERBS = [v for v in _VERB_LIST if v.frame != "comp"]
# The copula gets extra weight: it is one verb but a whole family of sentences.
_MAIN_WEIGHTS = [6 if v.frame == "cop" else 1 for v in _MAIN_VERBS]
_COMP_VERBS = [v for v in _VERB_LIST if v.frame == "comp"]
_WH_VERBS = {
    "who": [v for v in _MAIN_VERBS if "p" in v.subj],
    "whom": [v for v in _MAIN_VERBS if v.frame in ("acc", "dat") and "p" in v.obj],
    "what": [v for v in _MAIN_VERBS
             if v.frame == "acc" and any(t not in "pa" for t in v.obj)],
}
_TIME_ADVS = [a for a, (_, k) in _ADVERBS.items() if k == "time"]
_FREQ_ADVS = [a for a, (_, k) in _ADVERBS.items() if k == "freq"]
_MANNER_ADVS = [a for a, (_, k) in _ADVERBS.items() if k == "manner"]


def _sample_tense(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55:
        return "pres"
    if r < 0.73:
        return "perf"
    if r < 0.82:
        return "can"
    if r < 0.9:
        return "must"
    return "want"


def _sample_clause(rng: random.Random, *, front_ok: bool = False, rel_ok: bool = False,
                   wh: str | None = None, comp: bool = False, question: bool = False) -> Clause:
    # The parts are drawn in this order; reordering the draws would change every corpus.
    v = _sample_verb(rng, wh, comp)
    tense = _sample_tense(rng)
    subj = None if wh == "who" else _sample_subject(rng, v, question)
    obj, iobj, to_dative = _sample_objects(rng, v, wh)
    # "I see me" is not English; "we ... us" neither.
    if subj is not None and obj is not None and _is_pron(subj) and _is_pron(obj):
        if _PRONOUNS[subj.head].person == _PRONOUNS[obj.head].person != "3sg":
            obj = NP("they")
    pred, pps = _sample_complements(rng, v, subj, wh)
    adv, front = _sample_adverb(rng, v, tense, wh, front_ok)
    if rel_ok and rng.random() < 0.15:
        subj, obj = _sample_relative(rng, subj, obj, iobj, pps, adv, front)
    return Clause(subj, v.key, obj, iobj, pred, pps, adv, front, tense, to_dative)


def _sample_verb(rng: random.Random, wh: str | None, comp: bool) -> _Verb:
    if comp:
        return rng.choice(_COMP_VERBS)
    if wh in _WH_VERBS:
        return rng.choice(_WH_VERBS[wh])
    return rng.choices(_MAIN_VERBS, _MAIN_WEIGHTS)[0]


def _sample_subject(rng: random.Random, v: _Verb, question: bool) -> NP:
    prons = _pronouns_for(v.subj, subject=True)
    if question:  # "Do I ...?" is odd, and "Sehe ich" would be a rare capitalised verb
        prons = tuple(p for p in prons if p != "I")
    subj = _sample_np(rng, v.subj, pron=prons, subject=True)
    return _add_modifier(rng, subj, allow_with=True)


def _sample_objects(rng: random.Random, v: _Verb,
                    wh: str | None) -> tuple[NP | None, NP | None, bool]:
    """(direct object, indirect object, whether the indirect one takes "to") of verb `v`; a
    wh-question about the object leaves it out."""
    if v.frame in ("acc", "dat"):
        if wh not in ("whom", "what") and not (v.opt_obj and rng.random() < 0.25):
            obj = _sample_np(rng, v.obj, pron=_pronouns_for(v.obj, subject=False))
            return _add_modifier(rng, obj, allow_with=False), None, False
    elif v.frame == "ditr":
        iobj = _sample_np(rng, v.iobj, pron=_pronouns_for(v.iobj, subject=False))
        obj = _sample_np(rng, v.obj)
        return obj, iobj, rng.random() < 0.4
    return None, None, False


def _sample_complements(rng: random.Random, v: _Verb, subj: NP | None,
                        wh: str | None) -> tuple[str | None, tuple[PP, ...]]:
    """(predicate adjective, prepositional phrases): a copula takes an adjective that fits
    its subject, or a place; other verbs their prepositional phrases, sometimes."""
    if v.frame == "cop":
        if wh != "where" and rng.random() < 0.75:
            noun_classes = _NOUNS[subj.head].tags if subj and not _is_pron(subj) else "pa"
            adjs = [a.en for a in _ADJS.values() if any(c in a.cats for c in noun_classes
                                                          if c in _CLASS_LETTERS)]
            pred = rng.choice(adjs)
            return pred, ((_sample_pp(rng, v.pp_groups),) if rng.random() < 0.2 else ())
        return None, ((_sample_pp(rng, "L"),) if wh != "where" else ())
    if v.pp_groups and wh != "where":
        p_pp = 0.45 if v.frame == "motion" else 0.25
        if v.needs_pp or rng.random() < p_pp:
            return None, (_sample_pp(rng, v.pp_groups),)
    return None, ()


def _sample_adverb(rng: random.Random, v: _Verb, tense: str, wh: str | None,
                   front_ok: bool) -> tuple[str | None, bool]:
    """(adverb or None, whether it comes first in the sentence)."""
    if rng.random() >= 0.3:
        return None, False
    r = rng.random()
    if r < 0.45 and wh != "when":
        adv = rng.choice(_TIME_ADVS)
        if adv == "tomorrow" and tense == "perf":
            adv = "today"
        return adv, front_ok and rng.random() < 0.5
    if r < 0.8 or not v.manner:
        adv = rng.choice(_FREQ_ADVS)
        return adv, front_ok and adv in _FRONTABLE_FREQ and rng.random() < 0.3
    return rng.choice(_MANNER_ADVS), False


def _ends_clause(obj: NP | None, iobj: NP | None, pps: tuple[PP, ...], adv: str | None,
                 front: bool) -> bool:
    """Whether a noun object is the last thing in the English clause (no modifier of its own,
    nothing after it but a fronted or frequency adverb)."""
    return (obj is not None and iobj is None and not pps and not _is_pron(obj)
            and obj.of is None and (adv is None or front or _ADVERBS[adv][1] == "freq"))


def _sample_relative(rng: random.Random, subj: NP | None, obj: NP | None, iobj: NP | None,
                     pps: tuple[PP, ...], adv: str | None,
                     front: bool) -> tuple[NP | None, NP | None]:
    """(subject, object) with a relative clause on one of them: on the subject anywhere, on
    the object only when nothing follows it in English (so "... the dog that sleeps in the
    garden" never has two readings)."""
    if _ends_clause(obj, iobj, pps, adv, front) and rng.random() < 0.5:
        assert obj is not None
        return subj, replace(obj, rel=_sample_rel(rng, obj))
    if subj is not None and not _is_pron(subj) and subj.of is None and subj.with_ is None:
        return replace(subj, rel=_sample_rel(rng, subj)), obj
    return subj, obj


def _sample_sentence(rng: random.Random) -> Sentence:
    r = rng.random()
    if r < 0.42:
        return Sentence(_sample_clause(rng, front_ok=True, rel_ok=True))
    if r < 0.52:
        return Sentence(_sample_clause(rng, front_ok=True, comp=True), conj="that",
                        sub=_sample_clause(rng))
    if r < 0.74:
        conj = rng.choice(("because", "although", "if", "when", "while"))
        first = rng.random() < 0.4
        main = _sample_clause(rng, front_ok=not first)
        return Sentence(main, conj=conj, sub=_sample_clause(rng), sub_first=first)
    if r < 0.87:
        return Sentence(_sample_clause(rng, question=True), mood="ynq")
    wh = rng.choice(_WH_WORDS)
    return Sentence(_sample_clause(rng, wh=wh, question=True), mood="wh", wh=wh)


# ---------------------------------------------------------------------------------------------
# Public corpus API
# ---------------------------------------------------------------------------------------------


def iter_pairs(seed: int = DEFAULT_SEED, variant: int = 0) -> Iterator[tuple[str, str]]:
    """An endless, deterministic stream of (english, german) pairs for (seed, variant).

    Duplicates are allowed, which makes this the cheap way to build very large corpora;
    `variant` selects an independent stream for the same seed. No pair exceeds MAX_WORDS
    words on either side.
    """
    # A string seed is hashed with SHA-512 by `random`, so streams do not depend on
    # PYTHONHASHSEED and neighbouring (seed, variant) values are unrelated.
    rng = random.Random(f"builtin-corpus:{seed}:{variant}")
    while True:
        en, de = render(_sample_sentence(rng))
        if en.count(" ") < MAX_WORDS and de.count(" ") < MAX_WORDS:
            yield en, de


def generate_pairs(n: int, seed: int = DEFAULT_SEED) -> list[tuple[str, str]]:
    """`n` (english, german) pairs with distinct English sides, deterministic for (n, seed).

    They are the first `n` distinct-English pairs of `iter_pairs(seed)`, so a smaller `n` gives
    a prefix of a larger one. Raises ValueError if `n` is negative or more than the generator
    can produce uniquely within a bounded number of attempts.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > MAX_UNIQUE_PAIRS:
        raise ValueError(f"the built-in corpus offers at most {MAX_UNIQUE_PAIRS} unique pairs, "
                         f"{n} were asked for")
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    budget = 20 * n + 1000
    for attempt, (en, de) in enumerate(iter_pairs(seed)):
        if len(pairs) == n:
            break
        if attempt >= budget:
            raise ValueError(f"could only generate {len(pairs)} unique pairs of the {n} asked "
                             f"for in {budget} attempts")
        if en not in seen:
            seen.add(en)
            pairs.append((en, de))
    return pairs


def builtin_splits(size: int = 30000, seed: int = DEFAULT_SEED, valid_size: int = 1000,
                   test_size: int = 1000) -> dict[str, list[tuple[str, str]]]:
    """The built-in corpus as {"train", "valid", "test"} lists of (english, german) pairs.

    `size` pairs with distinct English sentences are generated and cut in order: train gets
    size - valid_size - test_size, then valid, then test. No English sentence of valid or test
    occurs in train. Deterministic for the arguments.
    """
    if valid_size < 0 or test_size < 0:
        raise ValueError("valid_size and test_size must be >= 0")
    n_train = size - valid_size - test_size
    if n_train < 1:
        raise ValueError(f"size {size} leaves no training pairs after {valid_size} valid and "
                         f"{test_size} test pairs")
    pairs = generate_pairs(size, seed)
    return {
        "train": pairs[:n_train],
        "valid": pairs[n_train:n_train + valid_size],
        "test": pairs[n_train + valid_size:],
    }
