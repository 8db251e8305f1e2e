"""Training data: sentences, espeak-ng speech, augmentation, the on-disk dataset (edgelalm.training)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edgelalm.errors import EdgelalmError
from edgelalm.training import speech, texts
from edgelalm.training.dataset import SpeechDataset, build_dataset
from edgelalm.training.speech import AugmentSettings, add_noise, augment, power, render
from edgelalm.training.texts import (
    EXAMPLE_SENTENCE,
    HELD_OUT_CITIES,
    HELD_OUT_NAMES,
    normalize_transcript,
    split_of,
    utterances,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _words(sentences: list[str]) -> set[str]:
    return {word for sentence in sentences for word in sentence.split()}


@pytest.fixture(scope="module")
def train_sentences() -> list[str]:
    return utterances("train", 20000, seed=0)


@pytest.fixture(scope="module")
def test_sentences() -> list[str]:
    return utterances("test", 3000, seed=0)


# --- texts ---------------------------------------------------------------------------------------


def test_utterances_are_deterministic_per_seed():
    first = utterances("train", 300, seed=7)
    assert first == utterances("train", 300, seed=7)
    assert first != utterances("train", 300, seed=8)
    assert utterances("train", 100, seed=7) == first[:100]  # a prefix: a larger count only adds
    assert utterances("test", 50, seed=7) == utterances("test", 50, seed=7)


def test_sentences_vary():
    rng = random.Random(1)
    raw = [texts.sample_sentence("train", rng) for _ in range(2000)]
    assert len(set(raw)) >= 0.9 * len(raw), "the grammar repeats itself"
    listed = utterances("train", 2000, seed=1)
    assert len(set(listed)) == len(listed)
    first_words = {sentence.split()[0] for sentence in listed}
    assert len(first_words) >= 40, first_words
    assert len(_words(listed)) >= 800


def test_train_and_test_are_disjoint(train_sentences, test_sentences):
    assert not set(train_sentences) & set(test_sentences)
    assert not set(train_sentences) & set(utterances("test", 1000, seed=5))  # whatever the seeds
    assert all(split_of(s) == "train" for s in train_sentences)
    assert all(split_of(s) == "test" for s in test_sentences)


def test_held_out_names_and_cities_only_in_test(train_sentences, test_sentences):
    held_out = set(HELD_OUT_NAMES) | set(HELD_OUT_CITIES)
    possessives = {f"{word}'s" for word in held_out}
    assert not _words(train_sentences) & (held_out | possessives)
    assert not set(texts.vocabulary("train")) & (held_out | possessives)
    test_words = _words(test_sentences) | {w.removesuffix("'s") for w in _words(test_sentences)}
    assert test_words & set(HELD_OUT_NAMES), "no held-out name in test"
    assert test_words & set(HELD_OUT_CITIES), "no held-out city in test"
    # and test holds plenty of sentences without them (the hashed share)
    assert sum(not set(s.split()) & held_out for s in test_sentences) > 0.3 * len(test_sentences)


@pytest.mark.parametrize("grammar_version", texts.GRAMMAR_VERSIONS)
def test_every_grammar_version_keeps_the_held_out_words_out_of_train(grammar_version):
    held_out = set(HELD_OUT_NAMES) | set(HELD_OUT_CITIES)
    train_words = set(texts.vocabulary("train", grammar_version))
    assert not train_words & (held_out | {f"{word}'s" for word in held_out})
    assert all(split_of(s) == "train" for s in utterances("train", 2000, seed=0, grammar_version=grammar_version))


def test_grammar_version_2_adds_names_and_cities_and_keeps_version_1():
    first, second = set(texts.vocabulary("train", 1)), set(texts.vocabulary("train", 2))
    assert first < second
    assert {"priscilla", "zelda", "reykjavik", "jakarta"} & second == {"zelda", "reykjavik", "jakarta"}
    assert not {"zelda", "reykjavik", "jakarta"} & first
    # the version is part of the stream's identity: the same seed draws other sentences
    assert utterances("train", 200, seed=0, grammar_version=1) != utterances("train", 200, seed=0, grammar_version=2)
    assert utterances("train", 200, seed=0) == utterances("train", 200, seed=0, grammar_version=texts.GRAMMAR_VERSION)
    with pytest.raises(ValueError):
        utterances("train", 1, seed=0, grammar_version=99)


def test_example_sentence_is_in_neither_split(train_sentences, test_sentences, monkeypatch):
    assert split_of(EXAMPLE_SENTENCE) is None
    assert EXAMPLE_SENTENCE not in train_sentences and EXAMPLE_SENTENCE not in test_sentences
    # the grammar makes sentences of that shape, so the exclusion is what keeps it out
    assert any(s.startswith("set a timer for") and " and remind me to call " in s for s in train_sentences)
    # and the stream drops it when the grammar draws it
    others = [
        s
        for s in ("what time is it", "turn off the tv", "snooze", "pause the timer", "next song")
        if split_of(s) == "train"
    ]
    drawn = iter([EXAMPLE_SENTENCE, others[0], EXAMPLE_SENTENCE, *others[1:]])
    monkeypatch.setattr(texts, "sample_sentence", lambda split, rng, grammar_version: next(drawn))
    assert texts.utterances("train", len(others), seed=0) == others


def test_example_clip_transcript_normalises_to_the_example_sentence():
    assert normalize_transcript("Set a timer for twenty minutes and remind me to call Anna.") == EXAMPLE_SENTENCE
    assert set(EXAMPLE_SENTENCE.split()) <= set(texts.vocabulary("train"))


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Wake me up at 7:30 a.m.!", "wake me up at seven thirty a m"),
        ("  WHAT'S   the Weather, in New-York?? ", "what's the weather in new york"),
        ("\u2018Call\u2019 Mom\u2019s phone; set it to 25%", "call mom's phone set it to twenty five"),
        ("I am home at 6pm", "i am home at six p m"),
        ("''quoted'' words", "quoted words"),
    ],
)
def test_normalize_transcript(raw, normal):
    assert normalize_transcript(raw) == normal
    assert normalize_transcript(normal) == normal


def test_sentences_are_normalised_and_in_the_vocabulary(train_sentences, test_sentences):
    everything = train_sentences[:5000] + test_sentences
    assert all(normalize_transcript(s) == s for s in everything)
    assert _words(train_sentences) <= set(texts.vocabulary("train"))
    assert _words(test_sentences) <= set(texts.vocabulary("test"))
    assert set("".join(everything)) <= set(texts.ALPHABET)
    assert texts.derivation_count("train") > 10**8


def test_number_words():
    assert texts.number_words(25) == "twenty five"
    assert texts.number_words(100) == "one hundred"
    assert texts.number_words(1305) == "one thousand three hundred and five"
    assert texts.ordinal_words(21) == "twenty first"


# --- speech --------------------------------------------------------------------------------------


@needs_espeak
def test_render_is_16k_mono_float32_speech():
    text = "set a timer for ten minutes"
    samples = render(text, "en-us", 175, 50)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert np.sqrt(power(samples)) > 0.01 and np.abs(samples).max() <= 1.0
    native = subprocess.run(
        ["espeak-ng", "--stdout", "-v", "en-us", "-s", "175", "-p", "50", text], capture_output=True, check=True
    ).stdout
    raw, rate = soundfile.read(io.BytesIO(native))
    assert rate != 16000  # so the length below checks the resampling
    assert abs(len(samples) - len(raw) * 16000 / rate) <= 2


@needs_espeak
def test_render_length_follows_text_and_speed():
    short = render("turn on the lights", "en-gb+f3", 160, 50)
    long = render("turn on the lights in the kitchen and set the thermostat to twenty one degrees", "en-gb+f3", 160, 50)
    assert len(long) > 1.5 * len(short)
    slow = render("what's the weather in london tomorrow", "en-us", 120, 50)
    fast = render("what's the weather in london tomorrow", "en-us", 240, 50)
    assert len(fast) < 0.75 * len(slow)


@needs_espeak
def test_render_is_deterministic_and_refuses_bad_input():
    first = render("call anna on speaker", "en-us+klatt2", 170, 40)
    assert np.array_equal(first, render("call anna on speaker", "en-us+klatt2", 170, 40))
    assert not np.array_equal(first, render("call anna on speaker", "en-us+klatt2", 170, 60))
    for voice in ("--help", "en-us; rm", ""):
        with pytest.raises(EdgelalmError):
            render("hello", voice, 170, 50)
    with pytest.raises(EdgelalmError):
        render("hello", "en-us", 10, 50)
    # a text that looks like an option is spoken, not obeyed
    assert len(render("--version", "en-us", 170, 50)) > 1000


@needs_espeak
def test_voice_splits_are_disjoint_and_hold_out_variants():
    train, test = set(speech.voices("train")), set(speech.voices("test"))
    assert train and test and not train & test
    assert len(test) >= 20 and len(train) >= 5 * len(test) // 2
    assert {"en-us", "en-gb"} <= train  # plain voices (the example clip's) train
    held = {v for v in train | test if v.partition("+")[2] in speech.HELD_OUT_VARIANTS}
    assert held and held <= test
    assert all(speech.voice_split(v) == "test" for v in test)
    assert not any(v.startswith("mb") or "fast" == v.partition("+")[2] for v in train | test)


# --- augmentation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    t = np.arange(32000) / 16000
    rng = np.random.default_rng(3)  # a speech-like clip without espeak: bursts of harmonics
    envelope = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float32)
    return (
        0.3 * envelope * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 540 * t))
        + 0.01 * rng.standard_normal(t.size)
    ).astype(np.float32)


def test_augment_adds_only_silence_to_the_length(clip):
    settings = AugmentSettings()
    most = 2 * int(settings.max_silence_s * 16000)
    lengths = set()
    for seed in range(10):
        out = augment(clip, np.random.default_rng(seed))
        assert out.dtype == np.float32 and np.isfinite(out).all() and np.abs(out).max() <= 1.0
        assert len(clip) <= len(out) <= len(clip) + most
        lengths.add(len(out))
    assert len(lengths) > 1
    no_silence = AugmentSettings(max_silence_s=0.0)
    assert len(augment(clip, np.random.default_rng(0), no_silence)) == len(clip)


@pytest.mark.parametrize("color", speech.NOISE_COLORS)
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_noise_is_added_at_the_requested_snr(clip, color, snr_db):
    noisy = add_noise(clip, snr_db, color, np.random.default_rng(1))
    measured = 10 * np.log10(power(clip) / power(noisy - clip))
    assert abs(measured - snr_db) < 1.0


def test_augment_noise_snr_end_to_end(clip):
    only_noise = AugmentSettings(
        gain_db=(0.0, 0.0), reverb_probability=0.0, max_silence_s=0.0, noise_probability=1.0, snr_db=(15.0, 15.0)
    )
    for seed in range(3):
        out = augment(clip, np.random.default_rng(seed), only_noise)
        assert abs(10 * np.log10(power(clip) / power(out - clip)) - 15.0) < 1.0


def test_noise_colors_differ_in_spectrum():
    rng = np.random.default_rng(0)

    def low_share(noise):  # share of power below 500 Hz
        spectrum = np.abs(np.fft.rfft(noise)) ** 2
        return spectrum[: int(500 * len(noise) / 16000)].sum() / spectrum.sum()

    white, pink, brown = (low_share(speech.colored_noise(16000, c, rng)) for c in ("white", "pink", "brown"))
    assert white < pink < brown


def test_augment_is_deterministic_per_seed(clip):
    settings = AugmentSettings(reverb_probability=1.0, noise_probability=1.0)
    first = augment(clip, np.random.default_rng(42), settings)
    assert np.array_equal(first, augment(clip, np.random.default_rng(42), settings))
    assert not np.array_equal(first, augment(clip, np.random.default_rng(43), settings))


def test_reverb_keeps_length_and_power(clip):
    wet = speech.add_reverb(clip, 0.5, 0.5, np.random.default_rng(0))
    assert len(wet) == len(clip)
    assert abs(power(wet) / power(clip) - 1) < 1e-3
    assert not np.allclose(wet, clip, atol=1e-3)


# --- dataset -------------------------------------------------------------------------------------


@needs_espeak
def test_build_and_read_back_a_dataset(tmp_path):
    out = build_dataset(tmp_path / "train", "train", count=20, seed=3, workers=2, progress=False, shard_utterances=8)
    dataset = SpeechDataset(out)
    assert len(dataset) == 20 and dataset.sampling_rate == 16000
    assert len(dataset.info["shards"]) == 3
    assert dataset.info["versions"]["espeak-ng"] == speech.espeak_version()
    assert dataset.info["grammar_version"] == texts.GRAMMAR_VERSION
    assert dataset.texts == [r["text"] for r in dataset.records]
    assert dataset.texts == utterances("train", 20, seed=3)  # none of these is over 10 s
    voices = set(speech.voices("train"))
    for i, record in enumerate(dataset.records):
        samples, text = dataset[i]
        assert text == record["text"]
        assert samples.dtype == np.float32 and len(samples) == record["length"]
        assert abs(record["seconds"] - len(samples) / 16000) < 1e-3
        assert np.abs(samples).max() > 0.05
        assert record["voice"] in voices
    assert np.array_equal(dataset[-1][0], dataset[19][0])
    with pytest.raises(IndexError):
        dataset[20]
    # a pickled dataset (DataLoader workers) carries no memory map and reads the same
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 100_000
    assert np.array_equal(copy[5][0], dataset[5][0])

    # the same seed builds the same bytes, whatever the number of workers
    again = build_dataset(tmp_path / "again", "train", count=20, seed=3, workers=1, progress=False, shard_utterances=8)
    for name in ["metadata.jsonl", "dataset.json"] + [s["file"] for s in dataset.info["shards"]]:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    with pytest.raises(EdgelalmError):
        build_dataset(out, "train", count=20, seed=3, progress=False)


@needs_espeak
def test_make_data_keeps_a_matching_build_and_refuses_a_stale_one(tmp_path):
    script = Path(__file__).resolve().parents[1] / "recipes" / "default_model" / "make_data.py"
    command = [sys.executable, str(script), str(tmp_path), "--train-count", "4", "--test-count", "2", "--workers", "1"]
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    built = (tmp_path / "train" / "shard-00000.npy").stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("kept") == 2
    assert (tmp_path / "train" / "shard-00000.npy").stat().st_mtime_ns == built
    # a split rendered from an older grammar is not silently reused
    info_path = tmp_path / "test" / "dataset.json"
    info = json.loads(info_path.read_text())
    info["grammar_version"] = texts.GRAMMAR_VERSION - 1
    info_path.write_text(json.dumps(info))
    stale = subprocess.run(command, capture_output=True, text=True)
    assert stale.returncode != 0
    assert stale.stderr.strip().splitlines() == [
        f"make_data: error: {tmp_path / 'test'} exists with other settings; pass --force to replace it"
    ]
    assert subprocess.run(command + ["--force"], capture_output=True, text=True).returncode == 0
    assert json.loads(info_path.read_text())["grammar_version"] == texts.GRAMMAR_VERSION


@needs_espeak
def test_long_clips_are_skipped_and_replaced(tmp_path):
    out = build_dataset(tmp_path / "short", "test", count=6, seed=0, workers=1, progress=False, max_seconds=2.0)
    dataset = SpeechDataset(out)
    assert len(dataset) == 6
    assert dataset.seconds.max() <= 2.0
    assert dataset.info["skipped_longer_than_max"] > 0
    assert all(split_of(text) == "test" for text in dataset.texts)
    assert not list(tmp_path.glob(".*partial"))


def test_a_bad_split_is_the_same_error_everywhere(tmp_path):
    import random

    from edgelalm.errors import EdgelalmError
    from edgelalm.training import dataset, speech

    for call in (
        lambda: texts.sample_sentence("valid", random.Random(0)),  # type: ignore[arg-type]
        lambda: speech.voices("valid"),  # type: ignore[arg-type]
        lambda: dataset.build_dataset(tmp_path / "d", "valid", 1, seed=0, progress=False),  # type: ignore[arg-type]
    ):
        with pytest.raises(EdgelalmError, match="split must be 'train' or 'test', not 'valid'"):
            call()
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("version", texts.GRAMMAR_VERSIONS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_the_grammar_file_makes_the_sentences_the_python_grammar_made(split, version):
    """grammar.json must make exactly what the grammar made when it was Python code: the shipped
    model's data (and every recipe's seed) depend on it."""
    recorded = json.loads((Path(__file__).parent / "data" / "grammar_digests.json").read_text())["digests"]
    dump = {
        "utterances": texts.utterances(split, 500, seed=3, grammar_version=version),
        "vocabulary": texts.vocabulary(split, grammar_version=version),
        "derivations": texts.derivation_count(split, grammar_version=version),
    }
    assert hashlib.sha256(json.dumps(dump).encode()).hexdigest() == recorded[f"{split}-v{version}"]
