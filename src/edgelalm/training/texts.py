"""English voice-assistant requests for synthetic speech, and the normalisation that scores them.

Every sentence is already normalised: lowercase words, numbers and times written the way espeak-ng
says them ("set a timer for twenty five minutes", "wake me up at seven thirty a m"), no punctuation
but word-internal apostrophes ("what's", "o'clock", "anna's"). So a rendered clip's transcript is
its text, and word error rate is computed on `normalize_transcript(hypothesis)` against it.

Sentences come from a small grammar: a symbol expands to one of its alternatives, and `{name}`
inside an alternative expands the symbol `name`. The grammar is data, in `data/grammar.json`
(symbols, templates, weights, and what grammar version 2 and the test split add) and
`data/words.json` (its word lists); `_grammar` reads them and fills in what is computed (number
words, durations, clock times, dates, unit conversions, the held-out values). The split is by
sentence:

- test-only slot values: a few contact names and cities (`HELD_OUT_NAMES`, `HELD_OUT_CITIES`) are
  in the test grammar only; a sentence holding one is always test;
- every other sentence is test when a hash of its text falls in the test bucket (`TEST_FRACTION`);
- `EXCLUDED_SENTENCES` (the repository's example clip) belong to neither split.

    utterances("train", 30000, seed=0)   # distinct sentences, the same list for the same seed
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

from edgelalm.errors import EdgelalmError

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


def check_split(split: str) -> Split:
    """`split` if it is one; the one error every split-taking function gives otherwise."""
    if split not in SPLITS:
        raise EdgelalmError(f"split must be 'train' or 'test', not {split!r}")
    return split


# The example clip shipped in examples/set-a-timer.wav: what `edgelalm run` is shown on, so the
# default model must not have trained on it.
EXAMPLE_SENTENCE = "set a timer for twenty minutes and remind me to call anna"
EXCLUDED_SENTENCES = frozenset({EXAMPLE_SENTENCE})

# Test-only slot values: single words that occur nowhere else in the grammar.
HELD_OUT_NAMES = ("priya", "tobias", "ingrid", "mateo", "yusuf", "keiko", "bruno", "freya")
HELD_OUT_CITIES = ("montreal", "nairobi", "osaka", "lisbon", "minneapolis", "brisbane", "santiago", "krakow")
HELD_OUT_WORDS = frozenset(HELD_OUT_NAMES + HELD_OUT_CITIES)

# Bumped whenever the grammar changes; a dataset records the version it was rendered from.
# 1: the first default model's stages 1-3; 2: 233 more contact names and 117 more cities
# (grammar.json's version_additions), so the model learns to spell names it has never heard (a
# contact list needs it; the held-out names measure it). Version 1 is kept, so the data of the
# default model's first stages can be rebuilt.
GRAMMAR_VERSIONS = (1, 2)
GRAMMAR_VERSION = GRAMMAR_VERSIONS[-1]

# Share of the sentences without a held-out value that the hash puts in test.
TEST_FRACTION = 0.1

# The characters of a normalised transcript (for a character-level tokenizer).
ALPHABET = " '0123456789abcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------------------------
# Numbers as words

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL_ONES = (
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()
_ORDINAL_TENS = "_ _ twentieth thirtieth".split()


def number_words(n: int) -> str:
    """0 <= n < 10**9 in words, as espeak-ng reads it: 125 -> "one hundred and twenty five"."""
    if not 0 <= n < 10**9:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for size, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            words = f"{number_words(head)} {name}"
            if rest:
                words += f" and {number_words(rest)}" if rest < 100 else f" {number_words(rest)}"
            return words
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    """1 <= n <= 31 as an ordinal: 21 -> "twenty first"."""
    if not 1 <= n <= 31:
        raise ValueError(f"ordinal out of range: {n}")
    if n < 20:
        return _ORDINAL_ONES[n]
    tens, ones = divmod(n, 10)
    return _ORDINAL_TENS[tens] if ones == 0 else f"{_TENS[tens]} {_ORDINAL_ONES[ones]}"


# ---------------------------------------------------------------------------------------------
# Normalisation

_APOSTROPHES = re.compile("[\u2018\u2019\u02bc`\u00b4]")
_AM_PM_DOTTED = re.compile(r"\b([ap])\.\s?m\b\.?")  # "a.m." "p.m" "a. m."
_AM_PM_AFTER_DIGIT = re.compile(r"(\d)\s?([ap])m\b")  # "7am" "7 pm"
_PM = re.compile(r"\bpm\b")  # "am" alone is the verb
_SEPARATORS = re.compile(r"[-\u2010-\u2015_/:]+")
_NOT_KEPT = re.compile(r"[^a-z0-9' ]+")
_DIGITS = re.compile(r"\d+")


def _digits_to_words(digits: str) -> str:
    if len(digits) > 9:
        return " ".join(_ONES[int(d)] for d in digits)
    if len(digits) > 1 and digits[0] == "0":
        return "oh " + _digits_to_words(digits[1:])  # "05" -> "oh five"
    return number_words(int(digits))


def normalize_transcript(text: str) -> str:
    """The normal form every sentence here is in, for model output and references alike.

    Lowercase; "a.m."/"7pm" -> "a m"/"seven p m"; hyphens, colons and slashes -> spaces; digits
    -> words ("25" -> "twenty five"); every other character but letters and apostrophes dropped;
    apostrophes kept only inside words; single spaces. Idempotent.
    """
    text = _APOSTROPHES.sub("'", text.lower())
    text = _AM_PM_DOTTED.sub(lambda m: f" {m.group(1)} m ", text)
    text = _AM_PM_AFTER_DIGIT.sub(lambda m: f"{m.group(1)} {m.group(2)} m ", text)
    text = _PM.sub(" p m ", text)
    text = _SEPARATORS.sub(" ", text)
    text = _NOT_KEPT.sub(" ", text)
    text = _DIGITS.sub(lambda m: f" {_digits_to_words(m.group(0))} ", text)
    words = (word.strip("'") for word in text.split())
    return " ".join(word for word in words if word)


# ---------------------------------------------------------------------------------------------
# The grammar

Alternative = str | tuple[str, float]  # a template, or (template, weight); weight 1 by default
Grammar = dict[str, Sequence[Alternative]]
_SLOT = re.compile(r"\{(\w+)\}")


# The grammar is data: its symbols, templates and fixed alternatives, and what grammar version 2 and
# the test split add, are in data/grammar.json; its word lists (weekdays, names, cities, items,
# rooms, ...) in data/words.json. Only number words, durations, clock times, dates, unit
# conversions and the held-out values are filled in here.
_GRAMMAR_FILE = Path(__file__).parent / "data" / "grammar.json"
_WORDS_FILE = Path(__file__).parent / "data" / "words.json"


@cache
def _word_lists() -> dict[str, tuple[str, ...]]:
    return {name: tuple(words) for name, words in json.loads(_WORDS_FILE.read_text(encoding="utf-8")).items()}


def word_list(name: str) -> list[str]:
    """A fresh copy of one of the grammar's word lists."""
    return list(_word_lists()[name])


def _durations(singular: bool) -> list[str]:
    """ "twenty five minutes" (singular=False) or "twenty five minute" (for "a ... timer")."""

    def unit(n: int, name: str) -> str:
        return f"{number_words(n)} {name}" + ("" if singular or n == 1 else "s")

    out = [unit(n, "minute") for n in range(1, 91)]
    out += [unit(n, "second") for n in range(5, 60, 5)] + [unit(90, "second")]
    out += [unit(n, "hour") for n in range(1, 13)]
    if not singular:
        out += ["a minute", "a second", "an hour", "half an hour", "an hour and a half", "a minute and a half"]
        out += [f"{unit(h, 'hour')} and {unit(m, 'minute')}" for h in (1, 2, 3) for m in range(5, 60, 5)]
        out += [f"{unit(m, 'minute')} and {unit(s, 'second')}" for m in range(1, 11) for s in (10, 15, 20, 30, 45)]
    else:
        out += ["half hour"]
    return out


def _clock_times() -> list[Alternative]:
    hours = [number_words(h) for h in range(1, 13)]
    minutes = ["o'clock"] + [f"oh {number_words(m)}" for m in range(1, 10)] + [number_words(m) for m in range(10, 60)]
    periods = ["a m", "p m", "in the morning", "in the afternoon", "in the evening", "at night"]
    plain = [f"{h} {m}" for h in hours for m in minutes]
    out: list[Alternative] = []
    out += [(t, 1.0) for t in plain]
    out += [(f"{h} {p}", 2.0) for h in hours for p in periods]
    out += [(f"{t} {p}", 1.0) for t in plain for p in periods]
    out += [
        (f"{q} {h}", 2.0)
        for q in (
            "quarter past",
            "half past",
            "quarter to",
            "ten past",
            "twenty past",
            "five to",
            "ten to",
            "twenty to",
            "twenty five past",
        )
        for h in hours
    ]
    out += [("noon", 20.0), ("midnight", 20.0)]
    return out


_SINGULAR_UNITS = {
    "inches": "inch",
    "feet": "foot",
    "yards": "yard",
    "miles": "mile",
    "centimeters": "centimeter",
    "meters": "meter",
    "kilometers": "kilometer",
    "ounces": "ounce",
    "pounds": "pound",
    "grams": "gram",
    "kilograms": "kilogram",
    "teaspoons": "teaspoon",
    "tablespoons": "tablespoon",
    "cups": "cup",
    "pints": "pint",
    "quarts": "quart",
    "gallons": "gallon",
    "milliliters": "milliliter",
    "liters": "liter",
}


def _conversions() -> list[str]:
    """Questions converting between every two units of a kind ("convert {amount} feet to meters")."""
    groups = [
        "inches feet yards miles centimeters meters kilometers",
        "ounces pounds grams kilograms",
        "teaspoons tablespoons cups pints quarts gallons milliliters liters",
    ]
    pairs = []
    for group in groups:
        units = group.split()
        pairs += [(a, b) for a in units for b in units if a != b]
    out = []
    for a, b in pairs:
        out += [
            f"how many {a} are in {{amount}} {b}",
            f"convert {{amount}} {a} to {b}",
            f"what is {{amount}} {a} in {b}",
            f"how many {a} in a {_SINGULAR_UNITS[b]}",
        ]
    return out


def _dates() -> list[str]:
    """ "march twenty first" for every day of the year (february 29 too), then "the twenty first"."""
    short = ("april", "june", "september", "november")
    out = [
        f"{m} {ordinal_words(d)}"
        for m in word_list("months")
        for d in range(1, 32)
        if not (m == "february" and d > 29) and not (m in short and d > 30)
    ]
    return out + [f"the {ordinal_words(d)}" for d in range(1, 32)]


# What a {"generated": name} alternative of grammar.json stands for.
_GENERATED: dict[str, Callable[[], Sequence[Alternative]]] = {
    "durations": lambda: _durations(singular=False),
    "singular_durations": lambda: _durations(singular=True),
    "clock_times": _clock_times,
    "dates": _dates,
    "weekday_plurals": lambda: [f"{day}s" for day in word_list("weekdays")],
    "unit_conversions": _conversions,
    "held_out_names": lambda: HELD_OUT_NAMES,
    "held_out_cities": lambda: HELD_OUT_CITIES,
}


@cache
def _grammar_file() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_GRAMMAR_FILE.read_text(encoding="utf-8"))
    return data


def _alternatives(entries: list[Any]) -> list[Alternative]:
    """grammar.json's alternatives of one symbol, its word lists, numbers and generated parts filled in."""
    out: list[Alternative] = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(entry)
        elif isinstance(entry, list):
            text, weight = entry
            out.append((text, float(weight)))
        elif "words" in entry:
            out += [word.lower() for word in _word_lists()[entry["words"]]]
        elif "numbers" in entry:
            first, last = entry["numbers"]
            numbers = [number_words(n) for n in range(first, last + 1, entry.get("step", 1))]
            out += [(n, float(entry["weight"])) for n in numbers] if "weight" in entry else numbers
        elif "generated" in entry:
            out += _GENERATED[entry["generated"]]()
        else:
            raise AssertionError(f"grammar.json: unknown alternative {entry!r}")
    return out


def _grammar(split: Split, version: int) -> Grammar:
    """`split`'s grammar of `version`: grammar.json's symbols plus the version's and split's additions."""
    data = _grammar_file()
    grammar: Grammar = {symbol: _alternatives(entries) for symbol, entries in data["symbols"].items()}
    additions = [symbols for v, symbols in data["version_additions"].items() if int(v) <= version]
    additions.append(data["split_additions"].get(split, {}))
    for symbols in additions:
        for symbol, entries in symbols.items():
            grammar[symbol] = [*grammar[symbol], *_alternatives(entries)]
    return grammar


# The request categories. Their fixed sentences ("snooze", "what time is it") weigh less than their
# templates by default: a fixed sentence can be drawn only once per list.
_CATEGORIES = frozenset(
    {
        "timer",
        "alarm",
        "reminder",
        "weather",
        "call",
        "home",
        "music",
        "shopping",
        "conversion",
        "navigation",
        "calendar",
        "question",
        "compound",
    }
)
_FIXED_SENTENCE_WEIGHT = 0.2


@cache
def _compiled(split: Split, version: int) -> dict[str, tuple[list[str], list[float]]]:
    if version not in GRAMMAR_VERSIONS:
        raise ValueError(f"grammar version must be one of {GRAMMAR_VERSIONS}, not {version!r}")
    grammar = _grammar(split, version)
    compiled = {}
    for symbol, alternatives in grammar.items():
        texts = [a[0] if isinstance(a, tuple) else a for a in alternatives]
        default = _FIXED_SENTENCE_WEIGHT if symbol in _CATEGORIES else 1.0
        weights = [float(a[1]) if isinstance(a, tuple) else (1.0 if _SLOT.search(a) else default) for a in alternatives]
        for text in texts:
            for slot in _SLOT.findall(text):
                if slot not in grammar:
                    raise AssertionError(f"grammar symbol {symbol!r} refers to unknown {{{slot}}}")
        compiled[symbol] = (texts, weights)
    return compiled


def _expand(grammar: dict[str, tuple[list[str], list[float]]], symbol: str, rng: random.Random) -> str:
    texts, weights = grammar[symbol]
    text = rng.choices(texts, weights)[0]
    return _SLOT.sub(lambda m: _expand(grammar, m.group(1), rng), text)


def sample_sentence(split: Split, rng: random.Random, grammar_version: int = GRAMMAR_VERSION) -> str:
    """One sentence from `split`'s grammar, not yet filtered by the split (see `split_of`)."""
    check_split(split)
    return " ".join(_expand(_compiled(split, grammar_version), "sentence", rng).split())


def stable_fraction(text: str) -> float:
    """A fraction in [0, 1) fixed by `text` alone, on any machine and Python (hash() is salted per
    process): what puts a sentence or a voice in its split."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(sentence: str) -> Split | None:
    """The split a (normalised) sentence belongs to; None for the excluded example sentences."""
    if sentence in EXCLUDED_SENTENCES:
        return None
    if any(word.removesuffix("'s") in HELD_OUT_WORDS for word in sentence.split()):
        return "test"
    return "test" if stable_fraction(sentence) < TEST_FRACTION else "train"


def iter_utterances(split: Split, seed: int, grammar_version: int = GRAMMAR_VERSION) -> Iterator[str]:
    """Distinct sentences of `split`, an endless deterministic stream for `seed`.

    Any prefix of it is `utterances(split, len(prefix), seed, grammar_version)`.
    """
    rng = random.Random(f"edgelalm-texts:{split}:{seed}")
    seen: set[str] = set()
    misses = 0
    while True:
        sentence = sample_sentence(split, rng, grammar_version)
        if sentence in seen or split_of(sentence) != split:
            misses += 1
            if misses > 100_000:
                raise RuntimeError(f"the {split} grammar ran out of new sentences after {len(seen)}")
            continue
        misses = 0
        seen.add(sentence)
        yield sentence


def utterances(split: Split, count: int, seed: int, grammar_version: int = GRAMMAR_VERSION) -> list[str]:
    """`count` distinct sentences of `split`; the same list for the same arguments.

    No test sentence is ever a train sentence (whatever the seeds), test alone holds the held-out
    names and cities, and `EXAMPLE_SENTENCE` is in neither.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    stream = iter_utterances(split, seed, grammar_version)
    return [next(stream) for _ in range(count)]


def _symbol_sizes(split: Split, version: int) -> dict[str, int]:
    grammar = _compiled(split, version)
    sizes: dict[str, int] = {}

    def size(symbol: str) -> int:
        if symbol not in sizes:
            total = 0
            for text in grammar[symbol][0]:
                product = 1
                for slot in _SLOT.findall(text):
                    product *= size(slot)
                total += product
            sizes[symbol] = total
        return sizes[symbol]

    for symbol in grammar:
        size(symbol)
    return sizes


def derivation_count(split: Split, grammar_version: int = GRAMMAR_VERSION) -> int:
    """How many derivations `split`'s grammar has: an upper bound on its distinct sentences
    (before the hash split, and counting a string reachable in two ways twice)."""
    return _symbol_sizes(split, grammar_version)["sentence"]


def vocabulary(split: Split | None = None, grammar_version: int = GRAMMAR_VERSION) -> list[str]:
    """Every word a sentence of `split` (None: of either split) can contain, sorted."""
    words: set[str] = set()
    for name in SPLITS if split is None else (split,):
        grammar = _compiled(name, grammar_version)
        for texts, _ in grammar.values():
            for text in texts:
                words.update(word for word in _SLOT.sub(" ", text).split() if word != "'s")
        # "{name}'s house": the possessive of every name of the split
        words.update(f"{person}'s" for person in grammar["train_name"][0] + grammar["held_name"][0])
    return sorted(words)
