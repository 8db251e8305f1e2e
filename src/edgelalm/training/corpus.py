"""What the default model hears in training (issue 15): a mixture the decoder cannot memorise.

    for text in iter_texts("train", seed=0): ...   # Text(kind, spoken, transcript), endless

Kinds, drawn by `MIX`:

- "command": a voice-assistant request from the grammar of `texts` (its split rules hold);
- "words": a free sequence of 2-14 words from a broad English vocabulary (data/common_words.txt,
  frequent words more often), with numbers and contact names at any position: no sentence prior
  predicts the next word, so only the audio can;
- "requests": two or three grammar requests in one clip (the synthesizer reads them with a pause);
- "silence": no speech at all (the renderer fills the clip with silence or noise); the answer is
  empty.

`iter_long_texts` joins consecutive texts of that stream into "long" ones of 35-65 words (15-30 s
of speech): the tower encodes them as one window, as the runtime does a long clip's.
`iter_sentence_texts` reads sentences from a file instead (kind "prose": English prose, for
clips of words in the contexts people say them; recipes/default_model/make_lm_text.py writes one).

Transcripts are normalised as `texts` normalises (lowercase words, numbers as words). A "words"
or "requests" text is test when a hash of its transcript falls in the test bucket, as grammar
sentences are; held-out names stay in the test split.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

from edgelalm.training import texts
from edgelalm.training.texts import Split

Kind = Literal["command", "words", "requests", "silence", "long", "prose"]
MIX: dict[Kind, float] = {"command": 0.4, "words": 0.35, "requests": 0.15, "silence": 0.1}
CORPUS_VERSION = 1  # bumped whenever what iter_texts yields changes

_COMMON_WORDS_FILE = Path(__file__).parent / "data" / "common_words.txt"
WORDS_PER_SEQUENCE = (2, 14)
WORDS_PER_LONG_TEXT = (35, 65)
NUMBER_PROBABILITY = 0.08  # per word position: a number ("four hundred and twelve")
NAME_PROBABILITY = 0.05  # per word position: a contact name
# Word rank r is drawn with weight 1 / (r + RANK_OFFSET): frequent words often, rare ones still seen.
RANK_OFFSET = 50


@dataclass(frozen=True)
class Text:
    kind: Kind
    spoken: str  # what the synthesizer reads
    transcript: str  # the answer the model must give ("" for silence)


@cache
def common_words() -> tuple[str, ...]:
    """The broad vocabulary, most frequent first (see recipes/default_model/make_word_list.py)."""
    return tuple(line for line in _COMMON_WORDS_FILE.read_text(encoding="utf-8").split() if line)


@cache
def _rank_cumulative() -> np.ndarray:
    weights = 1.0 / (np.arange(len(common_words())) + RANK_OFFSET)
    cumulative = np.cumsum(weights)
    return cumulative / cumulative[-1]


def _names(split: Split) -> list[str]:
    names = texts.word_list("names") + texts.word_list("more_names")
    return names + list(texts.HELD_OUT_NAMES) if split == "test" else names


def _number(rng: random.Random) -> str:
    return texts.number_words(rng.choice((rng.randrange(0, 20), rng.randrange(20, 100), rng.randrange(100, 10000))))


def word_sequence(split: Split, rng: random.Random) -> str:
    """2-14 words: common words, with numbers and names at random positions."""
    words = common_words()
    names = _names(split)
    out = []
    for _ in range(rng.randint(*WORDS_PER_SEQUENCE)):
        draw = rng.random()
        if draw < NUMBER_PROBABILITY:
            out.append(_number(rng))
        elif draw < NUMBER_PROBABILITY + NAME_PROBABILITY:
            out.append(rng.choice(names))
        else:
            out.append(words[int(np.searchsorted(_rank_cumulative(), rng.random()))])
    return " ".join(out)


def _command(split: Split, rng: random.Random) -> str:
    while True:
        sentence = texts.sample_sentence(split, rng)
        if texts.split_of(sentence) == split:
            return sentence


def _kind(rng: random.Random) -> Kind:
    draw, total = rng.random(), 0.0
    for kind, weight in MIX.items():
        total += weight
        if draw < total:
            return kind
    return "command"


def sample_text(split: Split, rng: random.Random) -> Text:
    """One text of `split` (its split already checked)."""
    kind = _kind(rng)
    if kind == "silence":
        return Text(kind, "", "")
    if kind == "command":
        sentence = _command(split, rng)
        return Text(kind, sentence, sentence)
    while True:
        if kind == "words":
            spoken = transcript = word_sequence(split, rng)
        else:
            sentences = [_command(split, rng) for _ in range(rng.randint(2, 3))]
            spoken, transcript = ". ".join(sentences) + ".", " ".join(sentences)
        held_out = any(word.removesuffix("'s") in texts.HELD_OUT_WORDS for word in transcript.split())
        if (texts.split_of(transcript) if not held_out else "test") == split:
            return Text(kind, spoken, transcript)


def iter_texts(split: Split, seed: int) -> Iterator[Text]:
    """The endless, deterministic stream of texts for (split, seed)."""
    texts.check_split(split)
    rng = random.Random(f"edgelalm-corpus:{CORPUS_VERSION}:{split}:{seed}")
    while True:
        yield sample_text(split, rng)


def iter_sentence_texts(path: Path, seed: int) -> Iterator[Text]:
    """The sentences of `path` (one per line), normalised as transcripts are, each once in a
    seeded order, then again in another: the endless stream of "prose" texts for `seed`."""
    lines = (texts.normalize_transcript(line) for line in path.read_text(encoding="utf-8").splitlines())
    sentences = [line for line in lines if line]
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    rng = random.Random(f"edgelalm-corpus-sentences:{CORPUS_VERSION}:{seed}")
    while True:
        for sentence in rng.sample(sentences, len(sentences)):
            yield Text("prose", sentence, sentence)


def iter_long_texts(split: Split, seed: int) -> Iterator[Text]:
    """The endless, deterministic stream of "long" texts for (split, seed): consecutive speech
    texts of `iter_texts` joined (each read as its own sentence) until a drawn word count."""
    rng = random.Random(f"edgelalm-corpus-long:{CORPUS_VERSION}:{split}:{seed}")
    parts = (text for text in iter_texts(split, seed) if text.kind != "silence")
    while True:
        target = rng.randint(*WORDS_PER_LONG_TEXT)
        joined: list[Text] = []
        while sum(len(text.transcript.split()) for text in joined) < target:
            joined.append(next(parts))
        spoken = " ".join(text.spoken.rstrip(".") + "." for text in joined)
        yield Text("long", spoken, " ".join(text.transcript for text in joined))
