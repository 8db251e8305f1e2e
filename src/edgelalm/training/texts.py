"""English voice-assistant requests for synthetic speech, and the normalisation that scores them.

Every sentence is already normalised: lowercase words, numbers and times written the way espeak-ng
says them ("set a timer for twenty five minutes", "wake me up at seven thirty a m"), no punctuation
but word-internal apostrophes ("what's", "o'clock", "anna's"). So a rendered clip's transcript is
its text, and word error rate is computed on `normalize_transcript(hypothesis)` against it.

Sentences come from a small grammar (`_grammar`): a symbol expands to one of its alternatives, and
`{name}` inside an alternative expands the symbol `name`. The split is by sentence:

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
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Literal

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
# 1: the first default model's stages 1-3; 2: 233 more contact names and 117 more cities.
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


# The grammar's word lists (weekdays, names, cities, items, rooms, ...) are data: data/words.json.
_WORDS_FILE = Path(__file__).parent / "data" / "words.json"


@cache
def _word_lists() -> dict[str, tuple[str, ...]]:
    return {name: tuple(words) for name, words in json.loads(_WORDS_FILE.read_text(encoding="utf-8")).items()}


def word_list(name: str) -> list[str]:
    """A fresh copy of one of the grammar's word lists."""
    return list(_word_lists()[name])


# Grammar version 2 adds these contact names and cities, so the model learns to spell names it has
# never heard (a contact list needs it; the held-out names measure it). Version 1 is kept, so the
# data of the default model's first stages can be rebuilt.
_MORE_NAMES = word_list("more_names")
_MORE_CITIES = word_list("more_cities")


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
    out += [
        "what is {amount} degrees fahrenheit in celsius",
        "convert {amount} degrees celsius to fahrenheit",
        "what's {amount} degrees celsius in fahrenheit",
        "convert {amount} dollars to euros",
        "how much is {amount} euros in dollars",
        "how much is {amount} pounds in dollars",
        "convert {amount} yen to dollars",
    ]
    return out


def _grammar(split: Split, version: int) -> Grammar:
    weekdays = word_list("weekdays")
    months = word_list("months")
    names = word_list("names")
    cities = word_list("cities")
    items = word_list("items")
    rooms = word_list("rooms")
    lights = word_list("lights")
    devices = word_list("devices")
    genres = word_list("genres")
    playlists = word_list("playlists")
    pois = word_list("pois")
    events = word_list("events")
    foods = word_list("foods")
    pets = word_list("pets")
    colors = word_list("colors")
    countries = word_list("countries")
    spell_words = word_list("spell_words")
    spell_words = [w.lower() for w in spell_words]
    holidays = word_list("holidays")
    topics = word_list("topics")

    held_names = list(HELD_OUT_NAMES) if split == "test" else []
    held_cities = list(HELD_OUT_CITIES) if split == "test" else []

    g: Grammar = {
        # --- shared slots
        "name": ["{train_name}", "{held_name}"] if held_names else ["{train_name}"],
        "train_name": names + (_MORE_NAMES if version >= 2 else []),
        "held_name": held_names,
        "contact": [
            ("{name}", 6.0),
            "mom",
            "dad",
            "grandma",
            "grandpa",
            "my sister",
            "my brother",
            "my wife",
            "my husband",
            "my boss",
            "the office",
            "the doctor",
            "the dentist",
            "the school",
            "home",
        ],
        "city": ["{train_city}", "{held_city}"] if held_cities else ["{train_city}"],
        "train_city": cities + (_MORE_CITIES if version >= 2 else []),
        "held_city": held_cities,
        "n": [number_words(n) for n in range(1, 100)],
        "small": [number_words(n) for n in range(2, 13)],
        "minutes": [number_words(n) for n in range(2, 31)],
        "amount": [(number_words(n), 1.0) for n in range(1, 101)]
        + [(number_words(n), 0.5) for n in range(110, 1001, 10)]
        + ["half a", "a quarter of a"],
        "percent": [number_words(n) for n in range(5, 101, 5)],
        "degrees": [number_words(n) for n in range(16, 31)] + [number_words(n) for n in range(60, 81)],
        "duration": _durations(singular=False),
        "duration_adj": _durations(singular=True),
        "time": _clock_times(),
        "weekday": weekdays,
        "weekdays": [f"{d}s" for d in weekdays] + ["weekdays", "weekends"],
        "date": [
            f"{m} {ordinal_words(d)}"
            for m in months
            for d in range(1, 32)
            if not (m == "february" and d > 29) and not (m in ("april", "june", "september", "november") and d > 30)
        ]
        + [f"the {ordinal_words(d)}" for d in range(1, 32)],
        "when": [
            ("today", 4.0),
            ("tomorrow", 6.0),
            ("tonight", 3.0),
            "this morning",
            "this afternoon",
            "this evening",
            "tomorrow morning",
            "tomorrow afternoon",
            "tomorrow evening",
            "tomorrow night",
            ("on {weekday}", 7.0),
            ("next {weekday}", 4.0),
            ("this {weekday}", 2.0),
            ("on {weekday} morning", 2.0),
            ("on {weekday} evening", 2.0),
            "this weekend",
            "next weekend",
            "next week",
            "later today",
            ("on {date}", 3.0),
        ],
        "day": [
            ("today", 3.0),
            ("tomorrow", 3.0),
            ("{weekday}", 4.0),
            "the weekend",
            "next week",
            "tonight",
            "this weekend",
        ],
        "item": items,
        "two_items": ["{item} and {item}", "{item} {item} and {item}"],
        "room": rooms,
        "light": lights,
        "device": devices,
        "color": colors,
        "genre": genres,
        "playlist": playlists,
        "poi": pois,
        "event": [(e, 1.0) for e in events]
        + [
            ("lunch with {name}", 3.0),
            ("dinner with {name}", 3.0),
            ("coffee with {name}", 2.0),
            ("a call with {name}", 2.0),
        ],
        "food": foods,
        "pet": pets,
        "country": countries,
        "spell_word": spell_words,
        "holiday": holidays,
        "topic": topics,
        "place": [
            "home",
            "work",
            "the office",
            "the airport",
            "the train station",
            "the hospital",
            "the mall",
            "downtown",
            "the beach",
            "the gym",
            "the library",
            "school",
            "the stadium",
            "the city center",
            ("{name}'s house", 4.0),
            ("{city}", 4.0),
            ("the nearest {poi}", 4.0),
            ("the closest {poi}", 2.0),
        ],
        "please": [("", 8.0), "please"],
        "ask": [("", 10.0), ("please", 2.0), "can you", "could you", "hey can you", "would you", "can you please"],
        "phone": ["mobile", "cell", "work phone", "home phone", "speaker", "speakerphone"],
        "message": [
            "i'm on my way",
            "i'll be there in {duration}",
            "i'm running {minutes} minutes late",
            "i'm running late",
            "see you at {time}",
            "call me back",
            "can you pick up {item}",
            "happy birthday",
            "thank you",
            "thanks",
            "good night",
            "good morning",
            "dinner is ready",
            "don't forget the {item}",
            "i love you",
            "where are you",
            "i'm home",
            "let's meet at {place}",
            "i'll call you later",
            "on my way home",
            "i'm stuck in traffic",
            "can we talk {when}",
            "the meeting is at {time}",
            "we need {item}",
            "i'm leaving now",
            "running {minutes} minutes behind",
            "did you feed the {pet}",
            "are you free {when}",
            "sounds good",
            "see you {when}",
            "i just landed in {city}",
            "what time are you coming home",
            "lunch at {time}",
            "i can't make it {when}",
            "meet me at the {poi}",
        ],
        "task": [
            ("call {contact}", 4.0),
            "text {contact}",
            "email {name}",
            "take out the trash",
            "water the plants",
            ("buy {item}", 3.0),
            ("pick up {item}", 2.0),
            "pick up {name} from school",
            "pick up the kids",
            "take my medicine",
            "take my vitamins",
            "feed the {pet}",
            "walk the dog",
            "pay the electricity bill",
            "pay the rent",
            "book a table for {small}",
            "check the oven",
            "charge my phone",
            "move the car",
            "lock the door",
            "turn off the {device}",
            "do the laundry",
            "renew my passport",
            "send {name} a birthday card",
            "stretch",
            "drink some water",
            "go to the gym",
            "submit the report",
            "back up my laptop",
            "check the mail",
            "clean the {room}",
            "get gas",
            "return the library books",
            "buy a present for {name}",
            "reply to {name}",
            "leave for the airport",
            "start dinner",
            "check on {name}",
            "book my {event}",
            "cancel my {event}",
            "put the {item} in the fridge",
            "set the table",
            "empty the dishwasher",
            "bring an umbrella",
            "wish {name} happy birthday",
        ],
        # --- categories
        "timer": [
            "{ask} set a timer for {duration} {please}",
            ("set a {duration_adj} timer", 2.0),
            "start a timer for {duration}",
            "timer for {duration}",
            "{ask} start a {duration_adj} timer",
            "set a {food} timer for {duration}",
            "set a timer for {duration} for the {food}",
            "how much time is left on the timer",
            "how much time is left on my {food} timer",
            "how much time is left",
            "cancel the timer",
            "stop the timer",
            "pause the timer",
            "resume the timer",
            "add {duration} to the timer",
            "cancel all timers",
            "cancel the {food} timer",
            "set another timer for {duration}",
            "show my timers",
            "restart the timer",
            "start a countdown for {duration}",
            "{ask} time {duration} for me",
        ],
        "alarm": [
            ("{ask} wake me up at {time}", 3.0),
            "wake me up at {time} {when}",
            "wake me up in {duration}",
            ("{ask} set an alarm for {time}", 3.0),
            ("set an alarm for {time} {when}", 2.0),
            "set an alarm for {time} every {weekday}",
            "set an alarm for {time} on {weekdays}",
            "set an alarm in {duration}",
            "turn off my {time} alarm",
            "cancel my alarm for {when}",
            "snooze for {minutes} minutes",
            "snooze",
            "what time is my alarm",
            "when is my next alarm",
            "delete all alarms",
            "change my {time} alarm to {time}",
            "move my alarm to {time}",
            "turn off all alarms for {when}",
            "set a repeating alarm for {time} on {weekdays}",
            "do i have an alarm set for {when}",
        ],
        "reminder": [
            ("{ask} remind me to {task}", 2.0),
            ("remind me to {task} {when}", 3.0),
            ("remind me to {task} at {time}", 3.0),
            ("remind me {when} at {time} to {task}", 2.0),
            ("remind me in {duration} to {task}", 2.0),
            "remind me to {task} in {duration}",
            "remind me to {task} when i get home",
            "remind me to {task} when i leave work",
            "remind me to {task} every {weekday}",
            "remind me to {task} on {date}",
            "remind me about the {event} {when}",
            "what are my reminders",
            "what are my reminders for {when}",
            "delete my reminder to {task}",
            "create a reminder to {task} {when}",
            "set a reminder for {time} to {task}",
            "don't let me forget to {task}",
        ],
        "weather": [
            ("what's the weather {when}", 2.0),
            ("what's the weather in {city} {when}", 2.0),
            ("what's the weather like in {city}", 2.0),
            "what's the weather like {when}",
            "will it rain {when}",
            "is it going to rain in {city} {when}",
            "do i need an umbrella {when}",
            "do i need a jacket {when}",
            "how hot will it be {when}",
            "how cold is it going to be {when}",
            "what's the temperature in {city}",
            "what's the temperature outside",
            "is it going to snow {when}",
            "is it going to snow in {city} {when}",
            "how windy is it outside",
            "what's the forecast for {day}",
            "what's the forecast for {city} {when}",
            "will it be sunny {when}",
            "when will it stop raining",
            "what's the humidity in {city}",
            "is it cold in {city} right now",
            "what's the high {when}",
            "what's the low {when}",
            "when is sunset {when}",
            "what time is sunrise {when}",
            "what's the air quality in {city}",
            "is there a storm coming",
            "what's the uv index {when}",
        ],
        "call": [
            ("{ask} call {contact}", 4.0),
            "call {contact} on {phone}",
            "call {name}'s {phone}",
            "video call {contact}",
            "phone {contact}",
            ("text {contact} {message}", 3.0),
            ("send a message to {contact} saying {message}", 3.0),
            ("tell {contact} {message}", 2.0),
            "reply {message}",
            "read my messages",
            "read my last message from {contact}",
            "did {name} call",
            "any new messages",
            "do i have any missed calls",
            "send an email to {contact} about {topic}",
            "email {name} about {topic}",
            "hang up",
            "redial",
            "call back",
            "who called me {when}",
            "call my voicemail",
            "send {name} a text saying {message}",
            "message {name} {message}",
            "text {name} that {message}",
            "what did {name} say",
            "call {name} back",
            "start a group call with {name} and {name}",
        ],
        "home": [
            ("{ask} turn on the {light} in the {room}", 3.0),
            ("{ask} turn off the {light} in the {room}", 3.0),
            ("turn on the {room} {light}", 2.0),
            ("turn off the {room} {light}", 2.0),
            "switch on the {device}",
            "switch off the {device} in the {room}",
            ("turn on the {device}", 2.0),
            ("turn off the {device}", 2.0),
            "turn the {device} in the {room} off",
            "dim the {room} lights to {percent} percent",
            "dim the lights",
            "brighten the lights in the {room}",
            "set the {room} lights to {percent} percent",
            "set the {room} lights to {color}",
            "change the lights to {color}",
            "set the thermostat to {degrees} degrees",
            "set the {room} to {degrees} degrees",
            "make it warmer in the {room}",
            "make it cooler in here",
            "turn the heat up",
            "turn the heat down",
            "turn up the heat by {small} degrees",
            "what's the temperature in the {room}",
            "lock the front door",
            "unlock the back door",
            "is the front door locked",
            "is the garage door closed",
            "close the garage door",
            "open the garage door",
            "open the blinds in the {room}",
            "close the curtains in the {room}",
            "start the robot vacuum",
            "vacuum the {room}",
            "stop the robot vacuum",
            "are the lights on in the {room}",
            "turn everything off",
            "turn off all the lights",
            "turn on all the lights downstairs",
            "good night",
            "i'm leaving",
            "i'm home",
            "start the {device} in {duration}",
            "turn off the {device} in {duration}",
            "is the {device} on",
            "run the dishwasher at {time}",
            "turn on movie mode",
            "arm the security system",
            "show me the front door camera",
            "set the fan to speed {small}",
        ],
        "music": [
            ("{ask} play some {genre}", 3.0),
            "play {genre} in the {room}",
            "play my {playlist} playlist",
            "play the {playlist} playlist in the {room}",
            "pause the music",
            "pause",
            "resume the music",
            "stop the music",
            "next song",
            "skip this song",
            "previous track",
            "play that again",
            "turn it up",
            "turn it down",
            "turn the volume up",
            "turn the volume down",
            "set the volume to {n}",
            "volume {small}",
            "set the volume to {percent} percent",
            "who sings this song",
            "what song is this",
            "shuffle my music",
            "repeat this song",
            "like this song",
            "add this song to my {playlist} playlist",
            "play {genre} for {duration}",
            "stop playing in {duration}",
            "play something i like",
            "play music in every room",
            "mute",
            "unmute",
            "play the next episode",
            "skip ahead {n} seconds",
            "go back {n} seconds",
        ],
        "shopping": [
            ("{ask} add {item} to my shopping list", 4.0),
            ("add {two_items} to the grocery list", 2.0),
            "put {item} on my list",
            "put {item} on the shopping list",
            "remove {item} from my shopping list",
            "take {item} off the list",
            "do i need {item}",
            "is {item} on my shopping list",
            "what's on my shopping list",
            "read my shopping list",
            "clear my shopping list",
            "add {small} {item} to my list",
            "i need {item}",
            "we're out of {item}",
            "order more {item}",
            "reorder {item}",
            "how much is {item}",
            "add {item} to the list for {name}",
        ],
        "conversion": _conversions()
        + [
            "how many days until {holiday}",
            "how many weeks are in a year",
            "how many seconds are in a day",
            "how many minutes are in {small} hours",
        ],
        "navigation": [
            ("{ask} navigate to {place}", 3.0),
            ("take me to {place}", 2.0),
            "directions to {place}",
            ("get directions to {place}", 2.0),
            "how long does it take to get to {place}",
            "how far is {city} from here",
            "how far is it to {place}",
            "find the nearest {poi}",
            "is there a {poi} near me",
            "where's the closest {poi}",
            "how's the traffic on the way to {place}",
            "how's traffic to {place}",
            "avoid highways",
            "avoid tolls",
            "what's my eta",
            "take me home",
            "share my eta with {name}",
            "when will i get to {place}",
            "find a {poi} on the way",
            "add a stop at the nearest {poi}",
            "cancel navigation",
            "how far am i from {place}",
            "show me the route to {place}",
            "what's the fastest way to {place}",
            "walking directions to {place}",
            "how long is the drive to {city}",
            "drive to {name}'s house",
            "find parking near {place}",
            "is the {poi} open right now",
            "when does the {poi} close",
        ],
        "calendar": [
            ("what's on my calendar {when}", 2.0),
            ("what do i have {when}", 2.0),
            ("schedule a meeting with {name} {when} at {time}", 2.0),
            ("add {event} to my calendar {when} at {time}", 2.0),
            "add {event} to my calendar on {date}",
            "cancel my {time} meeting",
            "move my {event} to {when}",
            "move my {event} to {time}",
            "when is my next meeting",
            "when is my {event}",
            "am i free {when} at {time}",
            "am i free {when}",
            "create an event called {event} {when}",
            "schedule {event} for {when} at {time}",
            "what's my first meeting {when}",
            "do i have anything on {date}",
            "invite {name} to my {event}",
            "book a meeting room for {time}",
            "clear my calendar for {when}",
            "how many meetings do i have {when}",
            "when is {name}'s birthday",
            "what's happening this week",
            "reschedule my {event} to {date}",
            "push my {time} meeting back by {duration}",
        ],
        "question": [
            ("what time is it", 3.0),
            ("what time is it in {city}", 2.0),
            "what's today's date",
            "what day is it",
            "what's the date {when}",
            "what's {n} plus {n}",
            "what's {n} minus {n}",
            "what's {n} times {n}",
            "what is {n} divided by {small}",
            "what's {percent} percent of {amount}",
            "what's the square root of {n}",
            "how do you spell {spell_word}",
            "what does {spell_word} mean",
            "spell {spell_word}",
            "tell me a joke",
            "tell me a fun fact",
            "flip a coin",
            "roll a dice",
            "pick a number between one and {n}",
            "what's the capital of {country}",
            "how many people live in {country}",
            "what language do they speak in {country}",
            "what's the time difference between {city} and {city}",
            "who are you",
            "what can you do",
            "thank you",
            "how are you",
            "good morning",
            "good night",
            "what's the news",
            "what's the latest news",
            "stop",
            "cancel",
            "never mind",
            "repeat that",
            "say that again",
            "what's the score of the game",
            "how's my commute",
            "what's the exchange rate for {country}",
            "how far is the moon",
            "how tall is mount everest",
            "what year is it",
            "how many days are in {month_name}",
            "what day of the week is {date}",
            "set my status to busy",
            "find my phone",
            "turn on do not disturb",
            "turn off do not disturb",
            "turn on bluetooth",
            "turn off wifi",
            "take a screenshot",
            "open the camera",
            "take a selfie",
            "what's my battery level",
            "turn on the flashlight",
            "how many calories are in {item}",
            "what's a good recipe for {item}",
            "what's on tv tonight",
        ],
        "month_name": months,
        "compound": [
            ("set a timer for {duration} and remind me to {task}", 4.0),
            "set an alarm for {time} and remind me to {task}",
            "turn off the {light} and play some {genre}",
            "turn off the {light} in the {room} and lock the front door",
            "add {item} to my shopping list and remind me to {task}",
            "call {contact} and tell them {message}",
            "remind me to {task} and {task}",
            "pause the music and set a timer for {duration}",
            "what's the weather {when} and do i need an umbrella",
            "turn on the {device} and set a timer for {duration}",
            "play some {genre} and dim the lights",
            "set a timer for {duration} and turn off the {device}",
            "navigate to {place} and text {name} {message}",
        ],
        "sentence": [
            ("{timer}", 12.0),
            ("{alarm}", 10.0),
            ("{reminder}", 12.0),
            ("{weather}", 9.0),
            ("{call}", 10.0),
            ("{home}", 12.0),
            ("{music}", 8.0),
            ("{shopping}", 7.0),
            ("{conversion}", 5.0),
            ("{navigation}", 6.0),
            ("{calendar}", 7.0),
            ("{question}", 7.0),
            ("{compound}", 6.0),
        ],
    }
    return g


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


def _bucket(sentence: str) -> float:
    digest = hashlib.blake2b(sentence.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(sentence: str) -> Split | None:
    """The split a (normalised) sentence belongs to; None for the excluded example sentences."""
    if sentence in EXCLUDED_SENTENCES:
        return None
    if any(word.removesuffix("'s") in HELD_OUT_WORDS for word in sentence.split()):
        return "test"
    return "test" if _bucket(sentence) < TEST_FRACTION else "train"


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
